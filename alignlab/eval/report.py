"""Readable results: a fixed-width table for stdout, report.md, results.json, PNG plots, and report.html (the same
tables, notes and plots as one self-contained page: alignlab.eval.htmlpage)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.eval import htmlpage as hp
from alignlab.eval.compare import breakdown_cells, breakdown_table
from alignlab.eval.stats import plural


def _fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


# trained methods against the base model; ± se of Δgold and win combine seed and prompt variance (bootstrap)
COLUMNS = [
    ("method", "method"),
    ("n_prompts", "prompts"),
    ("gold", "gold"),
    ("gold_se", "± se"),
    ("diff", "Δgold"),
    ("diff_se", "± se"),
    ("win_rate", "win vs base"),
    ("win_se", "± se"),
    ("kl", "KL T=1 (nats)"),
    ("kl_se", "± se"),
    ("kl_per_token", "KL/tok"),
    ("length", "len (tok)"),
    ("finished", "ended"),
    ("cut", "cut by budget"),
    ("distinct2", "distinct-2"),
]


def _cell(row: dict, key: str) -> str:
    """Seed-aggregated rows carry `<key>_sd` (spread over seeds): shown as `mean ±sd`."""
    sd = row.get(f"{key}_sd")
    if sd and row.get(key) is not None and key not in ("gold_se", "diff_se"):
        return f"{_fmt(row[key])} ±{sd:.3f}"
    return _fmt(row.get(key))


# decoding-time methods (no training): compared with greedy decoding of the reference on the same prompts
DECODING_COLUMNS = [
    ("method", "method"),
    ("gold", "gold"),
    ("gold_se", "± se"),
    ("win_rate", "win vs greedy"),
    ("diff", "Δgold"),
    ("diff_se", "± se"),
    ("kl", "KL bound"),
    ("length", "len (tok)"),
    ("diversity", "diversity"),
    ("coherence", "coherence"),
    ("ms_per_token", "ms/tok"),
    ("lm_tokens_per_token", "LM pos/tok"),
    ("reward_calls_per_token", "RM calls/tok"),
    ("n_prompts", "prompts"),
    ("guide", "guided by"),
]


def text_table(head: list[str], body: list[list[str]]) -> str:
    """A fixed-width (Markdown-compatible) table of text cells."""
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def table_cells(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    """(head, body): the columns' titles and each row's cells as text."""
    return [c[1] for c in columns], [[_cell(r, k) for k, _ in columns] for r in rows]


def format_table(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    return text_table(*table_cells(rows, columns))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_results(rows: list[dict], path: Path, title: str) -> Path:
    """report.png: mean gold reward per method (± s.e.), and reward against KL(π‖π_ref)."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["method"] for r in rows]
    a1.bar(names, [r["gold"] for r in rows], yerr=[r["gold_se"] or 0 for r in rows], capsize=4, color="#4C72B0")
    a1.set_ylabel("mean gold reward (± s.e.)")
    a1.set_title(f"gold reward on {plural(rows[0]['n_prompts'], 'held-out prompt')}" if rows else "gold reward")
    a1.tick_params(axis="x", rotation=20)
    for r in rows:
        if r.get("kl") is not None:
            a2.errorbar(r["kl"], r["gold"], xerr=r["kl_se"] or 0, yerr=r["gold_se"] or 0, fmt="o", capsize=3)
            a2.annotate(r["method"], (r["kl"], r["gold"]), textcoords="offset points", xytext=(5, 5))
    a2.set_xlabel("KL(π ‖ π_ref) estimate (nats / response)")
    a2.set_ylabel("mean gold reward")
    a2.set_title("reward vs KL")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_decoding(rows: list[dict], path: Path) -> Path:
    """report_decoding.png: each decoding-time method's Δgold against greedy decoding (± 1 s.e.), one bar each;
    ``rows`` without the greedy baseline (its Δ is 0 by definition: the line at 0)."""
    plt = _pyplot()
    mixed = len({r.get("n_prompts") for r in rows}) > 1  # the expensive methods ran on a subset: say so per bar
    names = [f"{r['method']} ({plural(r['n_prompts'], 'prompt')})" if mixed else r["method"] for r in rows]
    diffs = [r["diff"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    colors = ["#4C72B0" if d >= 0 else "#C44E52" for d in diffs]
    ax.barh(names, diffs, xerr=[r.get("diff_se") or 0 for r in rows], capsize=4, color=colors)
    ax.axvline(0, color="#333", lw=1)
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlabel("Δgold vs greedy decoding of π_ref (± 1 s.e. over prompts)")
    n = "" if mixed or not rows else f" on {plural(rows[0]['n_prompts'], 'prompt')}"
    ax.set_title(f"decoding-time alignment: gain over greedy{n}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_proxy_gold(curves: dict[str, list[dict]], path: Path) -> Path:
    """report_rl.png: per RL step, the proxy reward the policy was trained on, the gold reward of the same rollouts
    and the KL to the initial policy, one line per RL run (``curves``: run -> rows of step, proxy, gold, kl)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    panels = [("proxy", "proxy reward (RM, normalised)"), ("gold", "gold reward"), ("kl", "KL to initial (nats)")]
    for ax, (key, label) in zip(axes, panels):
        for name, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=name)
        ax.set_xlabel("RL step")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(label)
        ax.set_title(f"{label} per step")
    axes[0].legend(fontsize=8)
    fig.suptitle("RL against the proxy reward model: proxy vs gold on the rollouts (train prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Section:
    """An extra section of the report: notes, an optional table (head, body of text cells) and an optional plot."""

    heading: str
    notes: list[str]
    table: tuple[list[str], list[list[str]]] | None = None
    png: Path | None = None
    alt: str = ""


@dataclass(frozen=True)
class Report:
    """What a report shows: the method rows against the base model, their notes, the gain-by-term table (Markdown;
    empty: none), sample outputs, and the decoding-time rows against greedy with their own notes."""

    title: str
    rows: list[dict]
    notes: list[str]
    samples: list[dict] = field(default_factory=list)
    decoding_rows: list[dict] = field(default_factory=list)
    decoding_notes: list[str] = field(default_factory=list)
    breakdown: str = ""
    sections: list[Section] = field(default_factory=list)


BREAKDOWN_NOTE = "Signed contributions of each term to Δgold (they add up to it)."
DECODING_HEADING = "Decoding-time alignment (no training)"
DECODING_SPLIT_NOTE = "Gain vs greedy by gold term (signed contributions; they add up to Δgold):"


def report_markdown(rep: Report, png_name: str) -> str:
    """report.md: the tables, notes and samples, with the plot linked by file name."""
    md = [f"# {rep.title}", "", format_table(rep.rows), "", f"![results]({png_name})", ""]
    if rep.breakdown:
        md += ["## Gain by gold term", "", BREAKDOWN_NOTE, "", rep.breakdown, ""]
    md += [f"- {n}" for n in rep.notes]
    for sec in rep.sections:
        md += ["", f"## {sec.heading}", ""]
        md += [text_table(*sec.table), ""] if sec.table else []
        md += [f"![{sec.alt}]({sec.png.name})", ""] if sec.png else []
        md += [f"- {n}" for n in sec.notes]
    if rep.decoding_rows:
        md += ["", f"## {DECODING_HEADING}", "", format_table(rep.decoding_rows, DECODING_COLUMNS), ""]
        md += [f"- {n}" for n in rep.decoding_notes]
        split = breakdown_table(rep.decoding_rows[1:])
        if split:
            md += ["", DECODING_SPLIT_NOTE, "", split, ""]
    if rep.samples:
        md += ["", "## Sample outputs", ""]
        for s in rep.samples:
            md += [f"**Prompt:** {s['prompt']}", ""]
            md += [f"- *{k}*: {v}" for k, v in s.items() if k != "prompt"]
            md.append("")
    return "\n".join(md) + "\n"


def report_html(rep: Report, png: Path, decoding_png: Path | None = None) -> str:
    """report.html: report.md's tables, notes and samples as one self-contained page, the plots embedded."""
    body = [hp.heading(rep.title, 1), hp.table(*table_cells(rep.rows)), hp.image(png, "gold reward and KL per method")]
    head, cells = breakdown_cells(rep.rows) if rep.breakdown else ([], [])
    if head:
        body += [hp.heading("Gain by gold term"), hp.paragraph(BREAKDOWN_NOTE, "muted"), hp.table(head, cells)]
    body += [hp.heading("Notes"), hp.bullets(rep.notes)] if rep.notes else []
    for sec in rep.sections:
        body += [hp.heading(sec.heading)] + ([hp.table(*sec.table)] if sec.table else [])
        body += [hp.image(sec.png, sec.alt)] if sec.png else []
        body.append(hp.bullets(sec.notes))
    if rep.decoding_rows:
        body += [hp.heading(DECODING_HEADING), hp.table(*table_cells(rep.decoding_rows, DECODING_COLUMNS))]
        body += [hp.image(decoding_png, "gain over greedy per decoding method")] if decoding_png else []
        body.append(hp.bullets(rep.decoding_notes))
        head, cells = breakdown_cells(rep.decoding_rows[1:])
        if head:
            body += [hp.heading("Gain vs greedy by gold term", 3), hp.paragraph(BREAKDOWN_NOTE, "muted")]
            body.append(hp.table(head, cells))
    if rep.samples:
        body.append(hp.heading("Sample outputs"))
        for s in rep.samples:
            body += [
                hp.heading(f"Prompt: {s['prompt']}", 3),
                hp.bullets([f"{k}: {v}" for k, v in s.items() if k != "prompt"]),
            ]
    return hp.page(rep.title, body)


def write_report(
    run_dir: Path,
    rows: list[dict],
    title: str,
    notes: list[str],
    samples: list[dict] | None = None,
    decoding_rows: list[dict] | None = None,
    decoding_notes: list[str] | None = None,
    breakdown: str = "",
    sections: list[Section] | None = None,
) -> Path:
    """report.md + report.html + report.png + results.json; decoding-time rows (if any) get their own table, a bar
    chart (report_decoding.png) and results_decoding.json, since their baseline is greedy decoding, not the sampled
    base model. ``sections``: extra sections (e.g. the RLHF one) after the notes. Returns report.md's path."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rep = Report(
        title, rows, notes, samples or [], decoding_rows or [], decoding_notes or [], breakdown, sections or []
    )
    (run_dir / "results.json").write_text(json.dumps(rows, indent=2))
    png = plot_results(rows, run_dir / "report.png", title)
    decoding_png = None
    if rep.decoding_rows:
        (run_dir / "results_decoding.json").write_text(json.dumps(rep.decoding_rows, indent=2, default=str))
        if rep.decoding_rows[1:]:
            decoding_png = plot_decoding(rep.decoding_rows[1:], run_dir / "report_decoding.png")
    (run_dir / "report.html").write_text(report_html(rep, png, decoding_png), encoding="utf-8")
    path = run_dir / "report.md"
    path.write_text(report_markdown(rep, png.name))
    return path
