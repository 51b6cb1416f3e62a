"""Training metrics with TRL's names and meanings (docs/metrics.md), plus alignlab additions.

Values are per-pair means over the whole effective batch, gathered from every rank, so they do not depend
on the micro-batch split. `rewards/accuracies` is strict (>), so it reads 0.0 at step 0 where every
margin is exactly 0; `rewards/ties` reports that case. `kl/ref_policy` = mean over the batch responses of
log pi_ref - log pi_theta (summed): an unbiased estimate of KL(pi_ref || pi_theta) per response when the
responses are samples from pi_ref (on-policy pairs, as in the demo); otherwise only a drift indicator.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from alignlab.training.step import PairStats


def step_metrics(stats: PairStats, grad_norm: float, step: int, lr: float, step_s: float | None = None) -> dict:
    """One metrics.jsonl row from the gathered per-pair stats of a step (TRL's names, docs/metrics.md)."""
    rc, rr = stats.chosen_reward, stats.rejected_reward
    m = {
        "step": step,
        "loss": stats.loss.mean().item(),
        "rewards/chosen": rc.mean().item(),
        "rewards/rejected": rr.mean().item(),
        "rewards/margins": (rc - rr).mean().item(),
        "rewards/accuracies": (rc > rr).float().mean().item(),
        "rewards/ties": (rc == rr).float().mean().item(),
        "logps/chosen": stats.chosen_logps.mean().item(),
        "logps/rejected": stats.rejected_logps.mean().item(),
        "lengths/chosen": stats.chosen_len.mean().item(),
        "lengths/rejected": stats.rejected_len.mean().item(),
        "grad_norm": grad_norm,
        "learning_rate": lr,
    }
    if stats.ref_gap_chosen is not None:
        m["kl/ref_policy"] = torch.cat([stats.ref_gap_chosen, stats.ref_gap_rejected]).mean().item()
    if step_s is not None:
        m["time/step_s"] = step_s
    for k in sorted(stats.extras):  # T-REG (docs/metrics.md): per-pair values, averaged like the rewards
        m[k] = stats.extras[k].mean().item()
    return m


class MetricsLogger:
    """metrics.jsonl (main process) + accelerate trackers (TensorBoard)."""

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


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
