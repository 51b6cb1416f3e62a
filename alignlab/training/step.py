"""One optimizer step of offline preference optimisation: the only place where the training gradient is assembled.

Each micro-batch contributes sum(per-pair losses) * world / n_pairs_global (+ the SFT term over the global
chosen-token count), so the accumulated gradient is the effective-batch mean however the batch is split over
micro-batches and ranks (DDP averages ranks, hence * world; docs/conventions.md R7). accelerate's own loss
scaling is not used. A non-finite gradient norm (identical on every rank after the all-reduce) stops the run
before the optimizer step, naming the step and the batch, so the last checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields

import torch

from alignlab.data.collate import collate_pairs
from alignlab.data.tokenize import TokenizedPair
from alignlab.losses.objective import ObjectiveOut, preference_objective
from alignlab.losses.registry import LossSpec, label_error
from alignlab.losses.types import PairLogps, TokenTerms
from alignlab.training.schedule import BatchPlan


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient is NaN/inf; names the step and the batch."""


@dataclass
class StepSettings:
    """What the step reads from the run's config (kept apart so the step does not depend on a recipe).

    params: the loss's parameters keyed by config names (beta and LossSpec.reads), as preference_objective takes.
    """

    spec: LossSpec
    params: dict
    reference_free: bool = False
    sft_weight: float = 0.0
    max_grad_norm: float = 1.0


@dataclass
class PairStats:
    """Per-pair values of one step, each [N] over the pairs seen (this rank's micro-batches, or every rank's
    after ``gather``). Rewards are the loss's implicit rewards; log-probs are **summed** over completion tokens;
    ``*_len`` are scored token counts; ``ref_gap_*`` = log π_ref − log π_θ (None for reference-free runs);
    ``extras``: token-level losses' per-pair metrics (``treg/*``)."""

    loss: torch.Tensor
    chosen_reward: torch.Tensor
    rejected_reward: torch.Tensor
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    ref_gap_chosen: torch.Tensor | None = None
    ref_gap_rejected: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, obj: ObjectiveOut, p: PairLogps) -> "PairStats":
        gap = p.ref_chosen is not None
        return cls(
            obj.losses.detach(),
            obj.chosen_rewards,
            obj.rejected_rewards,
            p.chosen.detach(),
            p.rejected.detach(),
            p.chosen_len.float(),
            p.rejected_len.float(),
            (p.ref_chosen - p.chosen).detach() if gap else None,
            (p.ref_rejected - p.rejected).detach() if gap else None,
            dict(obj.extras),
        )

    @classmethod
    def cat(cls, parts: list["PairStats"]) -> "PairStats":
        def join(vals):
            return None if vals[0] is None else torch.cat(vals)

        kw = {f.name: join([getattr(s, f.name) for s in parts]) for f in fields(cls) if f.name != "extras"}
        extras = {k: torch.cat([s.extras[k] for s in parts]) for k in parts[0].extras}
        return cls(**kw, extras=extras)

    def gather(self, accelerator) -> "PairStats":
        """Every rank's pairs, on the CPU (a collective: all ranks must call it)."""

        def g(t):
            return None if t is None else accelerator.gather(t).cpu()

        kw = {f.name: g(getattr(self, f.name)) for f in fields(self) if f.name != "extras"}
        return PairStats(**kw, extras={k: g(v) for k, v in sorted(self.extras.items())})


@dataclass
class StepOut:
    stats: PairStats  # gathered over ranks
    grad_norm: float
    forward: dict[str, int] = field(default_factory=dict)  # "positions", "padding", "pairs": summed over ranks


def pair_logps(out, n: int, ref: torch.Tensor | None) -> PairLogps:
    """PairLogps from a SequenceScorer output over a PairBatch (rows [0, n) chosen, [n, 2n) rejected)."""
    s, c = out.sum, out.count
    return PairLogps(s[:n], s[n:], c[:n], c[n:], None if ref is None else ref[:n], None if ref is None else ref[n:])


def pair_objective(settings: StepSettings, scorer, batch) -> tuple[ObjectiveOut, PairLogps]:
    """The objective of one PairBatch under ``scorer`` (training and evaluation alike): per-pair losses and rewards,
    and the policy's per-sequence log-probs. Token-level losses get the per-token log-probs and ``batch``'s token
    rewards; losses that read soft labels get ``batch.p_chosen``. Soft labels or margins that the loss does not
    read are an error (alignlab.losses.registry.label_error), checked before the forward."""
    why = label_error(settings.spec, batch.p_chosen is not None, batch.margin is not None)
    if why:
        raise ValueError(why)
    token_level = settings.spec.token_level
    packed = {"packed": batch.packed} if batch.packed is not None else {}
    out = scorer(batch.input_ids, batch.attention_mask, batch.completion_mask, return_tokens=token_level, **packed)
    pl = pair_logps(out, batch.n_pairs, batch.ref_logps)
    tokens = TokenTerms(out.token, batch.completion_mask[:, 1:], batch.token_rewards) if token_level else None
    obj = preference_objective(pl, settings.spec, settings.params, settings.reference_free, tokens, batch.p_chosen)
    return obj, pl


