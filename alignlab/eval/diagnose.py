"""What the reward curves of a training run mean (docs/conventions.md R8): a verdict and a first/last table."""

from __future__ import annotations

from pathlib import Path

from alignlab.training.metrics import read_metrics


def _trend(values: list[float]) -> float:
    k = max(1, len(values) // 4)
    return sum(values[-k:]) / k - sum(values[:k]) / k


def classify(metrics: list[dict]) -> str:
    if len(metrics) < 2:
        return "too short to judge"
    m = _trend([r["rewards/margins"] for r in metrics])
    c = _trend([r["rewards/chosen"] for r in metrics])
    r = _trend([r["rewards/rejected"] for r in metrics])
    if m > 0 and c < 0 and r < 0:
        return "expected: margin increasing (both rewards fall, rejected faster)"
    if m > 0:
        return "margin increasing"
    return "warning: margin not increasing"


def diagnose(run_dir: str) -> str:
    metrics = read_metrics(Path(run_dir) / "metrics.jsonl")
    if not metrics:
        return f"{run_dir}: metrics.jsonl is empty"
    first, last = metrics[0], metrics[-1]
    keys = [
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "rewards/ties",
        "logps/chosen",
        "logps/rejected",
        "kl/ref_policy",
    ]
    lines = [f"run: {run_dir} ({len(metrics)} logged steps)", f"{'metric':22s} {'first':>10s} {'last':>10s}"]
    for k in keys:
        if k in first:
            lines.append(f"{k:22s} {first[k]:10.4f} {last[k]:10.4f}")
    lines += [
        "",
        f"verdict: {classify(metrics)}",
        "",
        "notes: DPO-style losses optimise only the margin, so both implicit rewards usually fall; when the "
        "reference was trained on the chosen responses, E[chosen log-ratio] ~ -KL(ref||policy) <= 0 "
        "(arXiv 2406.02900 §3.5). rewards/accuracies is strict (>), so it reads 0.0 at step 0 where every "
        "margin is exactly 0 (see rewards/ties). logps/* are sequence sums, not means.",
    ]
    return "\n".join(lines)
