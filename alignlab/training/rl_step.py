"""One RL update of ``alignlab rl`` (PPO, RLOO, GRPO): the only place the online-RL gradient is assembled.

``advantages`` turns a scored rollout batch into what the loss needs, as each algorithm defines it
(docs/rlhf.md): PPO puts a per-token KL penalty into the reward and runs GAE over a value model; RLOO subtracts the
summed KL from the sequence reward and takes the leave-one-out baseline; GRPO standardises the rewards within each
group and puts a k3 KL into the loss. ``update`` then runs ``num_ppo_epochs`` passes over the batch, each reshuffled
into ``num_mini_batches`` optimizer steps of micro-batches. Each micro-batch's loss is divided by the mini-batch's
*global* normaliser (tokens or sequences over every micro-batch and rank, counted before any backward) and
multiplied by the world size (DDP averages ranks), so the accumulated gradient does not depend on how the
mini-batch is split (docs/conventions.md R7).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from alignlab.losses import rl
from alignlab.training.rl_batch import RolloutBatch, response_logps, token_values
from alignlab.training.step import NonFiniteLossError


@dataclass(frozen=True)
class RLSettings:
    """What the update reads from the run's config (docs/rlhf.md lists the defaults and their sources)."""

    algo: str  # ppo | rloo | grpo
    kl_coef: float
    kl_estimator: str  # k1 | k3
    cliprange: float = 0.2
    epsilon_high: float | None = None  # None: symmetric clipping
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    gae_lambda: float = 0.95
    whiten_rewards: bool = False
    num_ppo_epochs: int = 1
    num_mini_batches: int = 1
    micro_batch_size: int = 4
    loss_type: str = "dapo"  # grpo only: grpo | dapo | dr_grpo | bnpo
    scale_rewards: str = "group"  # grpo only: group | batch | none
    normalize_advantages: bool = False  # rloo only
    max_new_tokens: int = 64  # dr_grpo's constant
    max_grad_norm: float = 1.0
    seed: int = 0

    @property
    def aggregation(self) -> str:
        return {"ppo": "token_mean", "rloo": "sequence", "grpo": self.loss_type}[self.algo]


def advantages(s: RLSettings, b: RolloutBatch) -> dict[str, float]:
    """Fill ``b.extras`` with ``advantages`` ([B, T] for PPO, [B] otherwise) and, for PPO, ``returns``; return the
    batch-level statistics of what went in (KL to the reference and to the initial policy, per token; this rank's
    rows). Under several processes the batch-wide statistics (PPO whitening, GRPO scale_rewards=batch, RLOO
    normalize_advantages) are over every rank's rows: then it is a collective that every rank calls every step."""
    mask = b.response_mask
    kl_tok = rl.per_token_kl(b.old_logp, b.ref_logp, s.kl_estimator) * mask
    stats = {"kl_ref_per_token": float(rl.masked_mean(kl_tok, mask))}
    init = b.init_logp if b.init_logp is not None else b.ref_logp
    stats["kl_init_seq"] = float(((b.old_logp - init) * mask).sum(-1).mean())  # k1, summed: over-optimisation's KL
    stats["kl_ref_seq"] = float(((b.old_logp - b.ref_logp) * mask).sum(-1).mean())
    multi = _multi_process()
    if s.algo == "ppo":
        rewards = rl.kl_penalized_rewards(b.scores, b.old_logp, b.ref_logp, mask, s.kl_coef, s.kl_estimator)
        if s.whiten_rewards:
            rewards = _whiten(rewards, mask, shift_mean=False) if multi else rl.masked_whiten(rewards, mask, False)
        adv, ret = rl.gae(rewards, b.values, mask, s.gamma, s.gae_lambda)
        b.extras["advantages"] = (_whiten(adv, mask) if multi else rl.masked_whiten(adv, mask)) * mask
        b.extras["returns"] = ret
        stats["non_score_reward"] = float((rewards * mask).sum(-1).mean() - b.scores.mean())
    elif s.algo == "rloo":
        seq = rl.rloo_sequence_rewards(b.scores, (b.old_logp * mask).sum(-1), (b.ref_logp * mask).sum(-1), s.kl_coef)
        if s.normalize_advantages and multi:  # rl.rloo_advantages' normalisation, over every rank's rows
            adv = rl.rloo_advantages(seq, b.group_size)
            use = torch.full_like(adv, b.group_size >= 2, dtype=torch.bool)
            mean, var, n = _global_moments(adv, use)
            std = var.sqrt() if n > 1 else torch.zeros_like(var)
            b.extras["advantages"] = torch.where(use, (adv - mean) / (std + 1e-4), 0.0).to(adv.dtype)
        else:
            b.extras["advantages"] = rl.rloo_advantages(seq, b.group_size, normalize=s.normalize_advantages)
    elif s.scale_rewards == "batch" and multi:  # rl.grpo_advantages' batch std, over every rank's rows
        _, var, n = _global_moments(b.scores, torch.ones_like(b.scores, dtype=torch.bool))
        std = var.sqrt() if n > 1 else torch.zeros_like(var)
        b.extras["advantages"] = (rl.grpo_advantages(b.scores, b.group_size, "none") / (std + 1e-4)).to(b.scores.dtype)
    else:
        b.extras["advantages"] = rl.grpo_advantages(b.scores, b.group_size, scale=s.scale_rewards)
    return stats


