"""No silent options and no silent data problems (docs/conventions.md R11).

A config key that the chosen loss does not read, set away from its default, is an error naming the key, the
loss and the keys it reads; bad data stops before any model is loaded, naming the file and the counts.
"""

import json

import pytest

from alignlab.config import ConfigError, build_config
from alignlab.losses import LOSS_KEYS, LOSSES, get_loss
from alignlab.recipes.train import TrainConfig, train

# A model path that does not exist: if train() got as far as loading a model, the error would be about it.
NO_MODEL = "/nonexistent/model/dir"


@pytest.mark.parametrize(
    "override,loss",
    [
        ("label_smoothing=0.1", "dpo"),
        ("alpha=0.5", "dpo"),
        ("gamma_beta_ratio=0.5", "ipo"),
        ("ipo_reduction=sum", "dpo"),
        ("treg_template=generation", "simpo"),
        ("treg_tau=0.5", "dpo"),
        ("length_alpha=0.1", "cdpo"),
        ("reference_free=true", "simpo"),
    ],
)
def test_unread_loss_key_is_an_error(override, loss):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        build_config(TrainConfig, None, [f"loss={loss}", override])
    msg = str(e.value)
    assert key in msg and f"loss={loss}" in msg
    for read in get_loss(loss).reads:  # names the keys the loss does read
        assert read in msg


@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_read_key_is_accepted(loss):
    """The keys a loss reads can be set; defaults of the others never trip the check."""
    values = {
        "label_smoothing": "0.1",
        "beta_convention": "gpo",
        "ipo_reduction": "sum",
        "length_alpha": "0.1",
        "gamma_beta_ratio": "0.3",
        "reference_free": "true",
        "alpha": "0.5",
        "treg_template": "generation",
        "treg_scorer": "x",
        "treg_weighting": "static",
        "treg_tau": "0.5",
    }
    spec = get_loss(loss)
    over = [f"loss={loss}"] + [f"{k}={values[k]}" for k in spec.reads]
    if loss == "rdpo":
        assert "length_alpha" in spec.reads
    cfg = build_config(TrainConfig, None, over)
    assert set(cfg.loss_params()) == {"beta"} | set(spec.reads)
    assert set(spec.reads) <= set(LOSS_KEYS)


def test_other_unread_keys():
    with pytest.raises(ConfigError, match="lora_r=8.*lora=false"):
        build_config(TrainConfig, None, ["lora=false", "lora_r=8"])
    with pytest.raises(ConfigError, match="epochs=3.*max_steps=10 replaces epochs"):
        build_config(TrainConfig, None, ["max_steps=10", "epochs=3"])
    with pytest.raises(ConfigError, match="ref_batch_size"):
        build_config(TrainConfig, None, ["loss=simpo", "ref_batch_size=4"])
    build_config(TrainConfig, None, ["loss=simpo_treg", "ref_batch_size=4"])  # token rewards read it


def test_default_beta_comes_from_the_registry():
    assert TrainConfig(loss="simpo").resolved_beta == LOSSES["simpo"].default_beta == 2.0
    assert TrainConfig(loss="dpo").resolved_beta == 0.1
    assert TrainConfig(loss="dpo", beta=0.3).resolved_beta == 0.3


def _pairs_file(path, n):
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(n))
    )
    return path


def test_empty_file_stops_before_the_model_loads(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    cfg = TrainConfig(model=NO_MODEL, data=str(data), output_dir=str(tmp_path / "run"), report_to="none", cpu=True)
    with pytest.raises(ConfigError) as e:
        train(cfg)
    assert str(data) in str(e.value) and "read 0" in str(e.value) and "no usable preference pairs" in str(e.value)


def test_too_few_pairs_stop_before_the_model_loads(tmp_path):
    data = _pairs_file(tmp_path / "three.jsonl", 3)
    with data.open("a") as fh:  # an identical pair: skipped and counted
        fh.write(json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}) + "\n")
    cfg = TrainConfig(
        model=NO_MODEL,
        data=str(data),
        output_dir=str(tmp_path / "run"),
        report_to="none",
        cpu=True,
        per_device_batch_size=2,
        grad_accum=2,
    )
    with pytest.raises(ConfigError) as e:
        train(cfg)
    msg = str(e.value)
    assert str(data) in msg and "read 4, kept 3" in msg and "identical_pair=1" in msg
    assert "3 usable pair(s) cannot fill one global batch of 4" in msg


def test_cli_reports_the_error_in_one_line(tmp_path, capsys):
    from alignlab.cli import main

    data = tmp_path / "empty.jsonl"
    data.write_text("")
    assert (
        main(
            [
                "train",
                f"data={data}",
                f"model={NO_MODEL}",
                f"output_dir={tmp_path / 'run'}",
                "report_to=none",
                "cpu=true",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no usable preference pairs" in err and "Traceback" not in err
    assert main(["train", "data=x.jsonl", "loss=dpo", "label_smoothing=0.1"]) == 2
    assert "label_smoothing=0.1 is set but not read" in capsys.readouterr().err
