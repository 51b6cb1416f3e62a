"""Scalar reward models on a causal-LM backbone: build, score (pooling at the last real token), LoRA, save.

A reward model is ``AutoModelForSequenceClassification`` with ``num_labels=1`` built from any causal-LM checkpoint
(hub id, local dir or built-in alias): the backbone's weights, and a new linear ``score`` head (hidden -> 1, no bias)
initialised by transformers. Its input is the chat-templated prompt (generation prompt on) followed by the response
ids and exactly one EOS (alignlab.data.tokenize), and the reward is the head's output at the **last real token**,
i.e. that EOS.

Pooling (``reward_forward``) finds that token with an explicit index from the attention mask (the largest position
whose mask is 1), and gives every real token the position id it would have unpadded (cumulative sum of the mask),
so left padding, right padding and no padding give the same reward. It never looks at position −1 and never
compares ids with ``pad_token_id``.

Checkpoint (``save_reward_model``): a plain transformers sequence-classification directory (safetensors, a LoRA
adapter merged in, the tokenizer) with three alignlab keys in config.json:
- ``alignlab_reward_offset`` / ``alignlab_reward_scale``: the normalisation, reward = (raw − offset) / scale
  (defaults 0 and 1); alignlab.rewards.HFRewardModel applies it;
- ``alignlab_reward_format``: ``"prompt_response_eos"``, the input layout above, which HFRewardModel reproduces.

HF's own pooling (``model(...).logits``) reads the rightmost position whose id is not ``config.pad_token_id``. The
saved pad id is therefore a token other than EOS whenever the tokenizer has one (its pad, else unk, else BOS, else
another special token; tokenizer and config agree): with right padding plain transformers then gives the same
score as ``reward_forward``. If EOS is the only candidate, the pad id stays EOS and HF's pooling stops at the token
*before* the final EOS: score such a model with ``reward_forward`` or HFRewardModel (which pads with an id absent
from the batch). HF's forward also numbers positions from 0 including pads, so plain transformers should be given
right-padded batches.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from alignlab.models.errors import check_local_model, explain_load_failure, looks_like_path
from alignlab.models.loading import DTYPES, resolve_model_path
from alignlab.models.lora import apply_lora, merge_lora

OFFSET_KEY = "alignlab_reward_offset"
SCALE_KEY = "alignlab_reward_scale"
FORMAT_KEY = "alignlab_reward_format"
FORMAT = "prompt_response_eos"  # chat-templated prompt (generation prompt) + response ids + one EOS
HEAD = "score"  # the scalar head of transformers' *ForSequenceClassification causal LMs


def reward_pad_id(tokenizer) -> int:
    """A pad id that is not EOS when the tokenizer has one: its pad token, else unk, else BOS, else another special
    token; EOS only when nothing else exists (see the module docstring for what that means)."""
    eos = tokenizer.eos_token_id
    candidates = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id]
    candidates += sorted(tokenizer.all_special_ids)
    for c in candidates:
        if c is not None and c != eos:
            return int(c)
    if eos is None:
        raise ValueError("tokenizer has no special token at all; set tokenizer.pad_token explicitly")
    return int(eos)


def set_reward_pad(model, tokenizer) -> int:
    """Give tokenizer and model config the same pad id (``reward_pad_id``); returns it."""
    pad = reward_pad_id(tokenizer)
    if tokenizer.pad_token_id != pad:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    hf = base_transformers_model(model)
    hf.config.pad_token_id = pad
    return pad


def load_reward_backbone(
    name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False, device: str | None = None
):
    """(model, tokenizer): a 1-label sequence-classification model on the causal LM ``name_or_path`` (hub id, local
    dir or built-in alias such as ``smollm2-135m-instruct``), safetensors weights only. A causal-LM checkpoint gets
    a new ``score`` head (seed it first for a reproducible init); a saved reward model keeps its own. The pad id is
    set by ``set_reward_pad``. Failures about the model raise ModelLoadError (alignlab.models.errors)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    try:
        path = resolve_model_path(name_or_path)
        if looks_like_path(str(name_or_path)) or Path(path).exists():
            check_local_model(Path(path).expanduser(), trust_remote_code)
            path = str(Path(path).expanduser())
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except Exception as e:  # re-raised unchanged unless it is about the model
        err = explain_load_failure(str(name_or_path), e, dtype, device)
        if err is None or err is e:
            raise
        raise err from e
    if getattr(model, HEAD, None) is None:
        raise ValueError(
            f"model {name_or_path}: {type(model).__name__} has no '{HEAD}' head; alignlab needs a decoder LM"
        )
    set_reward_pad(model, tok)
    if device is not None:
        model.to(device)
    return model.eval(), tok


