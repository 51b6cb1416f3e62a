"""SequenceScorer: the one module that turns (ids, masks) into completion log-probs for training, the
reference precompute, evaluation and decoding-time scoring (docs/conventions.md R6.1).

Why a module: accelerate/DDP must wrap the thing whose forward runs, so gradient sync hooks fire.
Why hidden states first: the LM head is applied only at the positions that score completion tokens,
so prompt and pad positions never pay for the vocabulary projection, and the fp32 log-softmax runs
chunk-wise over those rows only (never full-vocab fp32 logits for the whole batch, R1.3).
"""

from __future__ import annotations

import torch
from torch import nn

from alignlab.ops.logprobs import SeqLogps, completion_logps, gather_token_logps


def fast_path_ok(model) -> bool:
    """True when logits are exactly the LM head applied to the decoder's final hidden states, so callers may
    run the decoder and project only the positions they need."""
    cfg = getattr(model, "config", None)
    # Heads that post-process logits (Gemma-2 soft-capping, Cohere logit_scale) take the generic path.
    special = getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None)
    return not special and hasattr(model, "get_decoder") and model.get_output_embeddings() is not None


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Explicit positions so left/right padding give identical results (R4.5)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class SequenceScorer(nn.Module):
    """Wraps a causal LM; forward returns summed completion log-probs (and optionally per-token ones).

    temperature: logits are divided by it before the log-softmax, so scores match the sampling
    distribution they are compared with (R6.2). 1.0 for training losses.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.fast = fast_path_ok(model)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        return_tokens: bool = False,
    ) -> SeqLogps:
        pos = position_ids_from_mask(attention_mask)
        if not self.fast:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
            return completion_logps(logits / self.temperature, input_ids, completion_mask, return_tokens)
        hidden = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=pos
        ).last_hidden_state  # [N, T, H]
        score_mask = completion_mask[:, 1:].bool()  # label shift: position t-1 scores token t
        rows = hidden[:, :-1][score_mask]  # [M, H] only positions that predict a completion token
        logits = self.model.get_output_embeddings()(rows)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        tok_flat = gather_token_logps(logits, input_ids[:, 1:][score_mask])  # [M] fp32
        n = input_ids.shape[0]
        row_id = torch.arange(n, device=input_ids.device).unsqueeze(1).expand_as(score_mask)[score_mask]
        sums = torch.zeros(n, dtype=tok_flat.dtype, device=tok_flat.device).index_add(0, row_id, tok_flat)
        tokens = None
        if return_tokens:
            tokens = torch.zeros(score_mask.shape, dtype=tok_flat.dtype, device=tok_flat.device)
            tokens = tokens.masked_scatter(score_mask, tok_flat)
        return SeqLogps(sum=sums, count=score_mask.sum(-1), token=tokens)
