"""Training metrics with TRL's names and meanings (specs/preference_losses.md §4), plus alignlab additions.

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


def step_metrics(rows: dict, step: int, lr: float, beta: float) -> dict:
    rc, rr = rows["rc"], rows["rr"]
    m = {
        "step": step,
        "loss": rows["loss"].mean().item(),
        "rewards/chosen": rc.mean().item(),
        "rewards/rejected": rr.mean().item(),
        "rewards/margins": (rc - rr).mean().item(),
        "rewards/accuracies": (rc > rr).float().mean().item(),
        "rewards/ties": (rc == rr).float().mean().item(),
        "logps/chosen": rows["lc"].mean().item(),
        "logps/rejected": rows["lr"].mean().item(),
        "lengths/chosen": rows["nc"].mean().item(),
        "lengths/rejected": rows["nr"].mean().item(),
        "grad_norm": rows["grad_norm"],
        "learning_rate": lr,
    }
    if "klc" in rows:
        m["kl/ref_policy"] = torch.cat([rows["klc"], rows["klr"]]).mean().item()
    if "time/step_s" in rows:
        m["time/step_s"] = rows["time/step_s"]
    for k in sorted(rows):  # T-REG (docs/metrics.md): per-pair values, averaged like the rewards
        if k.startswith("treg/"):
            m[k] = rows[k].mean().item()
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
