"""T-REG: preference optimisation with token-level reward regularisation (arXiv 2412.02685; docs/conventions.md T).

Pure functions over tensors. The sequence term is the usual DPO / SimPO loss on **summed** per-sequence
log-probs (PairLogps); the regulariser needs the per-token policy log-probs and the self-generated token
rewards r̂ (TokenTerms). Every function returns **per-pair** losses [B]; the recipe divides their sum by the
number of pairs in the effective batch (R7), exactly as for DPO, so the regulariser (a sum over the
tokens of one pair) needs no other normaliser.

Notation (T2): rho = log pi_theta(y|x) - log pi_ref(y|x) (summed), r = beta * rho the implicit reward,
r̂_t = sigma(Delta_t) - 0.5 the token reward, alpha the regulariser weight.

    L = L_seq + alpha * sg(w) * (L_REG(x, y_w) + L_REG(x, y_l))                      (T2.4)
    L_REG(x, y) = -beta * sum_t r̂_t * log pi_theta(y_t | x, y_<t)                    (T2.2, Eq. of T2.2)
    w = sigma(r_l - r_w): DPO's own per-pair gradient coefficient, detached           (T2.3)

The same L_REG applies to chosen and rejected responses (no sign flip): a good token inside a rejected answer
is still pushed up. Per-token gradients with w detached (T2.4):
    dL/dlog pi(y_w,t) = -beta*w - alpha*w*beta*r̂_w,t ;  dL/dlog pi(y_l,t) = +beta*w - alpha*w*beta*r̂_l,t
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.losses.preference import dpo, margin, simpo, simpo_rewards
from alignlab.losses.types import PairLogps, TokenTerms
from alignlab.ops.logprobs import masked_sum

WEIGHTINGS = ("dpo", "static")
DEFAULT_ALPHA = 0.25  # regulariser weight: the middle of the paper's grid {0.1, 0.25, 0.5}
# Largest float32 strictly below 0.5: sigma(Delta) - 0.5 rounds to exactly +-0.5 in fp32 once |Delta| > ~17,
# and the token reward is defined on the open interval (-0.5, 0.5) (T1.1).
_HALF_OPEN = float(torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)))


def token_rewards_from_logps(lp_better: torch.Tensor, lp_worse: torch.Tensor) -> torch.Tensor:
    """r̂_t = sigma(log pi(y_t|c_better, y_<t) - log pi(y_t|c_worse, y_<t)) - 0.5   (T1.1).

    Computed as 0.5 * tanh(Delta / 2), the same function without the cancellation of sigma(Delta) - 0.5 near 0;
    odd in Delta, so swapping the two contexts negates r̂ exactly. Clamped to the largest float strictly below
    0.5 in magnitude (only differs from the formula where it would round to +-0.5). Shape-preserving.
    """
    if lp_better.shape != lp_worse.shape:
        raise ValueError(f"token rewards: better {tuple(lp_better.shape)} vs worse {tuple(lp_worse.shape)} log-probs")
    r = 0.5 * torch.tanh((lp_better - lp_worse) / 2)
    return r.clamp(-_HALF_OPEN, _HALF_OPEN)


def rescale_token_rewards(rhat: torch.Tensor, tau: float) -> torch.Tensor:
    """r̂ at contrast temperature tau: sigma(Delta / tau) - 0.5 from r̂ = sigma(Delta) - 0.5 (Delta recovered as
    2 atanh(2 r̂)). tau = 1 is the paper's formula (returned unchanged); tau < 1 sharpens small log-prob
    differences, which a 135M scorer produces (docs/treg.md). Not from the paper: a documented departure (T7).
    Sign, zeros, the (-0.5, 0.5) range and odd symmetry are kept. Shape-preserving."""
    if tau <= 0:
        raise ValueError(f"treg_tau must be > 0, got {tau}")
    if tau == 1.0:
        return rhat
    delta = 2 * torch.atanh((2 * rhat.double()).clamp(-1 + 1e-15, 1 - 1e-15))
    return (0.5 * torch.tanh(delta / (2 * tau))).clamp(-_HALF_OPEN, _HALF_OPEN).to(rhat.dtype)


def treg_regularizer(t: TokenTerms, beta: float, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[2B] L_REG per response: -beta * sum_t r̂_t log pi_theta(y_t|.) over the scored tokens (a **sum**, T2.2).

    With ``lengths`` ([2B] token counts) it is divided by |y|: the SimPO analogue -(beta/|y|) sum_t r̂_t log pi
    (T2.5) or the non-paper ``reg_reduction="mean"`` option.
    """
    val = -beta * masked_sum(t.rhat.to(t.logps.dtype) * t.logps, t.mask)
    if lengths is not None:
        val = val / lengths.clamp(min=1).to(val.dtype)
    return val


@dataclass
class TregParts:
    """Per-pair components, all [B]: seq (the preference loss), w (sequence weight as used: detached unless
    detach_weight=False), reg_chosen / reg_rejected (L_REG of y_w and y_l)."""

    seq: torch.Tensor
    w: torch.Tensor
    reg_chosen: torch.Tensor
    reg_rejected: torch.Tensor

    def total(self, alpha: float) -> torch.Tensor:
        return self.seq + alpha * self.w * (self.reg_chosen + self.reg_rejected)


def _weight(raw: torch.Tensor, weighting: str, static_weight: float, detach_weight: bool) -> torch.Tensor:
    if weighting == "static":  # ablation "static weighting (no w)" (T4.1, T5.2); constant 0.5 = w at init
        return torch.full_like(raw, static_weight).detach()
    if weighting != "dpo":
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    return raw.detach() if detach_weight else raw


