"""Loss registry: the recipe picks a loss by name at the edge; the functions themselves are pure."""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from alignlab.losses import preference, treg
from alignlab.losses.types import PairLogps, TokenTerms

LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "dpo": preference.dpo,
    "dpo_norm": preference.dpo_norm,
    "cdpo": preference.cdpo,
    "ipo": preference.ipo,
    "slic": preference.slic,
    "hinge": preference.slic,
    "rdpo": preference.rdpo,
    "simpo": preference.simpo,
    # token-level (T-REG, specs/treg.md): take (PairLogps, TokenTerms)
    "dpo_treg": treg.dpo_treg,
    "simpo_treg": treg.simpo_treg,
}
REFERENCE_FREE = {"simpo", "simpo_treg"}
# Losses that also need per-token policy log-probs and token rewards (TokenTerms); only these make the
# scorer return per-token log-probs, so every other loss runs exactly as before.
TOKEN_LEVEL = {"dpo_treg", "simpo_treg"}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]


def loss_kwargs(name: str, params: dict) -> dict:
    """The subset of ``params`` that the named loss accepts (so one flat config serves every loss)."""
    sig = inspect.signature(get_loss(name))
    return {k: v for k, v in params.items() if k in sig.parameters and k not in ("p", "t")}


__all__ = ["LOSSES", "REFERENCE_FREE", "TOKEN_LEVEL", "PairLogps", "TokenTerms", "get_loss", "loss_kwargs",
           "preference", "treg"]
