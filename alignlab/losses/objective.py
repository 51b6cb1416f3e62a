"""The preference objective: per-pair loss + TRL-named reward metrics, from per-sequence log-probs.

This is the single place where a preference gradient is defined; recipes only normalise and back-propagate.
Normaliser convention (pitfalls R7): per-pair losses are summed here and divided by the number of pairs in
the effective batch by the caller; the optional SFT term is a token-mean NLL over all chosen tokens of the
effective batch (its normaliser is passed in).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from alignlab.losses import REFERENCE_FREE, TOKEN_LEVEL, get_loss, loss_kwargs
from alignlab.losses.preference import simpo_rewards
from alignlab.losses.treg import PARTS, treg_metrics
from alignlab.losses.types import PairLogps, TokenTerms


@dataclass
class ObjectiveOut:
    """losses: [B] per-pair preference loss (differentiable).
    chosen_rewards / rejected_rewards: [B] detached metric rewards (TRL meaning: beta * summed log-ratio;
    SimPO: beta * mean log-prob).
    sft_nll_sum: scalar, summed NLL over chosen tokens (differentiable; 0 when unused).
    extras: name -> [B] detached per-pair metrics of token-level losses (``treg/*``); empty otherwise.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    sft_nll_sum: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def preference_objective(p: PairLogps, loss: str, params: dict, reference_free: bool = False,
                         tokens: TokenTerms | None = None) -> ObjectiveOut:
    """``tokens`` (per-token policy log-probs, mask, token rewards) is required by, and only used for, the
    token-level losses (TOKEN_LEVEL, i.e. T-REG); their sequence term uses ``p`` like every other loss."""
    fn = get_loss(loss)
    if reference_free and loss not in REFERENCE_FREE:
        p = p.reference_free()
    extras: dict[str, torch.Tensor] = {}
    if loss in TOKEN_LEVEL:
        if tokens is None:
            raise ValueError(f"loss {loss!r} is token-level: it needs TokenTerms (per-token log-probs and token rewards)")
        # fn(p, t, alpha, **kw) is PARTS[loss](p, t, **kw).total(alpha): build the parts once and take both the
        # loss and the treg/* metrics (detached) from them.
        kw = loss_kwargs(loss, params)
        alpha = kw.pop("alpha", inspect.signature(fn).parameters["alpha"].default)
        parts = PARTS[loss](p, tokens, **kw)
        losses = parts.total(alpha)
        extras = treg_metrics(parts, tokens)
    else:
        losses = fn(p, **loss_kwargs(loss, params))
    beta = float(params.get("beta", 0.1))
    with torch.no_grad():
        if loss in REFERENCE_FREE:
            rc, rr = simpo_rewards(p, beta)
        else:
            rc, rr = beta * (p.chosen - p.ref_chosen), beta * (p.rejected - p.ref_rejected)
    return ObjectiveOut(losses, rc.detach(), rr.detach(), -p.chosen.sum(), extras)
