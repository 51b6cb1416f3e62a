"""The preference objective: per-pair loss + TRL-named reward metrics, from per-sequence log-probs.

This is the single place where a preference gradient is defined; recipes only normalise and back-propagate.
Normaliser convention (pitfalls R7): per-pair losses are summed here and divided by the number of pairs in
the effective batch by the caller; the optional SFT term is a token-mean NLL over all chosen tokens of the
effective batch (its normaliser is passed in).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.losses import REFERENCE_FREE, get_loss, loss_kwargs
from alignlab.losses.preference import simpo_rewards
from alignlab.losses.types import PairLogps


@dataclass
class ObjectiveOut:
    """losses: [B] per-pair preference loss (differentiable).
    chosen_rewards / rejected_rewards: [B] detached metric rewards (TRL meaning: beta * summed log-ratio;
    SimPO: beta * mean log-prob).
    sft_nll_sum: scalar, summed NLL over chosen tokens (differentiable; 0 when unused).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    sft_nll_sum: torch.Tensor


def preference_objective(p: PairLogps, loss: str, params: dict, reference_free: bool = False) -> ObjectiveOut:
    fn = get_loss(loss)
    if reference_free and loss not in REFERENCE_FREE:
        p = p.reference_free()
    losses = fn(p, **loss_kwargs(loss, params))
    beta = float(params.get("beta", 0.1))
    with torch.no_grad():
        if loss in REFERENCE_FREE:
            rc, rr = simpo_rewards(p, beta)
        else:
            rc, rr = beta * (p.chosen - p.ref_chosen), beta * (p.rejected - p.ref_rejected)
    return ObjectiveOut(losses, rc.detach(), rr.detach(), -p.chosen.sum())
