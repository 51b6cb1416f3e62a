"""The preference objective: per-pair loss + TRL-named reward metrics, from per-sequence log-probs.

This is the single place where a preference gradient is defined; the training step only normalises and
back-propagates. Normaliser convention (docs/conventions.md R7): per-pair losses are returned here and summed
and divided by the number of pairs in the effective batch by the caller; the optional SFT term is a token-mean
NLL over all chosen tokens of the effective batch (its normaliser is passed in by the caller too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignlab.losses.preference import simpo_rewards
from alignlab.losses.registry import LossSpec, get_loss, label_error
from alignlab.losses.treg import DEFAULT_ALPHA, treg_metrics
from alignlab.losses.types import PairLogps, TokenTerms


@dataclass
class ObjectiveOut:
    """losses: [B] per-pair preference loss (differentiable).
    chosen_rewards / rejected_rewards: [B] detached metric rewards (TRL meaning: beta * summed log-ratio;
    SimPO: beta * mean log-prob).
    sft_nll_sum: scalar, summed NLL over chosen tokens (differentiable).
    extras: name -> [B] detached per-pair metrics of token-level losses (``treg/*``); empty otherwise.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    sft_nll_sum: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


def preference_objective(
    p: PairLogps,
    loss: str | LossSpec,
    params: dict,
    reference_free: bool = False,
    tokens: TokenTerms | None = None,
    soft_label: torch.Tensor | None = None,
) -> ObjectiveOut:
    """Per-pair loss of ``loss`` with ``params`` keyed by TrainConfig names: ``beta`` (default: the loss's own)
    and any key the loss reads (``LossSpec.reads``; missing ones take the function's default). A key the loss
    does not read is an error, never silently dropped (docs/conventions.md R11).

    ``tokens`` (per-token policy log-probs, mask, token rewards) is required by, and only used for, the
    token-level losses (T-REG); their sequence term uses ``p`` like every other loss.

    ``soft_label`` ([B] p = P(chosen is better), the data's ``p_chosen``) goes to losses whose registry entry
    ``reads_soft_labels``; for any other loss it is an error (``label_error``), never ignored.
    """
    spec = get_loss(loss) if isinstance(loss, str) else loss
    if soft_label is not None and (why := label_error(spec, p_chosen=True, margin=False)):
        raise ValueError(why)
    unread = sorted(set(params) - set(spec.reads) - {"beta"})
    if unread:
        raise ValueError(f"loss {spec.name!r} does not read {unread}; it reads beta, {', '.join(spec.reads)}")
    beta = float(params.get("beta", spec.default_beta))
    if reference_free and not spec.reference_free:
        p = p.reference_free()
    kw = spec.kwargs(params) | ({"soft_label": soft_label} if soft_label is not None else {})
    extras: dict[str, torch.Tensor] = {}
    if spec.token_level:
        if tokens is None:
            raise ValueError(f"loss {spec.name!r} is token-level: it needs TokenTerms (token log-probs and rewards)")
        # Build the parts once: the loss and the treg/* metrics (detached) both come from them.
        parts = spec.parts(p, tokens, beta=beta, **kw)
        losses = parts.total(float(params.get("alpha", DEFAULT_ALPHA)))
        extras = treg_metrics(parts, tokens)
    else:
        losses = spec.fn(p, beta=beta, **kw)
    with torch.no_grad():
        if spec.simpo_rewards:
            rc, rr = simpo_rewards(p, beta)
        else:
            rc, rr = beta * (p.chosen - p.ref_chosen), beta * (p.rejected - p.ref_rejected)
    return ObjectiveOut(losses, rc.detach(), rr.detach(), -p.chosen.sum(), extras)
