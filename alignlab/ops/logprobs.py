"""Per-token and per-sequence log-probabilities: the one implementation every recipe uses.

Convention (docs/conventions.md L2): logits at position t-1 score token t (label shift);
prompt and pad positions contribute exactly 0; the sequence log-prob is the **sum** over completion
tokens; the log-softmax is always computed in fp32, chunk by chunk, so full-vocabulary fp32 logits
for the whole batch are never materialised (R1.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SeqLogps:
    """Per-sequence log-prob summary.

    sum:   [N] float32, summed completion log-probs (prompt/pad masked to 0).
    count: [N] int64, number of scored completion tokens |y| (after truncation, incl. EOS).
    token: [N, T-1] float32 or None, per-token log-probs aligned with ``labels[:, 1:]``
           (0 where masked); only filled when requested.
    """

    sum: torch.Tensor
    count: torch.Tensor
    token: torch.Tensor | None = None

    @property
    def mean(self) -> torch.Tensor:
        """Per-token mean log-prob; rows with zero tokens give 0, never NaN (R4.4)."""
        return self.sum / self.count.clamp(min=1).to(self.sum.dtype)


def gather_token_logps(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 1024) -> torch.Tensor:
    """log softmax(logits)[target] in fp32 for already-aligned logits [..., V] and targets [...].

    Processes ``chunk_rows`` rows at a time: each chunk is upcast to fp32, its log-sum-exp taken and the
    target logit gathered, so peak extra memory is chunk_rows x V floats instead of the whole batch.
    Differentiable.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    tgt = targets.reshape(-1)
    if flat.shape[0] <= chunk_rows:
        f = flat.float()
        out = f.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(f, dim=-1)
        return out.reshape(targets.shape)
    pieces = []
    for start in range(0, flat.shape[0], chunk_rows):
        f = flat[start : start + chunk_rows].float()
        t = tgt[start : start + chunk_rows]
        pieces.append(f.gather(-1, t.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(f, dim=-1))
    return torch.cat(pieces).reshape(targets.shape)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last dim where mask is True; masked entries contribute exactly 0 (no NaN leaks)."""
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(-1)


def completion_logps(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    return_tokens: bool = False,
) -> SeqLogps:
    """Summed completion log-probs from full-sequence logits.

    logits:          [N, T, V] (any dtype; upcast to fp32 chunk-wise)
    input_ids:       [N, T] token ids
    completion_mask: [N, T] bool, True where the token *at that position* is a completion token
                     (prompt, pad: False). Position 0 is never scored (nothing predicts it).
    Returns SeqLogps with sum [N], count [N] and optionally token [N, T-1].
    """
    targets = input_ids[:, 1:]
    mask = completion_mask[:, 1:].bool()
    tok = gather_token_logps(logits[:, :-1], targets)
    tok = torch.where(mask, tok, torch.zeros((), dtype=tok.dtype, device=tok.device))
    return SeqLogps(sum=tok.sum(-1), count=mask.sum(-1), token=tok if return_tokens else None)
