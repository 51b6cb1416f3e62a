"""Training metrics with TRL's names and meanings (docs/metrics.md), plus alignlab additions.

Values are per-pair means over the whole effective batch, gathered from every rank, so they do not depend
on the micro-batch split. `rewards/accuracies` is strict (>), so it reads 0.0 at step 0 where every
margin is exactly 0; `rewards/ties` reports that case. `kl/ref_policy` = mean over the batch responses of
log pi_ref - log pi_theta (summed): an unbiased estimate of KL(pi_ref || pi_theta) per response when the
responses are samples from pi_ref (on-policy pairs, as in the demo); otherwise only a drift indicator.
Held-out evaluation rows (alignlab.training.evaluate) carry the same metrics over the eval set, named ``eval_*``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignlab.training.step import PairStats

EVAL_PREFIX = "eval_"


def pair_values(stats: PairStats) -> dict[str, torch.Tensor]:
    """The per-pair value behind every averaged metric, each [N], by TRL's name (docs/metrics.md): a metric is
    the mean of its values over the pairs (training: the step's batch; evaluation: the whole eval set).
    ``kl/ref_policy`` per pair is the mean of its two responses' log pi_ref - log pi_theta."""
    rc, rr = stats.chosen_reward, stats.rejected_reward
    v = {
        "loss": stats.loss,
        "rewards/chosen": rc,
        "rewards/rejected": rr,
        "rewards/margins": rc - rr,
        "rewards/accuracies": (rc > rr).float(),
        "rewards/ties": (rc == rr).float(),
        "logps/chosen": stats.chosen_logps,
        "logps/rejected": stats.rejected_logps,
        "lengths/chosen": stats.chosen_len,
        "lengths/rejected": stats.rejected_len,
    }
    if stats.ref_gap_chosen is not None:
        v["kl/ref_policy"] = (stats.ref_gap_chosen + stats.ref_gap_rejected) / 2
    for k in sorted(stats.extras):  # T-REG (docs/metrics.md): per-pair values, averaged like the rewards
        v[k] = stats.extras[k]
    return v


def step_metrics(
    stats: PairStats,
    grad_norm: float,
    step: int,
    lr: float,
    step_s: float | None = None,
    forward: dict[str, int] | None = None,
) -> dict:
    """One metrics.jsonl row from the gathered per-pair stats of a step (TRL's names, docs/metrics.md).
    ``forward``: StepOut.forward (positions, padding, pairs of the step's forwards, over every rank)."""
    m = {"step": step} | {k: v.mean().item() for k, v in pair_values(stats).items()}
    m |= {"grad_norm": grad_norm, "learning_rate": lr}
    if step_s is not None:
        m["time/step_s"] = step_s
    if forward and forward.get("positions"):
        m["batch/padding_share"] = forward["padding"] / forward["positions"]
        m["batch/positions_per_pair"] = forward["positions"] / max(1, forward["pairs"])
    return m


def is_eval_row(row: dict) -> bool:
    """True for a held-out evaluation row of metrics.jsonl ("step" and ``eval_*`` metrics only)."""
    return any(k.startswith(EVAL_PREFIX) for k in row)


class MetricsLogger:
    """metrics.jsonl (main process, always) + the accelerate trackers of ``report_to`` (TensorBoard, W&B, MLflow);
    training rows and evaluation rows (``eval_*``) go the same way."""

    def __init__(self, path: Path, accelerator, append: bool = False):
        self.path = Path(path)
        self.acc = accelerator
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                self.path.write_text("")

    def log(self, record: dict) -> None:
        if not self.acc.is_main_process:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.acc.trackers:
            self.acc.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def read_metrics(path: Path, rows: str = "train") -> list[dict]:
    """The rows of metrics.jsonl: ``rows="train"`` the training steps (what every reader of training curves
    wants), ``"eval"`` the held-out evaluations (``eval_*``), ``"all"`` both, in file order."""
    if rows not in ("train", "eval", "all"):
        raise ValueError(f"rows must be train, eval or all, got {rows!r}")
    out = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return out if rows == "all" else [r for r in out if is_eval_row(r) == (rows == "eval")]
