"""Typed inputs of the preference losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PairLogps:
    """Per-pair sequence log-probs, all shape [B].

    chosen / rejected:          policy log pi_theta(y|x), **summed** over completion tokens.
    ref_chosen / ref_rejected:  reference log-probs, same convention (None for reference-free losses).
    chosen_len / rejected_len:  scored completion tokens |y| (int or float tensor).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None

    def reference_free(self) -> "PairLogps":
        """Uniform reference (eric-mitchell ``reference_free``): ref terms drop out of h."""
        z = torch.zeros_like(self.chosen)
        return PairLogps(self.chosen, self.rejected, self.chosen_len, self.rejected_len, z, z)


@dataclass
class TokenTerms:
    """Per-token inputs of the token-level losses (T-REG). Rows as in PairBatch: [0, B) chosen, [B, 2B) rejected.

    logps: [2B, T-1] policy log pi_theta(y_t | x, y_<t), aligned with ``input_ids[:, 1:]``, 0 where masked
           (differentiable; SeqLogps.token of the same forward that gives PairLogps).
    mask:  [2B, T-1] bool, True at the scored response tokens (``completion_mask[:, 1:]``).
    rhat:  [2B, T-1] constant token rewards r̂_t in (-0.5, 0.5), 0 where masked (no gradient).

    Shapes must match exactly: a reward array is never broadcast onto a differently shaped mask
    (docs/conventions.md T8.10).
    """

    logps: torch.Tensor
    mask: torch.Tensor
    rhat: torch.Tensor

    def __post_init__(self) -> None:
        if not (self.logps.shape == self.mask.shape == self.rhat.shape):
            raise ValueError(
                f"TokenTerms: logps {tuple(self.logps.shape)}, mask {tuple(self.mask.shape)} and rhat "
                f"{tuple(self.rhat.shape)} must have identical shapes (never broadcast)"
            )
        if self.logps.dim() != 2 or self.logps.shape[0] % 2:
            raise ValueError(f"TokenTerms: expected [2B, T-1] tensors, got {tuple(self.logps.shape)}")

    @property
    def n_pairs(self) -> int:
        return self.logps.shape[0] // 2