def accumulate_gradients(
    settings: StepSettings,
    accelerator,
    scorer,
    plan: BatchPlan,
    pairs: list[TokenizedPair],
    ref_table,
    pad_id: int,
    step: int,
    token_rewards=None,
    counters: dict[str, int] | None = None,
) -> tuple[PairStats, list]:
    """Forward/backward over this rank's micro-batches of one step (no optimizer step).

    Returns this rank's per-pair stats and the sources of any micro-batch whose loss was not finite.
    Token-level losses (T-REG) also need ``token_rewards`` (per-pair (chosen, rejected) r̂ lists of the whole
    dataset); only they ask the scorer for per-token log-probs, so other losses run unchanged.
    Micro-batches are packed (prompt once per pair, alignlab.ops.packing) when the scorer's ``pack_spec`` says so.
    ``counters``, if given, gets "positions" / "padding" (forward positions computed, of which padding) and "pairs"
    added.
    """
    micro = plan.micro_batches(step, accelerator.process_index)
    global_idx = plan.global_batch(step)
    n_global = len(global_idx)
    chosen_tokens = sum(len(pairs[i].chosen_ids) for i in global_idx)  # R7: counted before any backward
    world = accelerator.num_processes
    token_level = settings.spec.token_level
    if token_level and token_rewards is None:
        raise ValueError(f"loss {settings.spec.name!r} needs token rewards (alignlab.precompute.token_rewards)")
    stats, bad_local = [], []
    pack = getattr(accelerator.unwrap_model(scorer), "pack_spec", None)
    for j, idx in enumerate(micro):
        batch = collate_pairs(
            [pairs[i] for i in idx], idx, pad_id, ref_table, token_rewards if token_level else None, pack
        ).to(accelerator.device)
        if counters is not None:
            positions, padding = batch.forward_positions()
            for k, v in (("positions", positions), ("padding", padding), ("pairs", len(idx))):
                counters[k] = counters.get(k, 0) + v
        sync = j == len(micro) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(scorer):
            obj, pl = pair_objective(settings, scorer, batch)
            loss = obj.losses.sum() * world / n_global
            if settings.sft_weight > 0:
                loss = loss + settings.sft_weight * obj.sft_nll_sum * world / chosen_tokens
            if not torch.isfinite(loss):
                bad_local.append([pairs[i].source for i in idx])
            accelerator.backward(loss)
        stats.append(PairStats.of(obj, pl))
    return PairStats.cat(stats), bad_local


def train_step(
    settings: StepSettings,
    accelerator,
    scorer,
    optimizer,
    scheduler,
    plan: BatchPlan,
    pairs: list[TokenizedPair],
    ref_table,
    pad_id: int,
    step: int,
    token_rewards=None,
) -> StepOut:
    """One optimizer step; returns the per-pair stats gathered from every rank, the gradient norm and the forward
    positions computed (summed over ranks: ``forward`` = positions, padding, pairs)."""
    counters: dict[str, int] = {}
    stats, bad_local = accumulate_gradients(
        settings,
        accelerator,
        scorer,
        plan,
        pairs,
        ref_table,
        pad_id,
        step,
        token_rewards=token_rewards,
        counters=counters,
    )
    clip = settings.max_grad_norm if settings.max_grad_norm > 0 else math.inf
    grad_norm = accelerator.clip_grad_norm_(scorer.parameters(), clip)
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        global_idx = plan.global_batch(step)
        raise NonFiniteLossError(
            f"non-finite loss/gradient at step {step + 1} (global batch of {len(global_idx)} pairs, dataset indices "
            f"{global_idx[:16]}{'...' if len(global_idx) > 16 else ''}); offending micro-batches on rank "
            f"{accelerator.process_index}: {bad_local[:2]}. The last checkpoint is intact."
        )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    keys = ("positions", "padding", "pairs")
    summed = accelerator.reduce(torch.tensor([counters[k] for k in keys], device=accelerator.device), "sum")
    return StepOut(stats.gather(accelerator), float(grad_norm), dict(zip(keys, summed.tolist())))
