"""Tiny, download-free tokenizer and causal LM for unit tests.

The tokenizer is byte-level (ids 0..255 are the raw bytes, so any text round-trips)
plus two ChatML special tokens. Variants cover the tokenizer families that the
tokenization audit must handle (docs/conventions.md R3): no automatic BOS (SmolLM2/ChatML),
automatic BOS (Llama-style), ``bos_token=None`` (Qwen2-style) and a template that
injects a default system prompt (SmolLM2-style).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

_TURN = "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
_GEN = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte -> printable-char map, inverted so that token id == byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # non-printable bytes are shifted past 255, as in GPT-2
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


def chat_template(default_system: str | None = None) -> str:
    """ChatML template; optionally injects ``default_system`` when no system turn is given."""
    head = ""
    if default_system is not None:
        sys_turn = IM_START + "system\n" + default_system + IM_END + "\n"
        head = "{% if loop.first and messages[0]['role'] != 'system' %}{{ " + repr(sys_turn) + " }}{% endif %}"
    return "{% for message in messages %}" + head + _TURN + "{% endfor %}" + _GEN


def tiny_tokenizer(
    add_bos: bool = False, default_system: str | None = None, with_bos: bool = True
) -> PreTrainedTokenizerFast:
    """Byte-level ChatML tokenizer (vocab 258): ids 0-255 bytes, 256 ``<|im_start|>``, 257 ``<|im_end|>``.

    add_bos: the tokenizer itself prepends BOS on encode (Llama-style post-processor).
    default_system: the chat template injects this system prompt (SmolLM2-style).
    with_bos: False gives ``bos_token=None`` (Qwen2-style); incompatible with add_bos.
    """
    if add_bos and not with_bos:
        raise ValueError("add_bos=True needs a BOS token (with_bos=True)")
    # BPE without merges over the byte alphabet == one token per byte.
    tk = Tokenizer(models.BPE(vocab=_byte_alphabet(), merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([IM_START, IM_END])
    if add_bos:
        bos_id = tk.token_to_id(IM_START)
        tk.post_processor = processors.TemplateProcessing(
            single=f"{IM_START} $A", pair=f"{IM_START} $A {IM_START} $B:1", special_tokens=[(IM_START, bos_id)]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=IM_START if with_bos else None,
        eos_token=IM_END,
        pad_token=IM_END,
        chat_template=chat_template(default_system),
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
    return tok


def tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4
) -> LlamaForCausalLM:
    """Randomly initialised fp32 Llama matching ``tokenizer``; identical weights for the same seed."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        # Larger than the default 0.02 so the random model's distributions are not near-uniform.
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    return model.eval()


def save_tiny(dirpath: str | Path, seed: int = 0, **tokenizer_kwargs) -> Path:
    """Write a tiny model + tokenizer as a safetensors HF dir, loadable by ``load_model_and_tokenizer``."""
    dirpath = Path(dirpath)
    tok = tiny_tokenizer(**tokenizer_kwargs)
    tiny_causal_lm(tok, seed=seed).save_pretrained(dirpath)
    tok.save_pretrained(dirpath)
    return dirpath


def tiny_train_config(tmp_path, **kw):
    """A TrainConfig for the tiny test runs (one CPU process, full fine-tuning, constant lr, no tracker);
    ``kw`` overrides any key."""
    from alignlab.recipes.train import TrainConfig

    base = dict(
        model="tiny",
        lora=False,
        report_to="none",
        cpu=True,
        gradient_checkpointing=False,
        per_device_batch_size=4,
        grad_accum=1,
        learning_rate=1e-3,
        output_dir=str(Path(tmp_path) / "run"),
        warmup_ratio=0.0,
        lr_scheduler="constant",
        max_length=128,
        max_prompt_length=64,
    )
    return TrainConfig(**(base | kw))
