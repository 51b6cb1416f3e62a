"""Does a set of T-REG token rewards carry signal? Diagnostics every T-REG run reports (docs/treg.md).

A regulariser whose targets are ~0 everywhere, or that prefers the chosen response no more often than a coin,
changes nothing but the noise of the gradient. These numbers say which case a run is in:

- |r̂| quantiles over all scored tokens, and the share of tokens with |r̂| < 0.01;
- pref_chosen: the share of pairs where Σ_t r̂ over the chosen response exceeds Σ_t r̂ over the rejected one (ties
  count ½); 0.5 is no signal;
- pref_chosen_mean: the same with per-token means (removes the length effect of summing);
- optionally, Pearson correlations of the per-pair difference Σr̂(chosen) − Σr̂(rejected) with the per-pair
  differences of named external scores (e.g. each gold term), saying which part of the gold the rewards follow.
"""

from __future__ import annotations

import math

import numpy as np

Rewards = list[tuple[list[float], list[float]]]  # per pair: (chosen r̂ per token, rejected r̂ per token)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _pref(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0)))) if len(a) else float("nan")


def token_reward_diagnostics(rewards: Rewards, pair_terms: dict[str, list[tuple[float, float]]] | None = None) -> dict:
    """Diagnostics of ``rewards`` (see module docstring). ``pair_terms``: name -> per pair (chosen, rejected)
    external scores, correlated with the Σr̂ difference."""
    flat = np.abs(np.array([v for c, r in rewards for v in c + r], dtype=np.float64))
    sums = np.array([[sum(c), sum(r)] for c, r in rewards], dtype=np.float64).reshape(-1, 2)
    means = np.array([[sum(c) / max(len(c), 1), sum(r) / max(len(r), 1)] for c, r in rewards]).reshape(-1, 2)
    q = np.quantile(flat, [0.5, 0.9, 0.99]) if flat.size else [math.nan] * 3
    out = {
        "pairs": len(rewards),
        "tokens": int(flat.size),
        "abs_rhat_median": float(q[0]),
        "abs_rhat_p90": float(q[1]),
        "abs_rhat_p99": float(q[2]),
        "share_abs_below_0.01": float((flat < 0.01).mean()) if flat.size else math.nan,
        "pref_chosen": _pref(sums[:, 0], sums[:, 1]),
        "pref_chosen_mean": _pref(means[:, 0], means[:, 1]),
    }
    diff = sums[:, 0] - sums[:, 1]
    for name, vals in (pair_terms or {}).items():
        v = np.array(vals, dtype=np.float64).reshape(-1, 2)
        out[f"corr_with/{name}"] = _pearson(diff, v[:, 0] - v[:, 1])
    return out


def format_diagnostics(d: dict) -> str:
    corr = ", ".join(f"{k.split('/', 1)[1]} {v:+.2f}" for k, v in d.items() if k.startswith("corr_with/"))
    return (
        f"T-REG token rewards over {d['pairs']} pairs / {d['tokens']} tokens: |r̂| median {d['abs_rhat_median']:.4f}, "
        f"p90 {d['abs_rhat_p90']:.4f}, p99 {d['abs_rhat_p99']:.4f}; {100 * d['share_abs_below_0.01']:.0f}% of tokens "
        f"below 0.01; Σr̂ prefers chosen in {100 * d['pref_chosen']:.1f}% of pairs (per-token mean: "
        f"{100 * d['pref_chosen_mean']:.1f}%)" + (f"; corr(Δ Σr̂, Δ term): {corr}" if corr else "")
    )
