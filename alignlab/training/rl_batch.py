"""The rollout batch of online RL (``alignlab rl``) and the forward passes that score it.

A rollout batch is ``B = prompts x group_size`` rows, prompt-major: rows ``g*k .. g*k+k-1`` share prompt ``g``
(the grouping RLOO's leave-one-out baseline and GRPO's group statistics need). Each row is the prompt, left-padded
to the batch's longest prompt ``P``, followed by the response, right-padded to ``T``:

    input_ids      [B, P+T]  long   pad | prompt | response | pad
    attention_mask [B, P+T]  long   1 on prompt and response tokens (the response's EOS included)
    response_mask  [B, T]    bool   True on response tokens: up to and including the first stop token

Positions are explicit (``cumsum(attention_mask) - 1``), so a row's log-probs do not depend on how much padding
its batch needed (docs/rlhf.md, "Step-0 invariants"). Response token ``t`` (column ``P + t``) is scored by the
logits at column ``P + t - 1``; the value of the state before it, V_t, is read at the same column (TRL's
convention). Everything per token is ``[B, T]`` fp32 and exactly 0 outside ``response_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from alignlab.models.reward_model import HEAD, base_transformers_model
from alignlab.models.scorer import SequenceScorer, position_ids_from_mask


@dataclass
class RolloutBatch:
    """One batch of sampled responses and what was measured on them (shapes in the module docstring).

    prompts / responses: the text a reward sees (no template markup). finished: the response ended on a stop
    token (False: cut by max_new_tokens). scores: the reward of each response after the missing-EOS rule [B].
    sampler_logp: the rollout engine's own log-probs of the sampled tokens at its temperature [B, T], or None
    when the engine gives none. The scoring pass fills old_logp (the policy that sampled, scored by the trainer),
    ref_logp (the reference), init_logp (the initial policy; equals ref_logp unless the reference moves) and, for
    PPO, values [B, T].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_len: int
    prompts: list[str]
    responses: list[str]
    finished: torch.Tensor
    scores: torch.Tensor
    group_size: int
    sampler_logp: torch.Tensor | None = None
    old_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    init_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    extras: dict = field(default_factory=dict)  # per-row tensors of derived quantities (advantages, returns)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def to(self, device) -> "RolloutBatch":
        """The batch with every tensor on ``device`` (a new object; lists and ints shared)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in out.items():
            if isinstance(v, torch.Tensor):
                out[k] = v.to(device)
            elif isinstance(v, dict):
                out[k] = {n: t.to(device) for n, t in v.items()}
        return RolloutBatch(**out)

    def rows(self, index: torch.Tensor | list[int]) -> "RolloutBatch":
        """The sub-batch of rows ``index`` (tensors indexed, lists picked; group_size kept as a label)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == len(self):
                out[f.name] = v[idx]
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in idx.tolist()]
            elif isinstance(v, dict):
                out[f.name] = {k: t[idx] for k, t in v.items()}
            else:
                out[f.name] = v
        return RolloutBatch(**out)


def response_logps(scorer: SequenceScorer, batch: RolloutBatch) -> torch.Tensor:
    """Per-token log-probs [B, T] of the response tokens under ``scorer`` (its temperature divides the logits:
    the same T as sampling, docs/rlhf.md). Differentiable; 0 outside the response mask."""
    P = batch.prompt_len
    completion = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    completion[:, P:] = batch.response_mask
    out = scorer(batch.input_ids, batch.attention_mask, completion, return_tokens=True)
    return out.token[:, P - 1 :]  # token[:, j] scores input column j + 1


class ValueScorer(nn.Module):
    """Wraps a one-label sequence-classification model (the value model); forward returns its head at every
    position [B, L] in fp32, not pooled. A module so that accelerate/DDP wraps what runs (like SequenceScorer)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hf = base_transformers_model(self.model)  # through a PEFT wrapper (its adapters are injected in place)
        decoder, head = getattr(hf, hf.base_model_prefix), getattr(hf, HEAD)
        pos = position_ids_from_mask(attention_mask)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state
        return head(hidden).squeeze(-1).float()


def token_values(value: ValueScorer, batch: RolloutBatch) -> torch.Tensor:
    """V_t [B, T]: the value of the state before each response token (column ``P + t - 1``); 0 outside the mask."""
    v = value(batch.input_ids, batch.attention_mask)[:, batch.prompt_len - 1 : -1]
    return torch.where(batch.response_mask, v, torch.zeros((), dtype=v.dtype, device=v.device))
