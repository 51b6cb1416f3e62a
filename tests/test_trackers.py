"""report_to: a list of accelerate trackers (tensorboard, wandb, mlflow) or none; a tracker whose package is missing
is one ConfigError naming it, before any model loads; metrics.jsonl is written whatever the trackers.

wandb and mlflow are not installed here: their packages are replaced by recording fakes (the import check is
monkeypatched), which is enough to show the metrics, training and eval rows alike, reach accelerate's trackers."""

import json
import sys
import types

import pytest
from conftest import make_pairs
from launch import write_pairs
from tiny_models import tiny_causal_lm, tiny_tokenizer

import alignlab.training.trackers as trackers
from alignlab.config import ConfigError, build_config
from alignlab.recipes.train import TrainConfig, train


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        model="tiny",
        lora=False,
        cpu=True,
        gradient_checkpointing=False,
        per_device_batch_size=4,
        output_dir=str(tmp_path / "run"),
        max_length=128,
        max_prompt_length=64,
        max_steps=2,
    )
    return TrainConfig(**(base | kw))


def _only(monkeypatch, *installed: str) -> None:
    """Pretend exactly ``installed`` (plus tensorboard) can be imported."""
    monkeypatch.setattr(trackers, "package_available", lambda p: p in installed or p == "tensorboard")


def test_report_to_forms(tmp_path, monkeypatch):
    _only(monkeypatch, "wandb", "mlflow")
    assert TrainConfig().report_to == ["tensorboard"]
    assert TrainConfig(report_to="tensorboard, wandb").report_to == ["tensorboard", "wandb"]
    yml = tmp_path / "c.yaml"
    yml.write_text("report_to: [tensorboard, mlflow]\n")
    assert build_config(TrainConfig, str(yml)).report_to == ["tensorboard", "mlflow"]
    assert build_config(TrainConfig, None, ["report_to=none"]).report_to == ["none"]
    assert trackers.active_trackers(["none"]) == [] and trackers.active_trackers([]) == []
    with pytest.raises(ConfigError, match="unknown tracker.*comet.*tensorboard, wandb, mlflow"):
        build_config(TrainConfig, None, ["report_to=comet"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        build_config(TrainConfig, None, ["report_to=none,tensorboard"])


def test_missing_package_is_one_error_before_the_model_loads(tmp_path, monkeypatch):
    _only(monkeypatch)
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, None, ["report_to=tensorboard,wandb,mlflow"])
    msg = str(e.value)
    assert "packages wandb, mlflow are not installed" in msg and "pip install wandb mlflow" in msg
    data = write_pairs(tmp_path / "p.jsonl", 8)
    cfg = TrainConfig(model="/nonexistent/model/dir", data=str(data), report_to="mlflow", cpu=True)
    with pytest.raises(ConfigError, match="package mlflow is not installed"):  # checked before the model loads
        train(cfg)


def _fake_wandb(calls: list) -> types.ModuleType:
    run = types.SimpleNamespace(
        log=lambda values, step=None: calls.append(("log", step, dict(values))),
        finish=lambda: calls.append(("finish",)),
    )
    mod = types.ModuleType("wandb")
    mod.init = lambda **kw: calls.append(("init", kw)) or run
    mod.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: calls.append(("config", values)))
    return mod


def _fake_mlflow(calls: list) -> types.ModuleType:
    mod = types.ModuleType("mlflow")
    mod.search_experiments = lambda filter_string: []
    mod.create_experiment = lambda name, artifact_location=None, tags=None: calls.append(("experiment", name)) or "1"
    mod.start_run = lambda **kw: calls.append(("init", kw)) or types.SimpleNamespace()
    mod.log_params = lambda params: calls.append(("config", params))
    mod.log_metrics = lambda metrics, step=None: calls.append(("log", step, dict(metrics)))
    mod.end_run = lambda: calls.append(("finish",))
    mod.utils = types.SimpleNamespace(
        validation=types.SimpleNamespace(MAX_PARAM_VAL_LENGTH=6000, MAX_PARAMS_TAGS_PER_BATCH=100)
    )
    return mod


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_tracker_receives_training_and_eval_rows(tmp_path, monkeypatch, name):
    calls: list = []
    _only(monkeypatch, name)
    monkeypatch.setitem(sys.modules, name, (_fake_wandb if name == "wandb" else _fake_mlflow)(calls))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    tok = tiny_tokenizer()
    ev = write_pairs(tmp_path / "eval.jsonl", 4, seed=3)
    cfg = _cfg(tmp_path, report_to=name, eval_data=str(ev))
    train(cfg, tiny_causal_lm(tok, seed=1), tok, make_pairs(tok, 8))
    init = next(c[1] for c in calls if c[0] == "init")
    if name == "wandb":
        assert init["project"] == "alignlab" and init["dir"] == cfg.output_dir and init["name"] == "run"
    else:
        assert ("experiment", "alignlab") in calls and init["run_name"] == "run"
    config = next(c[1] for c in calls if c[0] == "config")
    assert config["loss"] == "dpo" and config["report_to"] == name
    logged = [(c[1], c[2]) for c in calls if c[0] == "log"]
    assert [s for s, m in logged if "loss" in m] == [1, 2] and [s for s, m in logged if "eval_loss" in m] == [0, 2]
    assert calls[-1] == ("finish",)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4  # metrics.jsonl is written whatever the tracker
    assert not (tmp_path / "run" / "tb").exists()
