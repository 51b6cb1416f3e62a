"""Held-out evaluation during `alignlab train` (eval_data): schedule and names, step-0 invariants, equality with a
direct computation of the objective over the eval set, no effect on training, best.json, config and data errors."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_pairs
from launch import write_pairs
from tiny_models import tiny_causal_lm, tiny_tokenizer, tiny_train_config

from alignlab.config import ConfigError, build_config
from alignlab.data.collate import collate_pairs
from alignlab.data.formats import DataError, load_preference_records
from alignlab.data.tokenize import tokenize_pairs
from alignlab.losses.objective import preference_objective
from alignlab.models.scorer import SequenceScorer
from alignlab.precompute.reference import compute_logps
from alignlab.recipes.train import TrainConfig, train
from alignlab.training.metrics import pair_values, read_metrics
from alignlab.training.step import PairStats, pair_logps

NAMES = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "rewards/ties",
    "logps/chosen",
    "logps/rejected",
    "lengths/chosen",
    "lengths/rejected",
    "kl/ref_policy",
)


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    return tiny_train_config(tmp_path, **({"learning_rate": 3e-3} | kw))


def _eval_file(tmp_path: Path, n: int = 9, identical: bool = False) -> Path:
    path = write_pairs(tmp_path / "eval.jsonl", n, seed=3)
    if identical:  # a pair that is skipped and counted, as in training data
        with path.open("a") as fh:
            fh.write(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    return path


def _eval_rows(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir / "metrics.jsonl", rows="eval")


def test_eval_rows_step0_best_and_report(tmp_path):
    """LoRA: rows at 0, every eval_steps and the end with every eval_ name; at step 0 (fresh adapter: policy =
    reference) rewards are exactly 0 and eval_loss = log 2; best.json = the lowest eval_loss and its checkpoint."""
    tok = tiny_tokenizer()
    data = write_pairs(tmp_path / "train.jsonl", 8, seed=3)
    ev = _eval_file(tmp_path, n=8, identical=True)  # the training pairs + one skipped: eval_loss falls
    cfg = _cfg(tmp_path, lora=True, lora_r=4, lora_alpha=8, max_steps=5, eval_data=str(ev), eval_steps=2, save_steps=2)
    cfg.data, cfg.save_total_limit = str(data), 0  # keep every checkpoint: best.json names the best step's
    train(cfg, tiny_causal_lm(tok, seed=7), tok)
    run = tmp_path / "run"
    rows = _eval_rows(run)
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    for r in rows:
        assert {f"eval_{k}" for k in NAMES} <= set(r) and "loss" not in r
    first = rows[0]
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "kl/ref_policy"):
        assert first[f"eval_{k}"] == 0.0, k
    assert first["eval_rewards/ties"] == 1.0
    assert first["eval_loss"] == pytest.approx(math.log(2), rel=1e-6)
    base = first["eval_baseline/longer_wins"], first["eval_baseline/shorter_wins"]
    assert base[0] + base[1] == pytest.approx(1.0) and all("eval_baseline/longer_wins" not in r for r in rows[1:])
    assert rows[-1]["eval_loss"] != first["eval_loss"]  # training moved the policy

    best = json.loads((run / "best.json").read_text())
    low = min(rows, key=lambda r: (r["eval_loss"], r["step"]))
    assert low["step"] > 0
    assert (best["best_step"], best["best_eval_loss"]) == (low["step"], low["eval_loss"])
    assert best["checkpoint"] == str(run / "checkpoints" / f"step_{low['step']}")
    assert f"Best: step {low['step']}" in (run / "report.md").read_text()
    card = (run / "final" / "README.md").read_text()  # the model card quotes the held-out numbers
    assert f"| `eval_rewards/accuracies` | {rows[-1]['eval_rewards/accuracies']:.6g} |" in card
    assert f"Best: step {low['step']}" in card
    report = json.loads((run / "data_report.json").read_text())["eval"]
    assert report["load"]["read"] == 9 and report["load"]["skipped"] == {"identical_pair": 9 - report["load"]["kept"]}
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4, 5]  # training rows only


def test_eval_equals_direct_objective_and_leaves_training_unchanged(tmp_path):
    """eval_* at the end = preference_objective over every eval pair, one at a time (1e-6 relative); the training
    rows and the weights are identical with and without eval_data."""
    tok = tiny_tokenizer()
    pairs, ev = make_pairs(tok, 8, seed=2), _eval_file(tmp_path, n=7)
    kw = dict(max_steps=3, ref_batch_size=1)  # batch size 1 throughout: no padding, so no fp32 batch noise
    with_eval = train(
        _cfg(tmp_path / "a", eval_data=str(ev), eval_batch_size=1, **kw), tiny_causal_lm(tok, seed=7), tok, pairs
    )
    plain = train(_cfg(tmp_path / "b", **kw), tiny_causal_lm(tok, seed=7), tok, pairs)
    drop = {"time/step_s"}
    assert [{k: v for k, v in m.items() if k not in drop} for m in with_eval.metrics] == [
        {k: v for k, v in m.items() if k not in drop} for m in plain.metrics
    ]
    for a, b in zip(with_eval.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)

    records, _ = load_preference_records(str(ev))
    eval_pairs, _ = tokenize_pairs(records, tok, 128, 64)
    pad, idx = tok.pad_token_id, list(range(len(eval_pairs)))
    ref = compute_logps(SequenceScorer(tiny_causal_lm(tok, seed=7)), eval_pairs, idx, pad, 1, "cpu")
    cfg, policy, parts = _cfg(tmp_path), SequenceScorer(with_eval.model.eval()), []
    with torch.no_grad():
        for i in idx:
            b = collate_pairs([eval_pairs[i]], [i], pad, ref, pack=policy.pack_spec)  # the training forward layout
            out = policy(b.input_ids, b.attention_mask, b.completion_mask, packed=b.packed)
            pl = pair_logps(out, 1, b.ref_logps)
            parts.append(PairStats.of(preference_objective(pl, "dpo", cfg.loss_params()), pl))
    want = {f"eval_{k}": v.double().mean().item() for k, v in pair_values(PairStats.cat(parts)).items()}
    got = _eval_rows(tmp_path / "a" / "run")[-1]
    assert with_eval.evals[-1] == got and plain.evals == []
    assert got["step"] == 3 and set(want) <= set(got)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_eval_keys_without_eval_data_are_errors():
    for override in ("eval_steps=5", "eval_batch_size=2", "eval_split=validation"):
        with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}=.* no eval_data"):
            build_config(TrainConfig, None, [override])
    cfg = build_config(TrainConfig, None, ["eval_data=e.jsonl", "eval_steps=5", "eval_batch_size=2"])
    assert (cfg.eval_steps, cfg.eval_batch_size) == (5, 2)
    with pytest.raises(ConfigError, match="eval_steps must be >= 0"):
        build_config(TrainConfig, None, ["eval_data=e.jsonl", "eval_steps=-1"])


def test_bad_eval_data_stops_before_the_model_loads(tmp_path):
    """Malformed eval rows name file, line and field, and an empty eval file stops, before any model loads."""
    data = write_pairs(tmp_path / "train.jsonl", 8)
    bad = tmp_path / "eval.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n" + json.dumps({"prompt": "q"}))
    cfg = _cfg(tmp_path, model="/nonexistent/model/dir", data=str(data), eval_data=str(bad))
    with pytest.raises(DataError, match=rf"{bad}:2: .*chosen"):
        train(cfg)
    bad.write_text("")
    with pytest.raises(ConfigError, match=rf"eval_data {bad}.*no usable preference pairs"):
        train(cfg)
