"""Batching of tokenized pairs into padded tensors (right padding, dynamic length)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.tokenize import TokenizedPair
from alignlab.ops.packing import PackedBatch, PackSpec, pack_pairs


@dataclass
class PairBatch:
    """B preference pairs as 2B sequences: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected.

    input_ids:       [2B, T] int64, right-padded with pad_id to the longest row of this batch.
    attention_mask:  [2B, T] int64, 1 on real tokens.
    completion_mask: [2B, T] bool, True where the token at that position is a completion token (scored).
    ref_logps:       [2B] float32 summed reference log-probs (None until attached).
    index:           [B] int64 dataset indices of the pairs (names the batch in errors, keys caches).
    token_rewards:   [2B, T-1] float32 T-REG token rewards aligned with ``input_ids[:, 1:]`` like
                     SeqLogps.token (0 at prompt/pad positions); None unless the loss is token-level.
    packed:          the same 2B sequences as one row per pair [prompt, chosen, rejected] (or several pairs per
                     row), alignlab.ops.packing; None for the two-row forward. The two-row tensors stay: they lay
                     out the per-token outputs (token log-probs, token rewards) either way.
    p_chosen:        [B] float32 soft labels P(chosen is better) of the pairs, or None (``pair_labels``).
    margin:          [B] float32 per-pair Bradley–Terry margins, or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    index: torch.Tensor
    ref_logps: torch.Tensor | None = None
    token_rewards: torch.Tensor | None = None
    packed: PackedBatch | None = None
    p_chosen: torch.Tensor | None = None
    margin: torch.Tensor | None = None

    @property
    def n_pairs(self) -> int:
        return int(self.index.shape[0])

    def forward_positions(self) -> tuple[int, int]:
        """(positions the forward computes, of which padding): the packed rows if packed, else the two rows."""
        if self.packed is not None:
            return self.packed.positions, self.packed.positions - self.packed.real_positions
        return self.input_ids.numel(), self.input_ids.numel() - int(self.attention_mask.sum())

    def to(self, device) -> "PairBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PairBatch(
            mv(self.input_ids),
            mv(self.attention_mask),
            mv(self.completion_mask),
            mv(self.index),
            mv(self.ref_logps),
            mv(self.token_rewards),
            mv(self.packed),
            mv(self.p_chosen),
            mv(self.margin),
        )


def pair_labels(pairs: list[TokenizedPair]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """([B] p_chosen, [B] margin) of ``pairs`` as float32 tensors; each None when no pair carries it. Some pairs
    with a field and some without is an error naming the first without (the loader's rule, docs/data.md)."""
    out = []
    for name in ("p_chosen", "margin"):
        values = [getattr(p, name) for p in pairs]
        if all(v is None for v in values):
            out.append(None)
            continue
        missing = next((p.source for p, v in zip(pairs, values) if v is None), None)
        if missing is not None:
            raise ValueError(f"{missing}: no {name} while other pairs of the batch have one (docs/data.md)")
        out.append(torch.tensor(values, dtype=torch.float32))
    return out[0], out[1]


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


class TokenRewardAlignmentError(ValueError):
    """Token rewards that do not line up one-to-one with a response's token ids (never broadcast or padded)."""


def token_reward_rows(
    pairs: list[TokenizedPair], rewards: list[tuple[list[float], list[float]]], T: int
) -> torch.Tensor:
    """[2B, T-1] token rewards placed where SeqLogps.token scores each response token (label shift: the token at
    position i of input_ids is scored at i-1). ``rewards[k]`` = (chosen r̂, rejected r̂) of ``pairs[k]``."""
    out = torch.zeros(2 * len(pairs), T - 1)
    B = len(pairs)
    for k, (p, (rc, rr)) in enumerate(zip(pairs, rewards)):
        for row, ids, r in ((k, p.chosen_ids, rc), (B + k, p.rejected_ids, rr)):
            if len(r) != len(ids):
                raise TokenRewardAlignmentError(
                    f"{p.source}: {len(r)} token rewards for a response of {len(ids)} tokens; token rewards must be "
                    "computed on exactly the training ids (recompute them after changing tokenizer/max_length)"
                )
            if not p.prompt_ids:
                raise TokenRewardAlignmentError(f"{p.source}: empty prompt; the first response token cannot be scored")
            start = len(p.prompt_ids) - 1
            out[row, start : start + len(r)] = torch.tensor(r, dtype=torch.float32)
    return out


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation; returns (input_ids [N, T], attention_mask [N, T])."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :] = torch.tensor(r, dtype=torch.long)
        attn[i, T - len(r) :] = 1
    return ids, attn


def collate_pairs(
    pairs: list[TokenizedPair],
    indices: list[int],
    pad_id: int,
    ref_logps: torch.Tensor | None = None,
    token_rewards: list[tuple[list[float], list[float]]] | None = None,
    pack: PackSpec | None = None,
) -> PairBatch:
    """ref_logps, if given, is the [N, 2] (chosen, rejected) table for the whole dataset; token_rewards, if
    given, the per-pair (chosen, rejected) token-reward lists of the whole dataset (indexed like ref_logps);
    pack, if given (SequenceScorer.pack_spec), adds the packed layout of the same pairs."""
    prompts = [p.prompt_ids for p in pairs] * 2
    comps = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    ids, attn, comp = pad_sequences(prompts, comps, pad_id)
    index = torch.tensor(indices, dtype=torch.long)
    ref = None if ref_logps is None else torch.cat([ref_logps[index, 0], ref_logps[index, 1]]).float()
    rhat = (
        None if token_rewards is None else token_reward_rows(pairs, [token_rewards[i] for i in indices], ids.shape[1])
    )
    packed = None
    if pack is not None:
        packed = pack_pairs(
            [p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs], [p.rejected_ids for p in pairs], pad_id, pack
        )
    return PairBatch(ids, attn, comp, index, ref, rhat, packed, *pair_labels(pairs))
