"""`alignlab compare`'s output: the table on stdout, compare.html (self-contained: the table and every run's training
curves overlaid, as an embedded PNG), compare_curves.png and compare.json (the data behind both)."""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.eval import htmlpage as hp
from alignlab.eval.report import text_table
from alignlab.eval.runs import TRAIN_KEYS, Comparison, Run, shared_line, table_rows
from alignlab.eval.stats import plural

EVAL_STYLE = dict(ls="--", marker="s", ms=4)  # held-out evaluation: dashed, square markers, the run's colour


def curve(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that log it."""
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def run_curves(run: Run) -> dict[str, dict[str, list[float]]]:
    """Every plotted curve of one run: TRAIN_KEYS from its training rows, ``eval_<key>`` from its eval rows."""
    out = {}
    for key, rows in [(k, run.train) for k in TRAIN_KEYS] + [("eval_" + k, run.evals) for k in TRAIN_KEYS]:
        steps, values = curve(rows, key)
        if steps:
            out[key] = {"step": steps, "value": values}
    return out


def plot_curves(c: Comparison) -> bytes | None:
    """One panel per TRAIN_KEY against the step, every run in its own colour: training solid, held-out evaluation
    (``eval_*``) dashed. PNG bytes; None when no run has a training or eval row."""
    curves = [run_curves(r) for r in c.runs]
    if not any(curves):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(TRAIN_KEYS), figsize=(5 * len(TRAIN_KEYS), 3.9))
    for ax, key in zip(axes, TRAIN_KEYS):
        for i, cv in enumerate(curves):
            if key in cv:
                few = len(cv[key]["step"]) <= 30
                ax.plot(cv[key]["step"], cv[key]["value"], color=f"C{i}", marker="o" if few else None, ms=3)
            if "eval_" + key in cv:
                ax.plot(cv["eval_" + key]["step"], cv["eval_" + key]["value"], color=f"C{i}", **EVAL_STYLE)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=f"C{i}", lw=2, label=label) for i, label in enumerate(c.labels)]
    if any(k.startswith("eval_") for cv in curves for k in cv):
        handles += [
            Line2D([], [], color="#555", label="training"),
            Line2D([], [], color="#555", label="held-out eval (eval_*)", **EVAL_STYLE),
        ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, 0.07 * rows, 1, 1))
    png = hp.png_bytes(fig)
    plt.close(fig)
    return png


def format_comparison(c: Comparison) -> str:
    """The table as text (runs as columns; differing config keys, final metrics, eval metrics, demo gains) and the
    shared config keys listed once below it."""
    head, body, _ = table_rows(c)
    lines = [text_table(head, body)] if body else ["(the runs have the same config and no metrics)"]
    return "\n".join(lines + ["", f"shared by all {plural(len(c.runs), 'run')}: {shared_line(c) or '(none)'}"])


def _run_line(label: str, run: Run) -> str:
    files = [f"{plural(len(run.train), 'training row')}", f"{plural(len(run.evals), 'eval row')}"]
    files += ["results.json"] if run.results else []
    files += ["report.md"] if run.report else []
    return f"{label}: {run.path} ({', '.join(files)})"


def render_html(c: Comparison, png: bytes | None) -> str:
    """compare.html: the runs, the table, the shared config, the overlaid curves and each run's report.md."""
    head, body, starts = table_rows(c)
    title = f"alignlab compare: {plural(len(c.runs), 'run')}"
    parts = [hp.heading(title, 1), hp.bullets([_run_line(lb, r) for lb, r in zip(c.labels, c.runs)])]
    if body:
        classes = ["first" if i in starts else "" for i in range(len(body))]
        parts.append(hp.table(head, body, label_cols=2, row_classes=classes))
    parts += [hp.heading("Shared config (equal in every run)", 3), hp.paragraph(shared_line(c) or "(none)", "muted")]
    parts.append(hp.heading("Training curves"))
    parts.append(hp.image(png, "training curves of every run") if png else hp.paragraph("no metrics rows to plot"))
    reports = [(lb, r.report) for lb, r in zip(c.labels, c.runs) if r.report]
    if reports:
        parts.append(hp.heading("Reports (report.md)"))
        parts += [hp.details(f"{lb}: report.md", hp.preformatted(text)) for lb, text in reports]
    return hp.page(title, parts)


def comparison_json(c: Comparison) -> dict:
    """The data behind the table and the curves: per run its label, path, config, final metrics, demo gains and
    curves; the differing and the shared config keys."""
    runs = [
        {
            "label": label,
            "path": str(run.path),
            "config": run.config,
            "final": final,
            "gains": {m: {"diff": d, "diff_se": se} for m, (d, se) in gains.items()},
            "curves": run_curves(run),
        }
        for label, run, final, gains in zip(c.labels, c.runs, c.finals, c.gains)
    ]
    return {"runs": runs, "differing": c.differing, "shared": c.shared}


def write_compare(c: Comparison, out_dir: str | Path) -> dict[str, Path]:
    """compare.html, compare.json and (when there is a curve) compare_curves.png in ``out_dir``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_curves(c)
    paths = {"html": out / "compare.html", "json": out / "compare.json"}
    paths["html"].write_text(render_html(c, png), encoding="utf-8")
    paths["json"].write_text(json.dumps(comparison_json(c), indent=1, default=str) + "\n")
    if png:
        paths["png"] = out / "compare_curves.png"
        paths["png"].write_bytes(png)
    return paths
