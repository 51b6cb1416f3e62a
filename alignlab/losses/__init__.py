"""Preference losses: pure functions over per-sequence log-probs, chosen by name through one registry."""

from alignlab.losses.registry import LOSS_KEYS, LOSSES, TREG_KEYS, LossSpec, get_loss
from alignlab.losses.types import PairLogps, TokenTerms

__all__ = ["LOSSES", "LOSS_KEYS", "TREG_KEYS", "LossSpec", "PairLogps", "TokenTerms", "get_loss"]
