"""Tensor ops shared by every loss and recipe (torch only, no model code)."""

from alignlab.ops.logprobs import SeqLogps, completion_logps, gather_token_logps, masked_sum

__all__ = ["completion_logps", "gather_token_logps", "masked_sum", "SeqLogps"]
