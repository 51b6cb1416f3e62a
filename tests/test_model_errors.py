"""Clean failures at the edge (README "Errors"): a model that cannot be loaded gives one line on stderr that says what
to do and exit code 2; `alignlab --debug` re-raises instead. No network: HF_HUB_OFFLINE=1."""

import json

import pytest
import torch
from tiny_models import save_tiny

from alignlab.cli import main, one_line
from alignlab.models import loading
from alignlab.models.errors import ModelLoadError, ModelNotFoundError


def _generate(model: str, tmp_path, *pre: str) -> list[str]:
    # generate loads the model right after the (embedded) prompts; reward=none keeps the gold's embedder out
    return [*pre, "generate", f"model={model}", "reward=none", "limit=1", f"output_dir={tmp_path / 'out'}"]


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("alignlab generate: error: ")
    return err[0]


@pytest.fixture
def unknown_arch(tmp_path):
    d = tmp_path / "weird"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "no-such-architecture", "hidden_size": 8}))
    return d


CASES = [
    ("nobody/does-not-exist-model", ["HF_HUB_OFFLINE", "smollm2-135m-instruct", "local model directory"]),
    ("/nonexistent/dir", ["no such directory", "smollm2-135m-instruct", "local model directory"]),
]


@pytest.mark.parametrize("model,hints", CASES)
def test_unreachable_or_missing_model_is_one_line(model, hints, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(_generate(model, tmp_path)) == 2
    line = _one_error_line(capsys)
    assert model in line and "Traceback" not in line
    for h in hints:
        assert h in line


def test_unknown_architecture_is_one_line(unknown_arch, tmp_path, capsys):
    assert main(_generate(str(unknown_arch), tmp_path)) == 2
    line = _one_error_line(capsys)
    assert "no-such-architecture" in line and "transformers" in line and "smollm2-135m-instruct" in line


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), MemoryError()])
def test_out_of_memory_on_load_is_one_line(exc, tmp_path, capsys, monkeypatch):
    model_dir = save_tiny(tmp_path / "tiny")
    capsys.readouterr()  # save_pretrained's progress bar

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", boom)
    assert main(_generate(str(model_dir), tmp_path)) == 2
    line = _one_error_line(capsys)
    assert "out of memory" in line and "dtype=bfloat16" in line and "smollm2-135m-instruct" in line


def test_debug_reraises(tmp_path, unknown_arch):
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        main(_generate("/nonexistent/dir", tmp_path, "--debug"))
    with pytest.raises(ModelLoadError, match="no-such-architecture"):  # --debug after the subcommand works too
        main(_generate(str(unknown_arch), tmp_path) + ["--debug"])


def test_loader_raises_typed_errors(tmp_path, unknown_arch, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        loading.load_model_and_tokenizer("nobody/does-not-exist-model")
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for older callers
        loading.load_model_and_tokenizer("/nonexistent/dir")
    with pytest.raises(ModelLoadError, match="not a Hugging Face model dir.*alignlab export"):
        (tmp_path / "run" / "final").mkdir(parents=True)
        loading.load_model_and_tokenizer(str(tmp_path / "run"))
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        loading.load_model_and_tokenizer(str(t5))


def test_one_line_joins_multiline_messages():
    assert one_line(ValueError("a.jsonl:3: bad row\n  field 'chosen' missing\n")) == (
        "a.jsonl:3: bad row; field 'chosen' missing"
    )
    assert "per_device_batch_size" in one_line(torch.OutOfMemoryError("CUDA out of memory"))
