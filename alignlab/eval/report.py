"""Readable results: a fixed-width table for stdout, report.md, results.json and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.eval.compare import breakdown_table


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


def format_table(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    head = [c[1] for c in columns]
    body = [[_cell(r, k) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep] + [line(b) for b in body])


def plot_results(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["method"] for r in rows]
    a1.bar(names, [r["gold"] for r in rows], yerr=[r["gold_se"] or 0 for r in rows], capsize=4, color="#4C72B0")
    a1.set_ylabel("mean gold reward (± s.e.)")
    a1.set_title("gold reward on held-out prompts")
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


def write_report(
    run_dir: Path,
    rows: list[dict],
    title: str,
    notes: list[str],
    samples: list[dict] | None = None,
    decoding_rows: list[dict] | None = None,
    decoding_notes: list[str] | None = None,
    breakdown: str = "",
) -> Path:
    """report.md + report.png + results.json; decoding-time rows (if any) get their own table and
    results_decoding.json, since their baseline is greedy decoding, not the sampled base model."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(rows, indent=2))
    png = plot_results(rows, run_dir / "report.png", title)
    md = [f"# {title}", "", format_table(rows), "", f"![results]({png.name})", ""]
    if breakdown:
        md += [
            "## Gain by gold term",
            "",
            "Signed contributions of each term to Δgold (they add up to it).",
            "",
            breakdown,
            "",
        ]
    md += [f"- {n}" for n in notes]
    if decoding_rows:
        (run_dir / "results_decoding.json").write_text(json.dumps(decoding_rows, indent=2, default=str))
        md += ["", "## Decoding-time alignment (no training)", "", format_table(decoding_rows, DECODING_COLUMNS), ""]
        md += [f"- {n}" for n in decoding_notes or []]
        split = breakdown_table(decoding_rows[1:])
        if split:
            md += ["", "Gain vs greedy by gold term (signed contributions; they add up to Δgold):", "", split, ""]
    if samples:
        md += ["", "## Sample outputs", ""]
        for s in samples:
            md += [f"**Prompt:** {s['prompt']}", ""]
            for k, v in s.items():
                if k != "prompt":
                    md += [f"- *{k}*: {v}"]
            md.append("")
    path = run_dir / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path
