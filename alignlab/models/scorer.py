"""SequenceScorer: the one module that turns (ids, masks) into completion log-probs for training, the
reference precompute, evaluation and decoding-time scoring (docs/conventions.md R6.1).

Why a module: accelerate/DDP must wrap the thing whose forward runs, so gradient sync hooks fire.
Why hidden states first: the LM head is applied only at the positions that score completion tokens,
so prompt and pad positions never pay for the vocabulary projection, and the fp32 log-softmax runs
chunk-wise over those rows only (never full-vocab fp32 logits for the whole batch, R1.3).
Packed forward (docs/conventions.md L2.10): where the model supports it, a pair runs as one sequence
[prompt, chosen, rejected] with a 4-D mask and restarted positions (alignlab.ops.packing), the prompt computed once;
the results equal the two-row layout's within fp32 rounding.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from alignlab.ops.logprobs import SeqLogps, completion_logps, gather_token_logps
from alignlab.ops.packing import PackedBatch, PackSpec

# TrainConfig.packing: how a pair's two sequences are run (docs/conventions.md L2.10).
PACKING = ("shared_prompt", "dense", "off")


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


def packing_support(model) -> str | None:
    """None when the packed shared-prompt forward applies to ``model``, else the reason. It applies to a decoder-only
    LM whose decoder builds its mask with transformers' ``create_causal_mask`` (which passes a 4-D mask through
    unchanged), with sdpa or eager attention, full attention in every layer and positions taken from
    ``position_ids`` (rotary or learned; not ALiBi). tests/test_packed_forward.py checks the numbers."""
    if not fast_path_ok(model):
        return "the LM head post-processes logits (or there is no separate decoder)"
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        return "encoder-decoder model"
    from transformers import masking_utils

    decoder_module = sys.modules.get(type(model.get_decoder()).__module__)
    if getattr(decoder_module, "create_causal_mask", None) is not masking_utils.create_causal_mask:
        return f"{type(model.get_decoder()).__name__} does not build its mask with create_causal_mask"
    impl = getattr(cfg, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} (a custom 4-D mask needs sdpa or eager)"
    types = getattr(cfg, "layer_types", None) or []
    if getattr(cfg, "sliding_window", None) or any(t != "full_attention" for t in types):
        return "sliding-window or other non-full attention layers (their mask would be bypassed)"
    if getattr(cfg, "alibi", False) or getattr(cfg, "model_type", "") in ("bloom", "mpt"):
        return "ALiBi position bias (built from a 2-D mask)"
    return None


def attention_cost(cfg) -> float:
    """Multiply-adds of one (query, key) pair of attention (QK and AV, every head) over those of one position's
    linear layers (q, k, v, o, a gated MLP), per layer: sizes the rows of ``packing=dense``. 0 if unknown."""
    try:
        h, nh = cfg.hidden_size, cfg.num_attention_heads
        nkv = getattr(cfg, "num_key_value_heads", None) or nh
        hd = getattr(cfg, "head_dim", None) or h // nh
        inter = getattr(cfg, "intermediate_size", None) or 4 * h
    except (AttributeError, TypeError, ZeroDivisionError):
        return 0.0
    return 2 * nh * hd / (2 * h * nh * hd + 2 * h * nkv * hd + 3 * h * inter)


class SequenceScorer(nn.Module):
    """Wraps a causal LM; forward returns summed completion log-probs (and optionally per-token ones).

    temperature: logits are divided by it before the log-softmax, so scores match the sampling
    distribution they are compared with (R6.2). 1.0 for training losses.
    packing: one of PACKING. Callers that have pairs (training, the reference precompute, T-REG scoring) ask
    ``pack_spec`` and, when it is not None, pass ``packed=`` (alignlab.ops.packing) next to the two-row tensors; the
    result is the two-row result within fp32 rounding (L2.10). ``packing_note`` says which forward runs and why.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0, packing: str = "shared_prompt"):
        super().__init__()
        if packing not in PACKING:
            raise ValueError(f"packing must be one of {PACKING}, got {packing!r}")
        self.model = model
        self.temperature = temperature
        self.fast = fast_path_ok(model)
        self.packing = packing
        self._spec: PackSpec | None = None
        self._resolved = False
        self.packing_note = ""

    @property
    def pack_spec(self) -> PackSpec | None:
        """How to pack pairs for this model, or None for the two-row layout (packing off, or the model does not
        support it: ``packing_note`` says why). Decided once, on first use (packing_support)."""
        if not self._resolved:
            self._resolved = True
            self._spec, self.packing_note = self._resolve_packing()
        return self._spec

    def _resolve_packing(self) -> tuple[PackSpec | None, str]:
        two_rows = "two rows per pair (prompt computed twice)"
        if self.packing == "off":
            return None, f"{two_rows}: packing=off"
        why = packing_support(self.model)
        if why is not None:
            return None, f"{two_rows}: {why}"
        cfg = self.model.config
        spec = PackSpec("dense" if self.packing == "dense" else "group", attention_cost(cfg))
        rows = "several pairs per row" if spec.rows == "dense" else "one row per pair"
        return spec, f"packed: prompt computed once per pair, {rows} ({cfg._attn_implementation}, 4-D mask)"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_mask: torch.Tensor,
        return_tokens: bool = False,
        packed: PackedBatch | None = None,
    ) -> SeqLogps:
        """Rows of (input_ids, attention_mask, completion_mask) as in alignlab.data.collate; with ``packed`` (the
        same sequences packed, alignlab.ops.packing) and packing in effect, one packed forward gives the same
        SeqLogps (``token`` laid out like completion_mask[:, 1:])."""
        if packed is not None and self.pack_spec is not None:
            return self._packed(packed, completion_mask, return_tokens)
        return self._two_row(input_ids, attention_mask, completion_mask, return_tokens)

    def _two_row(self, input_ids, attention_mask, completion_mask, return_tokens: bool) -> SeqLogps:
        pos = position_ids_from_mask(attention_mask)
        if not self.fast:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).logits
            return completion_logps(logits / self.temperature, input_ids, completion_mask, return_tokens)
        hidden = self.model.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=pos
        ).last_hidden_state  # [N, T, H]
        score_mask = completion_mask[:, 1:].bool()  # label shift: position t-1 scores token t
        rows = hidden[:, :-1][score_mask]  # [M, H] only positions that predict a completion token
        tok_flat = self._token_logps(rows, input_ids[:, 1:][score_mask])  # [M] fp32
        n = input_ids.shape[0]
        row_id = torch.arange(n, device=input_ids.device).unsqueeze(1).expand_as(score_mask)[score_mask]
        sums = torch.zeros(n, dtype=tok_flat.dtype, device=tok_flat.device).index_add(0, row_id, tok_flat)
        tokens = None
        if return_tokens:
            tokens = torch.zeros(score_mask.shape, dtype=tok_flat.dtype, device=tok_flat.device)
            tokens = tokens.masked_scatter(score_mask, tok_flat)
        return SeqLogps(sum=sums, count=score_mask.sum(-1), token=tokens)

    def _token_logps(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(rows)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return gather_token_logps(logits, targets)

    def _packed(self, pk: PackedBatch, completion_mask, return_tokens: bool) -> SeqLogps:
        sdpa = self.model.config._attn_implementation == "sdpa"
        dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        hidden = self.model.get_decoder()(
            input_ids=pk.input_ids,
            attention_mask=pk.attention_mask(None if sdpa else dtype),
            position_ids=pk.position_ids,
            use_cache=False,
        ).last_hidden_state  # [R, L, H]
        rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pk.pred_index)  # [M, H]
        tok_flat = self._token_logps(rows, pk.targets)  # [M] fp32, sequence by sequence
        n = pk.n_seqs
        sums = torch.zeros(n, dtype=tok_flat.dtype, device=tok_flat.device).index_add(0, pk.seq_index, tok_flat)
        tokens = None
        if return_tokens:
            score_mask = completion_mask[:, 1:].bool()
            if score_mask.shape[0] != n or int(score_mask.sum()) != tok_flat.numel():
                raise ValueError("packed batch and completion_mask describe different sequences")
            tokens = torch.zeros(score_mask.shape, dtype=tok_flat.dtype, device=tok_flat.device)
            tokens = tokens.masked_scatter(score_mask, tok_flat)
        return SeqLogps(sum=sums, count=torch.bincount(pk.seq_index, minlength=n), token=tokens)
