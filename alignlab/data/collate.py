"""Batching of tokenized pairs into padded tensors (right padding, dynamic length)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.tokenize import TokenizedPair


@dataclass
class PairBatch:
    """B preference pairs as 2B sequences: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected.

    input_ids:       [2B, T] int64, right-padded with pad_id to the longest row of this batch.
    attention_mask:  [2B, T] int64, 1 on real tokens.
    completion_mask: [2B, T] bool, True where the token at that position is a completion token (scored).
    ref_logps:       [2B] float32 summed reference log-probs (None until attached).
    index:           [B] int64 dataset indices of the pairs (names the batch in errors, keys caches).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    index: torch.Tensor
    ref_logps: torch.Tensor | None = None

    @property
    def n_pairs(self) -> int:
        return int(self.index.shape[0])

    def to(self, device) -> "PairBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PairBatch(mv(self.input_ids), mv(self.attention_mask), mv(self.completion_mask), mv(self.index), mv(self.ref_logps))


def pad_sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad prompt+completion rows; returns (input_ids, attention_mask, completion_mask)."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    T = max(lengths)
    n = len(prompts)
    ids = torch.full((n, T), pad_id, dtype=torch.long)
    attn = torch.zeros((n, T), dtype=torch.long)
    comp = torch.zeros((n, T), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attn[i, : len(p) + len(c)] = 1
        comp[i, len(p) : len(p) + len(c)] = True
    return ids, attn, comp


def collate_pairs(pairs: list[TokenizedPair], indices: list[int], pad_id: int,
                  ref_logps: torch.Tensor | None = None) -> PairBatch:
    """ref_logps, if given, is the [N, 2] (chosen, rejected) table for the whole dataset."""
    prompts = [p.prompt_ids for p in pairs] * 2
    comps = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    ids, attn, comp = pad_sequences(prompts, comps, pad_id)
    index = torch.tensor(indices, dtype=torch.long)
    ref = None if ref_logps is None else torch.cat([ref_logps[index, 0], ref_logps[index, 1]]).float()
    return PairBatch(ids, attn, comp, index, ref)
