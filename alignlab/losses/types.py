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