def apply_reward_lora(model, r: int, alpha: int, dropout: float, target_modules, top_layers: int = 0):
    """LoRA on the backbone, the ``score`` head trained in full (peft ``modules_to_save``), task SEQ_CLS."""
    return apply_lora(model, r, alpha, dropout, target_modules, top_layers, task_type="SEQ_CLS", modules_to_save=[HEAD])


def base_transformers_model(model) -> PreTrainedModel:
    """The transformers model inside ``model``: a PeftModel's base model (its adapters injected in place), else
    ``model`` itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of the last position whose mask is 1 (left, right or no padding); every row needs one."""
    if not bool((attention_mask.sum(-1) > 0).all()):
        raise ValueError("a row of the batch has no real token (all-zero attention mask)")
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def reward_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] float32 raw rewards (no normalisation): backbone, then the ``score`` head at each row's last real token.

    ``model``: a sequence-classification model or a PeftModel around one (LoRA layers and the trained head copy
    are used, since they are injected into the same modules). Position ids count real tokens only, so a row scores
    the same whatever its padding."""
    hf = base_transformers_model(model)
    backbone, head = getattr(hf, hf.base_model_prefix), getattr(hf, HEAD)
    mask = attention_mask.long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return head(hidden[rows, last_token_index(mask)]).squeeze(-1).float()


class RewardScorer(torch.nn.Module):
    """``reward_forward`` as a module, so accelerate / DDP can wrap the forward (gradient sync) and checkpoint it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return reward_forward(self.model, input_ids, attention_mask)


def merged_reward_model(model) -> PreTrainedModel:
    """The plain transformers model of ``model``: a PeftModel is merged (LoRA folded in, the trained head copy put
    in place) **in place**, so the PeftModel must not be used afterwards; anything else is returned as is."""
    return merge_lora(model) if isinstance(model, PeftModel) else model


def mark_reward_config(model, tokenizer, offset: float = 0.0, scale: float = 1.0) -> None:
    """Write the alignlab keys into ``model``'s config (normalisation, input format) and align the pad id of
    tokenizer and config (``set_reward_pad``). reward = (raw − offset) / scale."""
    if not (0 < scale < float("inf")) or not abs(offset) < float("inf"):
        raise ValueError(f"reward normalisation needs a finite offset and a finite scale > 0, got {offset}, {scale}")
    hf = base_transformers_model(model)
    set_reward_pad(hf, tokenizer)
    setattr(hf.config, OFFSET_KEY, float(offset))
    setattr(hf.config, SCALE_KEY, float(scale))
    setattr(hf.config, FORMAT_KEY, FORMAT)


def save_reward_model(model, tokenizer, out_dir: str | Path, offset: float = 0.0, scale: float = 1.0) -> Path:
    """Write a plain transformers sequence-classification dir (safetensors + tokenizer) that
    ``AutoModelForSequenceClassification.from_pretrained`` loads; returns it. A PeftModel is merged first, in place
    (``merged_reward_model``); config.json gets ``mark_reward_config``'s keys."""
    hf = merged_reward_model(model)
    mark_reward_config(hf, tokenizer, offset, scale)
    out = Path(out_dir)
    hf.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def reward_normalisation(config) -> tuple[float, float]:
    """(offset, scale) stored in a model config; (0, 1) when absent. A scale that is not finite and > 0 raises."""
    raw_offset = getattr(config, OFFSET_KEY, None)
    offset = 0.0 if raw_offset is None else float(raw_offset)
    if not abs(offset) < float("inf"):
        raise ValueError(f"{OFFSET_KEY}={raw_offset!r} in the model config: must be a finite number")
    raw_scale = getattr(config, SCALE_KEY, None)
    scale = 1.0 if raw_scale is None else float(raw_scale)
    if not (0 < scale < float("inf")):
        raise ValueError(f"{SCALE_KEY}={raw_scale!r} in the model config: must be a finite number > 0")
    return offset, scale