def _check(p: PairLogps, t: TokenTerms) -> None:
    if t.n_pairs != p.chosen.shape[0]:
        raise ValueError(f"TokenTerms has {t.n_pairs} pairs but PairLogps has {p.chosen.shape[0]}")


def dpo_treg_parts(
    p: PairLogps,
    t: TokenTerms,
    beta: float = 0.1,
    weighting: str = "dpo",
    static_weight: float = 0.5,
    detach_weight: bool = True,
    reg_reduction: str = "sum",
) -> TregParts:
    _check(p, t)
    seq = dpo(p, beta)
    # sigma(r_l - r_w) = sigma(-beta*h): exactly -dL_DPO/d(beta*h), DPO's per-pair gradient coefficient (T2.3).
    w = _weight(torch.sigmoid(-beta * margin(p)), weighting, static_weight, detach_weight)
    if reg_reduction not in ("sum", "mean"):
        raise ValueError(f"reg_reduction must be 'sum' (paper) or 'mean' (non-paper option), got {reg_reduction!r}")
    lengths = torch.cat([p.chosen_len, p.rejected_len]) if reg_reduction == "mean" else None
    reg = treg_regularizer(t, beta, lengths)
    B = t.n_pairs
    return TregParts(seq, w, reg[:B], reg[B:])


def dpo_treg(
    p: PairLogps,
    t: TokenTerms,
    beta: float = 0.1,
    alpha: float = DEFAULT_ALPHA,
    weighting: str = "dpo",
    static_weight: float = 0.5,
    detach_weight: bool = True,
    reg_reduction: str = "sum",
) -> torch.Tensor:
    """DPO-REG (T2.4): -log sigma(beta*h) + alpha * sg(w) * (L_REG(y_w) + L_REG(y_l)), per pair [B].

    beta: DPO's inverse KL strength, also the scale of the token regulariser (L_REG = -beta sum r̂ log pi).
    alpha: regulariser weight (paper grid {0.1, 0.25, 0.5}; default 0.25). alpha = 0 is exactly DPO.
    weighting: "dpo" (w = sigma(r_l - r_w), paper) or "static" (w = static_weight, ablation).
    reg_reduction: "sum" over tokens (paper) or "mean" (divides by |y|; not in the paper).
    """
    return dpo_treg_parts(p, t, beta, weighting, static_weight, detach_weight, reg_reduction).total(alpha)


def simpo_treg_parts(
    p: PairLogps,
    t: TokenTerms,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.25,
    label_smoothing: float = 0.0,
    weighting: str = "dpo",
    static_weight: float = 0.5,
    detach_weight: bool = True,
) -> TregParts:
    _check(p, t)
    seq = simpo(p, beta, gamma_beta_ratio, label_smoothing)
    r_w, r_l = simpo_rewards(p, beta)
    # SimPO's gradient coefficient sigma(r_l - r_w + gamma) (T2.5, [inferred]).
    w = _weight(torch.sigmoid(r_l - r_w + beta * gamma_beta_ratio), weighting, static_weight, detach_weight)
    # Length-normalised like SimPO's own reward: a summed regulariser at beta = 10 would swamp the preference term.
    reg = treg_regularizer(t, beta, torch.cat([p.chosen_len, p.rejected_len]))
    B = t.n_pairs
    return TregParts(seq, w, reg[:B], reg[B:])


def simpo_treg(
    p: PairLogps,
    t: TokenTerms,
    beta: float = 2.0,
    gamma_beta_ratio: float = 0.25,
    label_smoothing: float = 0.0,
    alpha: float = DEFAULT_ALPHA,
    weighting: str = "dpo",
    static_weight: float = 0.5,
    detach_weight: bool = True,
) -> torch.Tensor:
    """SimPO-REG, our analogue (T2.5, [inferred]), per pair [B]:

        -log sigma(r_w - r_l - gamma) + alpha * sg(w) * (L_REG(y_w) + L_REG(y_l)),
        r = (beta/|y|) log pi_theta(y|x),  L_REG = -(beta/|y|) sum_t r̂_t log pi_theta(y_t|.),
        w = sigma(r_l - r_w + gamma).

    No reference model. beta: SimPO's reward scale; gamma = beta * gamma_beta_ratio. alpha = 0 is exactly SimPO.
    """
    return simpo_treg_parts(
        p, t, beta, gamma_beta_ratio, label_smoothing, weighting, static_weight, detach_weight
    ).total(alpha)


@torch.no_grad()
def treg_metrics(parts: TregParts, t: TokenTerms) -> dict[str, torch.Tensor]:
    """Per-pair [B] logging values (T5.1 step 3), means of r̂ over each response's scored tokens."""
    B = t.n_pairs
    cnt = t.mask.sum(-1).clamp(min=1).to(torch.float32)
    rhat = torch.where(t.mask, t.rhat.float(), torch.zeros((), device=t.rhat.device))
    mean = rhat.sum(-1) / cnt
    pos = ((rhat > 0) & t.mask).sum(-1).float()
    return {
        "treg/w": parts.w.detach().float(),
        "treg/reg_chosen": parts.reg_chosen.detach().float(),
        "treg/reg_rejected": parts.reg_rejected.detach().float(),
        "treg/rhat_mean_chosen": mean[:B],
        "treg/rhat_mean_rejected": mean[B:],
        "treg/rhat_pos_frac": (pos[:B] + pos[B:]) / (cnt[:B] + cnt[B:]),
    }
