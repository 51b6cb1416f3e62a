"""Cached, batched stepping of a causal LM: the only place decoding loops touch a model (docs/conventions.md R2.4, R11).

Rows are left-padded; every call passes an explicit attention mask and explicit position ids (the number
of real tokens before each position), so a row's logits do not depend on its padding or its batch.
Prefix KV caches are never recomputed: ``fork`` repeats a state's cache for k candidates / k·M rollouts
(``batch_repeat_interleave``), ``select`` keeps rows (``batch_select_indices``). Both work on a shallow copy
of the cache whose layer objects are new, so the source state stays valid: HF's dynamic layers replace
their key/value tensors on update (torch.cat) rather than writing into them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from alignlab.data.collate import left_pad
from alignlab.models.scorer import fast_path_ok, position_ids_from_mask


@dataclass
class LMState:
    """Decoding state of R rows.

    cache:    HF DynamicCache, keys/values [R, heads, L, d] (L includes left padding)
    attn:     [R, L] long, 1 = real token
    next_pos: [R] long, position id the next fed token gets (= real tokens so far)
    logits:   [R, V] fp32 next-token logits after the last fed token
    hidden:   [R, H] final-layer (post-norm) hidden state at the last fed token, when requested
    """

    cache: DynamicCache
    attn: torch.Tensor
    next_pos: torch.Tensor
    logits: torch.Tensor
    hidden: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return self.attn.shape[0]


class _Buffer:
    """Key/value storage with spare capacity, shared by shallow copies of a layer. ``frontier`` is the
    longest prefix written; only a layer whose length equals it may append in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, frontier: int):
        self.keys, self.values, self.frontier = keys, values, frontier


class GrowLayer(DynamicLayer):
    """A DynamicLayer that appends into preallocated capacity instead of ``torch.cat``-ing the whole cache
    every step (HF's dynamic layer copies all keys/values of all rows per token: ~10-15% of a batched
    rollout step on CPU). Copy-on-write: a forked or selected layer that shares a buffer but is not at its
    frontier reallocates before writing, so shallow-copied states never see each other's tokens."""

    reserve = 32  # extra positions allocated per growth (amortises reallocation)

    def __init__(self):
        super().__init__()
        self._buf: _Buffer | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, q = self.get_seq_length(), key_states.shape[-2]
        buf = self._buf
        if buf is None or buf.frontier != n or n + q > buf.keys.shape[-2] or buf.keys.shape[0] != key_states.shape[0]:
            R, h, _, d = key_states.shape
            cap = n + q + max(self.reserve, (n + q) // 4)
            kb = key_states.new_empty((R, h, cap, d))
            vb = value_states.new_empty((R, h, cap, value_states.shape[-1]))
            if n:
                kb[..., :n, :] = self.keys
                vb[..., :n, :] = self.values
            buf = self._buf = _Buffer(kb, vb, n)
        buf.keys[..., n : n + q, :] = key_states
        buf.values[..., n : n + q, :] = value_states
        buf.frontier = n + q
        self.keys, self.values = buf.keys[..., : n + q, :], buf.values[..., : n + q, :]
        return self.keys, self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._buf = None  # new, exact-size tensors: the next append reallocates

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._buf = None

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._buf = None


def new_cache(config) -> DynamicCache:
    """A DynamicCache whose full-attention layers append in place (sliding-window layers are kept as HF's)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _copy_cache(cache: DynamicCache) -> DynamicCache:
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    return new


class LM:
    """A causal LM in eval mode with cached stepping. ``calls`` counts forward invocations (for tests)."""

    def __init__(self, model: nn.Module, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.fast = fast_path_ok(model)
        self.device = next(model.parameters()).device
        self.calls = 0
        if self.fast:
            self.decoder = model.get_decoder()
            self.head = model.get_output_embeddings()

    @property
    def vocab_size(self) -> int:
        emb = self.model.get_output_embeddings()
        return emb.weight.shape[0] if emb is not None else self.model.config.vocab_size

    def _project(self, h: torch.Tensor) -> torch.Tensor:
        head = self.head
        if type(head) is nn.Linear and h.device.type == "cpu" and h.shape[0] <= 64:
            # (W @ hᵀ)ᵀ instead of h @ Wᵀ: on CPU, MKL's GEMM with few rows repacks the whole vocabulary
            # matrix per call (2 rows cost 2x one row); the transposed product streams it once.
            out = (head.weight @ h.T).T
            return out + head.bias if head.bias is not None else out
        return head(h)

    @torch.no_grad()
    def _forward(
        self, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache: DynamicCache, want_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        ids, attn, pos = ids.to(self.device), attn.to(self.device), pos.to(self.device)
        if self.fast:
            # The vocabulary projection runs on the last position only (prefill never pays for it).
            h = self.decoder(
                input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=cache, use_cache=True
            ).last_hidden_state[:, -1]
            return self._project(h).float(), (h.float() if want_hidden else None)
        if want_hidden:
            raise ValueError(
                f"{type(self.model).__name__} post-processes its logits; hidden states for a prefix "
                "scorer need a plain decoder + LM head"
            )
        out = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float(), None

    def prefill(self, rows: list[list[int]], want_hidden: bool = False) -> LMState:
        ids, attn = left_pad(rows, self.pad_id)
        cache = new_cache(self.model.config)
        logits, hidden = self._forward(ids, attn, position_ids_from_mask(attn), cache, want_hidden)
        return LMState(cache, attn.to(self.device), attn.sum(-1).to(self.device), logits, hidden)

    def step(self, st: LMState, tokens: torch.Tensor, want_hidden: bool = False) -> LMState:
        """Feed one token per row. ``st`` is consumed (its cache is extended in place)."""
        tokens = tokens.to(self.device).view(-1, 1)
        attn = torch.cat([st.attn, torch.ones_like(st.attn[:, :1])], dim=1)
        logits, hidden = self._forward(tokens, attn, st.next_pos.view(-1, 1), st.cache, want_hidden)
        return LMState(st.cache, attn, st.next_pos + 1, logits, hidden)

    def fork(self, st: LMState, repeats: int) -> LMState:
        """Each row repeated ``repeats`` times (row i -> rows i·r .. i·r+r−1); the prefix is copied, not recomputed."""
        cache = _copy_cache(st.cache)
        if repeats != 1:
            cache.batch_repeat_interleave(repeats)
        rep = lambda t: None if t is None else t.repeat_interleave(repeats, dim=0)  # noqa: E731
        return LMState(cache, rep(st.attn), rep(st.next_pos), rep(st.logits), rep(st.hidden))

    def select(self, st: LMState, idx: torch.Tensor | list[int]) -> LMState:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        cache = _copy_cache(st.cache)
        cache.batch_select_indices(idx)
        sel = lambda t: None if t is None else t[idx]  # noqa: E731
        return LMState(cache, st.attn[idx], st.next_pos[idx], st.logits[idx], sel(st.hidden))

    @torch.no_grad()
    def hidden_states(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states at every position, no cache: ([R, T, H] fp32, attn [R, T]); rows left-padded."""
        if not self.fast:
            raise ValueError("prefix scorers need a model with a plain decoder + LM head")
        ids, attn = left_pad(rows, self.pad_id)
        self.calls += 1
        h = self.decoder(
            input_ids=ids.to(self.device),
            attention_mask=attn.to(self.device),
            position_ids=position_ids_from_mask(attn).to(self.device),
            use_cache=False,
        ).last_hidden_state
        return h.float(), attn
