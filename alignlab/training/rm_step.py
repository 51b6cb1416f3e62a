"""Reward-model training pieces: batching of reward rows, one optimizer step, held-out evaluation, baselines.

A pair gives two rows, prompt+chosen and prompt+rejected; B pairs are scored in **one** forward of 2B rows (rows
[0, B) chosen, [B, 2B) rejected). Each row ends with EOS, where the reward is read (alignlab.models.reward_model):
a completion whose EOS was cut by truncation gets its last kept token replaced by EOS, so the length stays within
``max_length`` and the reward is still read at an EOS.

Labels: pairs that carry ``p_chosen`` (soft label) and ``margin`` (alignlab.data.labels) train on
−[p·log σ(Δ) + (1−p)·log σ(−Δ)] with Δ = r_c − r_r − m (``bradley_terry_loss``); held-out ``eval_loss`` uses the
eval pairs' own fields the same way. ``accuracy`` stays the hard comparison r_c > r_r against the file's order of
chosen and rejected, whatever p is.

Gradient: each micro-batch contributes sum(per-pair Bradley–Terry losses) · world / n_pairs_global, so the
accumulated gradient is the mean over the effective batch however it is split over micro-batches and ranks (the
rule of alignlab.training.step). A non-finite loss on any rank, or a non-finite gradient norm, stops the step
before the optimizer moves, naming the step and the batch (``NonFiniteLossError``); the last checkpoint is intact.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass

import torch

from alignlab.data.collate import pair_labels
from alignlab.data.tokenize import TokenizedPair
from alignlab.losses.reward_model import bradley_terry_loss, reward_metrics
from alignlab.training.evaluate import shard_batches
from alignlab.training.metrics import EVAL_PREFIX
from alignlab.training.schedule import BatchPlan
from alignlab.training.step import NonFiniteLossError

LENGTH_BASELINE = f"{EVAL_PREFIX}baseline/length_accuracy"
SHORTER_BASELINE = f"{EVAL_PREFIX}baseline/shorter_accuracy"


def reward_row(pair: TokenizedPair, completion: list[int], eos_id: int) -> list[int]:
    """prompt + completion, ending with EOS (the last token is replaced by EOS when truncation removed it)."""
    ids = pair.prompt_ids + completion
    return ids if ids[-1] == eos_id else ids[:-1] + [eos_id]


def collate_rewards(
    pairs: list[TokenizedPair], pad_id: int, eos_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [2B, T], attention_mask [2B, T]) of B pairs: rows [0, B) prompt+chosen, [B, 2B) prompt+rejected,
    padded on ``padding_side`` ("right" or "left") with ``pad_id`` to the longest row."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    rows = [reward_row(p, p.chosen_ids, eos_id) for p in pairs] + [reward_row(p, p.rejected_ids, eos_id) for p in pairs]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(0, len(r)) if padding_side == "right" else slice(T - len(r), T)
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        attn[i, span] = 1
    return ids, attn


def pair_loss(rc: torch.Tensor, rr: torch.Tensor, pairs: list[TokenizedPair], center_coef: float) -> torch.Tensor:
    """Per-pair Bradley–Terry losses [B] of ``pairs`` with their own soft labels and margins (when they carry them)."""
    p, m = (None if t is None else t.to(device=rc.device, dtype=rc.dtype) for t in pair_labels(pairs))
    return bradley_terry_loss(rc, rr, margin=m, center_coef=center_coef, soft_label=p)


def pair_rewards(scorer, pairs: list[TokenizedPair], pad_id: int, eos_id: int, device) -> tuple[torch.Tensor, ...]:
    """(r_chosen [B], r_rejected [B]) of ``pairs`` under ``scorer`` (a RewardScorer), one forward."""
    ids, attn = collate_rewards(pairs, pad_id, eos_id)
    r = scorer(ids.to(device), attn.to(device))
    return r[: len(pairs)], r[len(pairs) :]


@dataclass
class RMStepOut:
    chosen: torch.Tensor  # [N] rewards of the step's pairs, every rank's (CPU)
    rejected: torch.Tensor
    loss: torch.Tensor  # [N] per-pair losses
    grad_norm: float

    def metrics(self) -> dict[str, float]:
        """The step's metrics.jsonl values: loss (mean per-pair loss), accuracy, margin, ties, rewards/*."""
        return {"loss": self.loss.double().mean().item()} | reward_metrics(self.chosen, self.rejected)


