"""One table row per method, by the evaluation protocol (docs/evaluation.md): a trained method's per-seed results
against the base model on the same prompts, with the gain's standard error over seeds and prompts, its split
into the gold's terms, and KL(π‖π_ref) at T = 1 on the policy's own samples.

Inputs are ``MethodResult``s with one sample per prompt (prompt order shared by all of them), ``terms`` filled
with the gold's signed per-term contributions (``GoldScore.terms()``: they add up to the total), and ``kl`` the
per-sample log π − log π_ref at the evaluation's sampling temperature; ``kl_t1`` the same at T = 1 when the
sampling temperature is not 1 (otherwise ``kl`` is the T = 1 figure).
"""

from __future__ import annotations

import numpy as np

from alignlab.eval.harness import MethodResult, distinct_n
from alignlab.eval.stats import kl_summary, paired_gain, plural, term_breakdown, win_rate


def _stack(results: list[MethodResult], get) -> np.ndarray:
    return np.array([get(r) for r in results], dtype=np.float64)  # [S, P]


def base_row(base: MethodResult) -> dict:
    level = paired_gain(np.array(base.gold), np.zeros(len(base.gold)))
    return {
        "method": base.name,
        "n_seeds": 1,
        "n_prompts": len(base.gold),
        "gold": level.mean,
        "gold_se": level.se,
        "diff": 0.0,
        "diff_se": 0.0,
        "win_rate": 0.5,
        "kl": 0.0,
        "kl_se": 0.0,
        "kl_per_token": 0.0,
        "length": float(np.mean(base.lengths)),
        "finished": float(np.mean(base.finished)),
        "cut": 1.0 - float(np.mean(base.finished)),
        "distinct2": distinct_n(base.texts, 2),
    }


def method_row(
    name: str,
    results: list[MethodResult],
    base: MethodResult,
    sampling_temperature: float,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """The row of a trained method over S seeds (``results``, one per seed) against ``base``."""
    gold = _stack(results, lambda r: r.gold)
    gain = paired_gain(gold, np.array(base.gold), n_boot=n_boot, seed=seed)
    win = win_rate(gold, np.array(base.gold), n_boot=n_boot, seed=seed)
    level = paired_gain(gold, np.zeros(gold.shape[1]), n_boot=n_boot, seed=seed)
    row = {
        "method": f"{name} ({plural(len(results), 'seed')})",
        "n_seeds": len(results),
        "n_prompts": gold.shape[1],
        "gold": level.mean,
        "gold_se": level.se,
        "diff": gain.mean,
        "diff_se": gain.se,
        "diff_ci": list(gain.ci),
        "exceeds_2se": gain.exceeds_2se,
        "seed_variance_included": gain.seed_variance_included,
        "win_rate": win.mean,
        "win_se": win.se,
        "length": float(np.mean([r.lengths for r in results])),
        "finished": float(np.mean([r.finished for r in results])),
        "distinct2": float(np.mean([distinct_n(r.texts, 2) for r in results])),
    }
    row["cut"] = 1.0 - row["finished"]
    row |= _kl_columns(results, sampling_temperature)
    if base.extra.get("terms") and all(r.extra.get("terms") for r in results):
        keys = list(base.extra["terms"])
        b = term_breakdown(
            {k: _stack(results, lambda r, k=k: r.extra["terms"][k]) for k in keys},
            {k: np.array(base.extra["terms"][k]) for k in keys},
            {k: 1.0 for k in keys},
        )
        row["breakdown"] = b.contribution  # Δ of each signed term contribution; they add up to Δgold
        row["breakdown_dominant"] = b.dominant
    return row


def _kl_columns(results: list[MethodResult], temperature: float) -> dict:
    """KL at T = 1 (headline) and, when sampling used another temperature, the tempered figure beside it."""
    lengths = np.array([r.lengths for r in results], dtype=np.float64).T  # [P, S]
    cut = 1 - np.array([r.finished for r in results], dtype=np.float64).T
    out = {}
    t1 = [r.extra.get("kl_t1") for r in results] if temperature != 1.0 else [r.kl for r in results]
    if all(v is not None for v in t1):
        k = kl_summary(np.array(t1).T, np.zeros_like(lengths), lengths, cut, temperature=1.0)
        out |= {"kl": k.per_seq, "kl_se": k.per_seq_se, "kl_per_token": k.per_token, "kl_sane": k.sane}
    if temperature != 1.0 and all(r.kl is not None for r in results):
        k = kl_summary(
            np.array([r.kl for r in results]).T, np.zeros_like(lengths), lengths, cut, temperature=temperature
        )
        out |= {"kl_sampling_t": k.per_seq, "kl_sampling_t_se": k.per_seq_se}
    return out


def breakdown_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Per method, Δgold and each term's contribution to it (they add up to Δgold), as (head, body) text cells;
    ([], []) when no row has a breakdown."""
    rows = [r for r in rows if r.get("breakdown")]
    if not rows:
        return [], []
    terms = list(rows[0]["breakdown"])
    head = ["method", "Δgold", *terms, "largest"]
    body = [
        [r["method"], f"{r['diff']:+.4f}", *(f"{r['breakdown'][t]:+.4f}" for t in terms), r["breakdown_dominant"]]
        for r in rows
    ]
    return head, body


def breakdown_table(rows: list[dict]) -> str:
    """Markdown: per method, Δgold and each term's contribution to it (they add up to Δgold)."""
    head, body = breakdown_cells(rows)
    if not head:
        return ""
    line = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "---|" * len(head), *(line(b) for b in body)])
