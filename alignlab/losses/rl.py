"""The RL math of PPO, RLOO and GRPO as pure functions over tensors (torch only, no models).

Shapes: token tensors are [B, T]; ``mask`` is a [B, T] float or bool tensor that is 1 on response tokens (any
padding side, any position of the last token). Masked-out positions never leak NaN/inf into a result. Sequence
tensors (rewards, scores, sequence advantages) are [B]. Inputs are log-probs already divided by the sampling
temperature; everything is computed in the dtype given (callers pass fp32).

Notation: ``logp`` = log pi_theta(y_t | s_t) of the policy being trained, ``old_logp`` = the same under the
rollout-time policy pi_old, ``ref_logp`` = under the reference policy. The ratio is rho_t = exp(logp - old_logp).
KL coefficients (``kl_coef`` for PPO/RLOO, GRPO's beta) weight a KL-to-reference penalty: larger means the policy
is held closer to the reference.
"""

from __future__ import annotations

from typing import Iterable

import torch

KL_ESTIMATORS = ("k1", "k3")
AGGREGATIONS = ("grpo", "dapo", "dr_grpo", "bnpo", "token_mean", "sequence")
GRPO_SCALES = ("group", "batch", "none")


def _m(mask: torch.Tensor) -> torch.Tensor:
    return mask.bool()


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where mask, exactly 0 elsewhere (no NaN leaks from padding)."""
    return torch.where(_m(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


# --------------------------------------------------------------------------------------------------- KL and rewards
def per_token_kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) from sampled-token log-probs (Schulman's k1/k3 estimators).

    k1 = logp - ref_logp (unbiased, can be negative per token; PPO's and RLOO's reward penalty).
    k3 = (e^l - 1) - l with l = ref_logp - logp (unbiased, always >= 0; GRPO's loss term). Computed as
    expm1(l) - l, clamped at 0, so it is >= 0 even under fp rounding. Both are exactly 0 when logp == ref_logp.
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        l = ref_logp - logp  # noqa: E741
        return (torch.expm1(l) - l).clamp_min(0.0)
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def kl_loss_term(
    logp: torch.Tensor, ref_logp: torch.Tensor, old_logp: torch.Tensor | None = None, estimator: str = "k3"
) -> torch.Tensor:
    """GRPO's per-token KL term [B, T] that is added to the **loss** as beta * term (KL in the loss, not the reward).

    Without ``old_logp``: ``per_token_kl(logp, ref_logp, estimator)`` (k3 by default, Shao et al. 2024). With
    ``old_logp``: multiplied by the differentiable ratio rho_t = exp(logp - old_logp), TRL 1.16's default
    (``use_bias_correction_kl=True``, the DeepSeek-V3.2 unbiased reverse-KL gradient); this changes the gradient
    even on-policy, where rho = 1 in value.
    """
    k = per_token_kl(logp, ref_logp, estimator)
    return k if old_logp is None else k * torch.exp(logp - old_logp)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's last valid token (explicit, works with left or right padding); -1 for empty rows."""
    pos = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(_m(mask), pos, torch.full_like(pos, -1)).max(-1).values