def rm_train_step(
    accelerator,
    scorer,
    optimizer,
    scheduler,
    plan: BatchPlan,
    pairs: list[TokenizedPair],
    pad_id: int,
    eos_id: int,
    step: int,
    center_coef: float = 0.0,
    max_grad_norm: float = 1.0,
) -> RMStepOut:
    """One optimizer step over this rank's micro-batches of ``step``; returns the per-pair values of every rank."""
    micro = plan.micro_batches(step, accelerator.process_index)
    n_global, world = len(plan.global_batch(step)), accelerator.num_processes
    chosen, rejected, losses, bad_local = [], [], [], []
    for j, idx in enumerate(micro):
        batch = [pairs[i] for i in idx]
        with contextlib.nullcontext() if j == len(micro) - 1 else accelerator.no_sync(scorer):
            rc, rr = pair_rewards(scorer, batch, pad_id, eos_id, accelerator.device)
            per_pair = pair_loss(rc, rr, batch, center_coef)
            loss = per_pair.sum() * world / n_global
            if not torch.isfinite(loss):
                bad_local.append([p.source for p in batch])
            accelerator.backward(loss)
        chosen.append(rc.detach())
        rejected.append(rr.detach())
        losses.append(per_pair.detach())
    n_bad = torch.tensor([float(len(bad_local))], device=accelerator.device)
    if world > 1:
        n_bad = accelerator.reduce(n_bad, reduction="sum")
    clip = max_grad_norm if max_grad_norm > 0 else math.inf
    grad_norm = accelerator.clip_grad_norm_(scorer.parameters(), clip)
    if n_bad.item() > 0 or not torch.isfinite(torch.as_tensor(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        idx = plan.global_batch(step)
        raise NonFiniteLossError(
            f"non-finite reward-model loss/gradient at step {step + 1} (global batch of {len(idx)} pairs, dataset "
            f"indices {idx[:16]}{'...' if len(idx) > 16 else ''}); offending micro-batches on rank "
            f"{accelerator.process_index}: {bad_local[:2]}. The last checkpoint is intact."
        )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)

    def gather(parts):
        return accelerator.gather(torch.cat(parts)).cpu()

    return RMStepOut(gather(chosen), gather(rejected), gather(losses), float(grad_norm))


def source_key(source: str) -> str:
    """The data source of a pair without its row: "dir/hh.jsonl.gz:17" -> "hh.jsonl.gz",
    "hf:org/name[train][17]" -> "hf:org/name[train]" (what per-source accuracy groups by)."""
    s = re.sub(r"(:\d+|\[\d+\])$", "", source)
    return s if s.startswith("hf:") else s.rsplit("/", 1)[-1]


@torch.no_grad()
def evaluate_rewards(
    accelerator, scorer, pairs: list[TokenizedPair], pad_id: int, eos_id: int, batch_size: int, center_coef=0.0
) -> dict[str, float]:
    """Collective (every rank calls it): ``eval_loss`` and the ``reward_metrics`` of the held-out ``pairs`` as
    ``eval_<name>`` (per-source accuracy only when the pairs come from more than one source), and ``eval_runtime``.
    Each rank scores a round-robin shard, unwrapped from DDP and in eval mode; the shards' rewards are joined on
    every rank, so N processes give the numbers of one."""
    from accelerate.utils import gather_object

    t0 = time.perf_counter()
    model = accelerator.unwrap_model(scorer)
    was_training = model.training
    model.eval()
    try:
        rank, world = accelerator.process_index, accelerator.num_processes
        mine = []
        for idx in shard_batches(pairs, rank, world, batch_size):
            rc, rr = pair_rewards(model, [pairs[i] for i in idx], pad_id, eos_id, accelerator.device)
            mine += list(zip(idx, rc.tolist(), rr.tolist()))
    finally:
        model.train(was_training)
    rows = sorted(gather_object(mine) if world > 1 else mine)
    rc = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    rr = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    sources = [source_key(pairs[r[0]].source) for r in rows]
    m = {"loss": pair_loss(rc, rr, [pairs[r[0]] for r in rows], center_coef).mean().item()}
    m |= reward_metrics(rc, rr, sources if len(set(sources)) > 1 else None)
    return {EVAL_PREFIX + k: v for k, v in m.items()} | {EVAL_PREFIX + "runtime": time.perf_counter() - t0}


def length_baseline_accuracy(pairs: list[TokenizedPair], prefer: str = "longer") -> float:
    """Accuracy of a judge that prefers the longer response (``prefer="shorter"``: the shorter one), in completion
    tokens as trained; a tie counts as wrong, like a reward tie. The number a reward model must beat to have learned
    more than length (on HH harmless the chosen reply is more often the *shorter* one, hence both)."""
    if prefer not in ("longer", "shorter"):
        raise ValueError(f"prefer must be 'longer' or 'shorter', got {prefer!r}")
    if not pairs:
        return math.nan
    sign = 1 if prefer == "longer" else -1
    return sum(sign * (len(p.chosen_ids) - len(p.rejected_ids)) > 0 for p in pairs) / len(pairs)


def length_baselines(pairs: list[TokenizedPair]) -> dict[str, float]:
    """The step-0 eval row's baselines: ``eval_baseline/length_accuracy`` (the longer response wins) and
    ``eval_baseline/shorter_accuracy`` (the shorter one wins); ties are wrong in both, so they need not add to 1."""
    return {
        LENGTH_BASELINE: length_baseline_accuracy(pairs),
        SHORTER_BASELINE: length_baseline_accuracy(pairs, "shorter"),
    }