# Batch statistics over the whole rollout batch of a step, every rank's rows (GRPO/RLOO groups are whole within a
# rank, so group statistics are exact locally; these are the ones that are not). A single process uses the rl.*
# functions themselves; under several processes one fp64 all-reduce per moment gives the same statistics, so
# N ranks x B rows update like 1 process x N*B rows (tests/test_rl_distributed.py). TRL's GRPO/RLOO gather the
# rewards for the same reason; TRL's PPO whitened each process's batch on its own, which made the update depend
# on the number of processes.
def _multi_process() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` (fp64 sums) summed over every rank; on the process group's device (NCCL needs CUDA tensors)."""
    import torch.distributed as dist
    from accelerate import PartialState

    t = x.detach().double().to(PartialState().device)
    dist.all_reduce(t)
    return t.cpu()


def _global_moments(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, Bessel-corrected variance, count) of ``x`` over ``mask`` on every rank, fp64, two passes."""
    m = mask.bool()
    xd = x.detach().double()
    total, n = _all_sum(torch.stack([torch.where(m, xd, 0.0).sum(), m.sum().double()]))
    mean = total / n.clamp_min(1.0)
    (sq,) = _all_sum(torch.where(m, (xd - mean) ** 2, 0.0).sum().unsqueeze(0))
    return mean, sq / (n - 1).clamp_min(1.0), int(n)


def _whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """rl.masked_whiten with the mean and variance of every rank's valid tokens."""
    mean, var, n = _global_moments(x, mask)
    if n < 2:
        raise ValueError(f"unbiased masked variance needs at least 2 valid elements, got {n}")
    out = (x.double() - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0.0).to(x.dtype)


def epoch_orders(s: RLSettings, n: int) -> list[torch.Tensor]:
    """The row order of every epoch, drawn up front: the scoring pass uses epoch 0's micro-batches, so the first
    minibatch's recomputed log-probs are bit-identical to ``old_logp`` (ratio exactly 1, docs/rlhf.md)."""
    g = torch.Generator().manual_seed(s.seed)
    return [torch.randperm(n, generator=g) for _ in range(s.num_ppo_epochs)]


def micro_batches(s: RLSettings, order: torch.Tensor) -> list[list[torch.Tensor]]:
    """``order`` cut into num_mini_batches mini-batches, each into micro-batches of micro_batch_size rows."""
    minis = torch.tensor_split(order, s.num_mini_batches)
    return [list(torch.split(m, s.micro_batch_size)) for m in minis]


@torch.no_grad()
def score_rollouts(
    s: RLSettings, batch: RolloutBatch, policy, ref_fn, order: torch.Tensor, value=None, init_fn=None
) -> None:
    """Fill old_logp (``policy``: the trainer's scorer), ref_logp (``ref_fn(rows) -> [b, T]``), for PPO values,
    and init_logp when the reference moves (``init_fn``); micro-batch by micro-batch in epoch 0's order, the shapes
    the update will see."""
    B, T = batch.response_mask.shape
    device = next(policy.parameters()).device
    old, ref = torch.zeros(B, T), torch.zeros(B, T)
    vals = torch.zeros(B, T) if value is not None else None
    init = torch.zeros(B, T) if init_fn is not None else None
    for mini in micro_batches(s, order):
        for idx in mini:
            rows = batch.rows(idx).to(device)
            old[idx] = response_logps(policy, rows).float().cpu()
            ref[idx] = ref_fn(rows).float().cpu()
            if init is not None:
                init[idx] = init_fn(rows).float().cpu()
            if value is not None:  # the rollout's values: V_old of the value-loss clipping
                vals[idx] = value(rows).float().cpu()
    batch.old_logp, batch.ref_logp, batch.values, batch.init_logp = old, ref, vals, init


def _normaliser(s: RLSettings, mini: RolloutBatch, accelerator) -> float:
    """The mini-batch's global denominator for the chosen aggregation (over every rank)."""
    if s.aggregation in ("token_mean", "dapo", "bnpo"):
        local = mini.response_mask.sum()
    elif s.aggregation == "dr_grpo":
        local = torch.tensor(len(mini) * s.max_new_tokens)
    else:  # grpo, sequence: a mean over sequences
        local = torch.tensor(len(mini))
    return float(accelerator.reduce(local.float().to(accelerator.device), reduction="sum"))


def micro_loss(s: RLSettings, rows: RolloutBatch, logp: torch.Tensor, values, norm: float) -> tuple:
    """The micro-batch's share of the mini-batch loss (sum over its tokens or sequences / ``norm``) and its
    per-row statistics (clipped share, approximate KL, value loss)."""
    mask = rows.response_mask
    adv = rows.extras["advantages"]
    if s.algo == "rloo":  # TRL's RLOO: one ratio per sequence (exp of the summed log-ratio), clipped
        per_seq = rl.sequence_ratio_policy_loss(logp, rows.old_logp, adv, mask, clip=s.cliprange)
        pg = per_seq.sum() / norm
        rho = torch.exp(((logp - rows.old_logp) * mask).sum(-1)).detach()
        clipped = ((rho - 1).abs() > s.cliprange).float().unsqueeze(-1) * mask  # a clipped sequence: all its tokens
    else:
        per_tok, clipped = rl.clipped_policy_loss_terms(logp, rows.old_logp, adv, s.cliprange, s.epsilon_high)
        if s.algo == "grpo" and s.kl_coef > 0:  # GRPO: KL to the reference in the loss, per token; times the
            # ratio, TRL 1.16's default bias-corrected form (its gradient differs even where the ratio is 1)
            per_tok = per_tok + s.kl_coef * rl.kl_loss_term(logp, rows.ref_logp, rows.old_logp, s.kl_estimator)
        pg = _aggregate(s, per_tok, mask, norm)
    out = {"pg": pg.detach()}
    loss = pg
    if values is not None:
        per_tok_v, v_clipped = rl.clipped_value_loss_terms(
            values, rows.values, rows.extras["returns"], s.cliprange_value
        )
        vl = (per_tok_v * mask).sum() / norm
        loss = loss + s.vf_coef * vl
        out["vf"], out["vf_clipfrac"] = vl.detach(), float((v_clipped * mask).sum())
    out["clipfrac"] = float((clipped * mask).sum())
    return loss, out


def _aggregate(s: RLSettings, per_tok: torch.Tensor, mask: torch.Tensor, norm: float) -> torch.Tensor:
    if s.aggregation == "grpo":  # each sequence's token mean, then / number of sequences in the mini-batch
        return ((per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / norm
    return (per_tok * mask).sum() / norm  # token_mean, dapo, bnpo: / tokens; dr_grpo: / (sequences * max_new)


def update(s: RLSettings, accelerator, policy, optimizer, scheduler, batch, orders, step, value=None) -> dict:
    """``num_ppo_epochs`` x ``num_mini_batches`` optimizer steps over ``batch``; returns the update's statistics.

    ``policy``/``value``: the accelerate-prepared scorers (value only for PPO; its parameters are in the same
    optimizer). A non-finite gradient norm stops the run naming the step, the epoch and the mini-batch.
    """
    world = accelerator.num_processes
    acc = {"pg": 0.0, "vf": 0.0, "clip_tokens": 0.0, "vf_clip_tokens": 0.0, "tokens": 0.0, "seqs": 0, "n_opt": 0}
    acc |= {"approx_kl_sum": 0.0, "ratio_sum": 0.0, "entropy_sum": 0.0, "ratio_max": 0.0, "first_ratio_dev": None}
    modules = [m for m in (policy, value) if m is not None]
    for epoch, order in enumerate(orders):
        for mb, mini_idx in enumerate(micro_batches(s, order)):
            mini = batch.rows(torch.cat(mini_idx))
            norm = _normaliser(s, mini, accelerator)
            for j, idx in enumerate(mini_idx):
                rows = batch.rows(idx).to(accelerator.device)
                last = j == len(mini_idx) - 1
                ctx = contextlib.ExitStack()
                if not last:
                    for m in modules:
                        ctx.enter_context(accelerator.no_sync(m))
                with ctx:
                    logp = response_logps(policy, rows)
                    values = token_values(value, rows) if value is not None else None
                    loss, out = micro_loss(s, rows, logp, values, norm)
                    accelerator.backward(loss * world)
                _tally(acc, rows, logp.detach(), out, epoch == 0 and mb == 0)
            _optimizer_step(s, accelerator, modules, optimizer, scheduler, step, epoch, mb)
            acc["n_opt"] += 1
    return _summary(acc)


def _optimizer_step(s: RLSettings, accelerator, modules, optimizer, scheduler, step, epoch, mb) -> None:
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    clip = s.max_grad_norm if s.max_grad_norm > 0 else math.inf
    grad_norm = accelerator.clip_grad_norm_(params, clip)
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(
            f"non-finite loss/gradient at RL step {step + 1} (epoch {epoch}, mini-batch {mb}); the last checkpoint "
            "is intact"
        )
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _tally(acc: dict, rows: RolloutBatch, logp: torch.Tensor, out: dict, first: bool) -> None:
    mask = rows.response_mask
    d = (logp - rows.old_logp) * mask
    ratio = torch.exp(d) * mask
    acc["tokens"] += float(mask.sum())
    acc["seqs"] += len(rows)
    acc["approx_kl_sum"] += float(0.5 * (d**2).sum())
    acc["ratio_sum"] += float(ratio.sum())
    acc["ratio_max"] = max(acc["ratio_max"], float(ratio.max()))
    acc["pg"] += float(out["pg"])
    acc["vf"] += float(out.get("vf", 0.0))
    acc["clip_tokens"] += out["clipfrac"]
    acc["vf_clip_tokens"] += out.get("vf_clipfrac", 0.0)
    if first:  # step-0 invariant: before the first optimizer step the ratio is exactly 1 (docs/rlhf.md)
        dev = float(d.abs().max())
        acc["first_ratio_dev"] = dev if acc["first_ratio_dev"] is None else max(acc["first_ratio_dev"], dev)


def _summary(acc: dict) -> dict:
    tok = max(acc["tokens"], 1.0)
    n = max(acc["n_opt"], 1)
    return {
        "loss/policy": acc["pg"] / n,
        "loss/value": acc["vf"] / n,
        "policy/approx_kl": acc["approx_kl_sum"] / tok,
        "policy/clipfrac": acc["clip_tokens"] / tok,
        "policy/ratio_mean": acc["ratio_sum"] / tok,
        "policy/ratio_max": acc["ratio_max"],
        "value/clipfrac": acc["vf_clip_tokens"] / tok,
        "check/first_ratio_max_dev": acc["first_ratio_dev"],
        "optimizer_steps": acc["n_opt"],
    }