def kl_penalized_rewards(
    scores: torch.Tensor,
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """PPO per-token rewards [B, T]: r_t = -kl_coef * k_t on response tokens, plus the RM score at the last one.

    Ziegler et al. 2019 / InstructGPT form as in TRL's PPO trainer: the KL penalty is in the reward, per token
    (k1 by default, see ``per_token_kl``), and the sequence score ``scores`` [B] is added at each row's last valid
    token (found from the mask, not assumed at position -1). Exactly 0 outside the mask; an all-masked row gets
    nothing. (TRL places the score one position after the last token and lets GAE carry it back; placing it on
    the last token gives the same policy advantages.)
    """
    k = per_token_kl(logp, ref_logp, estimator)
    rewards = _masked(-kl_coef * k, mask)
    last = last_token_index(mask)
    at_last = torch.arange(mask.shape[-1], device=mask.device).unsqueeze(0) == last.unsqueeze(1)
    return rewards + at_last.to(rewards.dtype) * scores.to(rewards.dtype).unsqueeze(1)


def rloo_sequence_rewards(
    scores: torch.Tensor, logp_sum_old: torch.Tensor, ref_logp_sum: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """RLOO sequence reward [B] (Ahmadian et al. 2024; TRL RLOOTrainer): R = score - kl_coef * (Σ old - Σ ref).

    The KL is k1 **summed** over the completion tokens (rollout policy vs reference) and subtracted from the
    score, so it can be negative. Inputs are per-sequence summed log-probs [B].
    """
    return scores - kl_coef * (logp_sum_old - ref_logp_sum)


# ------------------------------------------------------------------------------------------------ masked statistics
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over mask == 1 (all elements, or along ``dim``); 0 where there is no valid element."""
    s = _masked(x, mask)
    m = _m(mask).to(x.dtype)
    if dim is None:
        return s.sum() / m.sum().clamp_min(1.0)
    return s.sum(dim) / m.sum(dim).clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all mask == 1 elements; ``unbiased`` applies Bessel's correction n/(n-1) (TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = _m(mask).sum()
        if int(n) < 2:
            raise ValueError(f"unbiased masked variance needs at least 2 valid elements, got {int(n)}")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """TRL's masked_whiten: (x - mean) / sqrt(var + eps) over all valid tokens of the batch (Bessel variance).

    shift_mean=True: result has mean 0 and unbiased variance ~1 (PPO advantage whitening). shift_mean=False:
    the mean is added back, (x - mean)/sqrt(var + eps) + mean, so the spread is rescaled but the mean is kept
    (PPO's optional reward whitening). Exactly 0 outside the mask.
    """
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return _masked(out, mask)


# --------------------------------------------------------------------------------------------------------------- GAE
@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, Schulman et al. 2016 Eq. 16 (TRL PPO defaults gamma=1, lam=0.95).

    delta_t = r_t + gamma * V_{t+1} - V_t with V after the last valid token = 0; A_t = delta_t + gamma*lam*A_{t+1};
    returns R_t = A_t + V_t. The recursion runs over each row's valid tokens only (the next valid token is "t+1"),
    so rows ending at different positions, left padding, or masked holes are all handled. Returns (advantages,
    returns), both [B, T] and exactly 0 outside the mask. No gradient: both are regression/policy targets.
    lam=0 gives A_t = delta_t; gamma=lam=1 gives the Monte-Carlo return minus V_t.
    """
    m = _m(mask)
    zero = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    next_v, next_a = zero, zero
    adv = []
    for t in reversed(range(rewards.shape[-1])):
        a = rewards[:, t] + gamma * next_v - values[:, t] + gamma * lam * next_a
        valid = m[:, t]
        adv.append(torch.where(valid, a, zero))
        next_v = torch.where(valid, values[:, t], next_v)
        next_a = torch.where(valid, a, next_a)
    advantages = torch.stack(adv[::-1], dim=1)
    return advantages, _masked(advantages + values, mask)


# ---------------------------------------------------------------------------------------------------- policy losses
def clipped_policy_loss_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token, Schulman et al. 2017 Eq. 7 (as a loss): max(-A rho, -A clip(rho)).

    rho = exp(logp - old_logp), clipped to [1 - clip_low, 1 + clip_high] (clip_high=None: symmetric, DAPO's
    "clip-higher" when larger). ``advantages`` is [B, T] (PPO) or [B] (sequence-level, GRPO/RLOO; broadcast over
    tokens). Returns (per-token loss [B, T], clipped [B, T] bool): clipped marks tokens where the clipped branch
    is strictly larger, i.e. the token gets zero gradient (TRL's clipfrac). Reduce with ``aggregate``.
    """
    hi = clip_low if clip_high is None else clip_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + hi)
    return torch.maximum(loss1, loss2), loss2 > loss1


def sequence_ratio_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    clip_high: float | None = None,
) -> torch.Tensor:
    """TRL 1.16 RLOO's loss: one ratio per sequence, rho = exp(Σ_t logp - Σ_t old_logp) over the mask.

    Per-sequence loss [B] = max(-A rho, -A clip(rho, 1 - clip, 1 + clip_high)), A the sequence advantage [B].
    ``old_logp`` is [B, T] (summed here under the mask) or the already **summed** [B]. The caller averages over
    sequences (``aggregate(..., mode="sequence")``); the log-ratio is a sum, so its gradient grows with length.
    """
    hi = clip if clip_high is None else clip_high
    old_sum = old_logp if old_logp.dim() == 1 else _masked(old_logp, mask).sum(-1)
    ratio = torch.exp(_masked(logp, mask).sum(-1) - old_sum)
    return torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + hi))


def aggregate(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor | None,
    mode: str,
    normalizer: float | torch.Tensor | None = None,
    max_completion_length: int | None = None,
    num_sequences: int | None = None,
) -> torch.Tensor:
    """Reduce per-token losses [B, T] (or per-sequence losses [B] for "sequence") to a scalar (TRL loss_type).

    - "grpo": Σ_b (masked **mean** over row b's tokens) / num_sequences: per-sequence length normalisation
      (Shao et al. 2024; has a length bias).
    - "dapo": masked **sum** / normalizer, normalizer = active tokens of the whole accumulated (global) batch,
      passed in by the caller (Yu et al. 2025; TRL's default). Default: the local active tokens.
    - "dr_grpo": masked **sum** / (num_sequences * max_completion_length), a constant (Liu et al. 2025).
    - "bnpo": masked **sum** / local active tokens (or ``normalizer``). "token_mean": alias, PPO's masked mean.
    - "sequence": per-sequence losses [B] (RLOO's sequence-ratio loss): Σ_b loss_b / num_sequences.

    ``num_sequences`` defaults to the local B. Gradient accumulation: the sum over micro-batches equals the loss
    of the full batch (values and gradients) exactly when the caller passes the global quantities: ``normalizer``
    = global active tokens for dapo/bnpo/token_mean, ``num_sequences`` = global number of sequences for grpo,
    dr_grpo and sequence. With the local defaults only grpo, dr_grpo and sequence are invariant, and then only
    for equal-sized micro-batches after dividing by the number of micro-batches (what TRL does); bnpo and
    token_mean with local counts are not invariant when token counts differ between micro-batches.
    """
    if mode not in AGGREGATIONS:
        raise ValueError(f"mode must be one of {AGGREGATIONS}, got {mode!r}")
    n_seq = per_token_loss.shape[0] if num_sequences is None else num_sequences
    if mode == "sequence":
        if per_token_loss.dim() != 1:
            raise ValueError("mode 'sequence' takes per-sequence losses [B]")
        return per_token_loss.sum() / n_seq
    m = _m(mask)
    total = _masked(per_token_loss, m)
    if mode == "grpo":
        per_seq = total.sum(-1) / m.sum(-1).clamp_min(1).to(total.dtype)
        return per_seq.sum() / n_seq
    if mode == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("mode 'dr_grpo' needs max_completion_length")
        return total.sum() / (n_seq * max_completion_length)
    denom = m.sum().clamp_min(1).to(total.dtype) if normalizer is None else normalizer
    return total.sum() / denom


# ------------------------------------------------------------------------------------------------------- value loss
def clipped_value_loss_terms(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO value loss 0.5 * max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, ±clip).

    Returns (per-token loss [B, T], clipped [B, T] bool: the clipped branch is strictly larger). Reduce with
    ``aggregate``; ``clipped_value_loss`` is the masked mean TRL's PPO uses.
    """
    v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
    l1, l2 = (values - returns) ** 2, (v_clip - returns) ** 2
    return 0.5 * torch.maximum(l1, l2), l2 > l1


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO value loss (TRL PPO): (0.5 * masked **mean** of max((V-R)^2, (V_clip-R)^2), clip fraction)."""
    per_token, clipped = clipped_value_loss_terms(values, old_values, returns, clip)
    return masked_mean(per_token, mask), masked_mean(clipped.to(values.dtype), mask)


# ------------------------------------------------------------------------------------------------------- advantages
def rloo_advantages(
    rewards: torch.Tensor, k: int, normalize: bool = False, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """RLOO leave-one-out advantages [N*k] (Ahmadian et al. 2024; Kool et al. 2019), TRL 1.16 conventions.

    Groups are **contiguous** rows (rows g*k .. g*k+k-1 share a prompt; TRL's sampler repeats each prompt k times
    in a row and views rewards as [-1, k]). b_i = (Σ_j R_j - R_i)/(k - 1), A_i = R_i - b_i = k/(k-1) (R_i - mean).
    ``valid`` [N*k] bool: invalid (unscorable) completions are left out of their group's baseline (the divisor
    is the valid count - 1) and get A = 0; so does a valid completion with no valid sibling, and k = 1 gives 0.
    ``normalize``: (A - mean)/(std + 1e-4) over the batch's contributing rows (Bessel std), as TRL.
    """
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of k={k}")
    ok = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
    r = torch.where(ok, rewards, torch.zeros_like(rewards)).view(-1, k)
    okg = ok.view(-1, k)
    count = okg.sum(1, keepdim=True)
    baseline = (r.sum(1, keepdim=True) - r) / (count - 1).clamp_min(1).to(r.dtype)
    use = okg & (count >= 2)
    adv = torch.where(use, r - baseline, torch.zeros_like(r)).view(-1)
    use = use.view(-1)
    if normalize and int(use.sum()) > 0:
        mean = masked_mean(adv, use)
        std = masked_var(adv, use).sqrt() if int(use.sum()) > 1 else torch.zeros_like(mean)
        adv = torch.where(use, (adv - mean) / (std + 1e-4), torch.zeros_like(adv))
    return adv


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages [N*G] (Shao et al. 2024, outcome supervision; TRL 1.16 ``scale_rewards``).

    A_i = (r_i - mean_group) / (std + eps) with contiguous groups of ``group_size``. scale="group": std of the
    group; "batch": one std over the whole batch (TRL: centred by the group mean, scaled by the batch std);
    "none": A = r - mean_group (Dr. GRPO). Stds are Bessel-corrected; a group of identical rewards gives 0, never
    NaN; group_size=1 gives 0.
    """
    if scale not in GRPO_SCALES:
        raise ValueError(f"scale must be one of {GRPO_SCALES}, got {scale!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    g = rewards.view(-1, group_size)
    centred = (g - g.mean(1, keepdim=True)).view(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = g.std(1, keepdim=True).expand_as(g).reshape(-1) if group_size > 1 else torch.zeros_like(rewards)
    else:
        std = rewards.std().expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    return centred / (std + eps)


# ------------------------------------------------------------------------------------------------ logging, controls
def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Approximate KL(pi_old || pi_theta) for logging: 0.5 * masked **mean** of (logp - old_logp)^2 (TRL PPO)."""
    return 0.5 * masked_mean((logp - old_logp) ** 2, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax(logits) along the last dim, computed in fp32: shape logits.shape[:-1]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


@torch.no_grad()
def ema_sync_(ref_params: Iterable[torch.Tensor], policy_params: Iterable[torch.Tensor], alpha: float) -> None:
    """In place: ref <- (1 - alpha) * ref + alpha * policy (TR-DPO, Gorbatovski et al. 2024; TRL SyncRefModel).

    alpha = 1 is a hard copy (exact). The caller decides when, see ``sync_due``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    for ref, pol in zip(list(ref_params), list(policy_params), strict=True):
        if alpha == 1.0:
            ref.copy_(pol)
        else:
            ref.mul_(1.0 - alpha).add_(pol.to(ref.dtype), alpha=alpha)


def sync_due(step: int, every: int) -> bool:
    """True at optimizer steps step >= 1 that are multiples of ``every`` (the reference-sync period tau)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    return step >= 1 and step % every == 0


def adaptive_kl_coef(kl_coef: float, kl_observed: float, kl_target: float, n_steps: int, horizon: int) -> float:
    """Proportional KL controller (Ziegler et al. 2019 form): e = clip(KL_obs/KL_target - 1, -0.2, 0.2).

    Returns kl_coef * (1 + e * n_steps / horizon); n_steps = samples (or steps) since the last update.
    """
    e = min(max(kl_observed / kl_target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + e * n_steps / horizon)
