"""Training loop: gradient-accumulation invariance (docs/conventions.md R7), step-0 invariants (R6/R8), resume,
NaN stop, CLI."""

import json
import math

import pytest
import torch
from accelerate import Accelerator
from conftest import make_pairs
from tiny_models import tiny_causal_lm, tiny_tokenizer, tiny_train_config

from alignlab.losses import LOSSES
from alignlab.models.scorer import SequenceScorer
from alignlab.precompute.reference import compute_logps
from alignlab.recipes.train import NonFiniteLossError, TrainConfig, train
from alignlab.training.schedule import BatchPlan
from alignlab.training.step import accumulate_gradients


def _cfg(tmp_path, **kw) -> TrainConfig:
    return tiny_train_config(tmp_path, **kw)


def _grads(loss: str, per_device: int, accum: int, extra: dict, dtype=torch.float64) -> tuple[list[torch.Tensor], dict]:
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3).to(dtype)
    pairs = make_pairs(tok, 8, seed=5)
    ref_model = tiny_causal_lm(tok, seed=4).to(dtype)  # a different reference so rewards are non-zero
    ref = compute_logps(SequenceScorer(ref_model), pairs, list(range(8)), tok.pad_token_id, 8, "cpu")
    cfg = TrainConfig(loss=loss, per_device_batch_size=per_device, grad_accum=accum, **extra)
    acc = Accelerator(cpu=True)
    scorer = SequenceScorer(model)
    plan = BatchPlan(8, per_device, accum, 1, 0, [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs])
    keep, bad = accumulate_gradients(cfg.step_settings(), acc, scorer, plan, pairs, ref, tok.pad_token_id, 0)
    assert not bad
    return [p.grad.clone() for p in model.parameters()], keep


LOSS_CASES = [
    ("dpo", {}),
    ("cdpo", {"label_smoothing": 0.1}),
    ("ipo", {}),
    ("ipo", {"ipo_reduction": "sum"}),
    ("slic", {}),
    ("rdpo", {"length_alpha": 0.05}),
    ("simpo", {}),
    ("dpo_norm", {}),
    ("dpo", {"sft_weight": 0.5}),
]


@pytest.mark.parametrize("loss,extra", LOSS_CASES)
def test_grad_accumulation_invariance(loss, extra):
    """1x8, 2x4, 4x2, 8x1 (micro-batch x accumulation) give the same gradient. Run in float64 so that any
    normalisation error (which would be O(1e-1)) cannot hide behind fp32 summation-order noise."""
    ref_grads, _ = _grads(loss, 8, 1, extra)
    for per_device, accum in [(4, 2), (2, 4), (1, 8)]:
        grads, _ = _grads(loss, per_device, accum, extra)
        for a, b in zip(ref_grads, grads):
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), (loss, per_device, accum, (a - b).abs().max())


def test_grad_accumulation_invariance_fp32():
    ref_grads, _ = _grads("dpo", 8, 1, {}, torch.float32)
    grads, _ = _grads("dpo", 1, 8, {}, torch.float32)
    for a, b in zip(ref_grads, grads):
        assert (a - b).abs().max() < 1e-6


def test_every_loss_is_covered_by_invariance_test():
    # token-level losses (T-REG) need token rewards: their invariance test is in tests/test_treg.py
    assert {c[0] for c in LOSS_CASES} | {"hinge"} | {n for n, s in LOSSES.items() if s.token_level} == set(LOSSES)


def test_step0_invariants_and_metrics(tmp_path, tiny):
    tok, model = tiny
    pairs = make_pairs(tok, 8)
    res = train(_cfg(tmp_path, max_steps=1, per_device_batch_size=8, learning_rate=0.0), model, tok, pairs)
    m = res.metrics[0]
    assert m["rewards/chosen"] == 0.0 and m["rewards/rejected"] == 0.0 and m["rewards/margins"] == 0.0
    assert m["rewards/accuracies"] == 0.0 and m["rewards/ties"] == 1.0
    assert m["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert m["kl/ref_policy"] == 0.0
    logged = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for key in (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
        "kl/ref_policy",
    ):
        assert key in logged[0]
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_training_increases_margin_and_reference_cache_hits(tmp_path, tiny):
    tok, model = tiny
    pairs = make_pairs(tok, 16)
    res = train(_cfg(tmp_path, epochs=6, learning_rate=3e-3), model, tok, pairs)
    assert res.metrics[-1]["rewards/margins"] > 0.5
    assert res.metrics[-1]["loss"] < math.log(2) - 0.1
    assert not res.ref_cache_hit
    model2 = tiny_causal_lm(tok, seed=0)
    res2 = train(_cfg(tmp_path / "b", max_steps=1), model2, tok, pairs)
    assert res2.ref_cache_hit


def test_resume_matches_uninterrupted(tmp_path):
    tok = tiny_tokenizer()
    pairs = make_pairs(tok, 16, seed=2)
    full = train(
        _cfg(tmp_path / "full", max_steps=6, lr_scheduler="cosine", warmup_ratio=0.2),
        tiny_causal_lm(tok, seed=7),
        tok,
        pairs,
    )
    part_cfg = _cfg(
        tmp_path / "part", max_steps=6, lr_scheduler="cosine", warmup_ratio=0.2, save_steps=2, stop_after_steps=3
    )
    train(part_cfg, tiny_causal_lm(tok, seed=7), tok, pairs)
    resumed = train(
        _cfg(tmp_path / "part", max_steps=6, lr_scheduler="cosine", warmup_ratio=0.2, resume_from="latest"),
        tiny_causal_lm(tok, seed=7),
        tok,
        pairs,
    )
    assert resumed.steps == 6
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert [m["loss"] for m in resumed.metrics] == [m["loss"] for m in full.metrics[3:]]


def test_nan_stops_with_step_and_batch_and_keeps_checkpoint(tmp_path):
    tok = tiny_tokenizer()
    pairs = make_pairs(tok, 8)
    model = tiny_causal_lm(tok, seed=1)
    cfg = _cfg(tmp_path, max_steps=4, save_steps=1, per_device_batch_size=4)
    train(_cfg(tmp_path, max_steps=4, save_steps=1, stop_after_steps=2), model, tok, pairs)
    ckpt = tmp_path / "run" / "checkpoints" / "step_2"
    before = (ckpt / "model.safetensors").read_bytes()
    with torch.no_grad():  # poison the weights: every later loss is NaN
        next(model.parameters()).fill_(float("nan"))
    cfg.resume_from = None
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*dataset indices"):
        train(_cfg(tmp_path / "nan", max_steps=4), model, tok, pairs)
    assert (ckpt / "model.safetensors").read_bytes() == before


def test_rdpo_without_alpha_fails_fast(tmp_path):
    with pytest.raises(ValueError, match="length_alpha"):
        _cfg(tmp_path, loss="rdpo").validate()


def test_cli_train_on_jsonl(tmp_path):
    from tiny_models import save_tiny

    from alignlab.cli import main

    model_dir = save_tiny(tmp_path / "tiny_model")
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(8)]
    rows.append(
        {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go away"}],
        }
    )
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            f"model={model_dir}",
            f"data={data}",
            "lora=false",
            "max_steps=2",
            "report_to=none",
            "per_device_batch_size=2",
            "gradient_checkpointing=false",
            f"output_dir={out}",
            "loss=ipo",
        ]
    )
    assert rc == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["load"]["kept"] == 9 and report["tokenize"]["data/kept"] == 9
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    assert main(["train", f"model={model_dir}", f"data={bad}", "report_to=none", f"output_dir={out}2"]) == 2
