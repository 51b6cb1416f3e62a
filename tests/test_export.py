"""`alignlab export`: a finished run as a directory that plain transformers loads (docs/export.md)."""

import json

import pytest
import torch
from tiny_models import save_tiny
from transformers import AutoModelForCausalLM

from alignlab.cli import main
from alignlab.models.export import MARKER, ExportError, fmt, last_metrics
from alignlab.recipes.train import TrainConfig, train


def _data(tmp_path):
    path = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"question {i}", "chosen": f"a good answer {i}", "rejected": f"bad {i}"} for i in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _train(tmp_path, lora: bool):
    model_dir = save_tiny(tmp_path / "tiny_model", seed=1)
    extra = dict(lora_r=4, lora_alpha=8, learning_rate=2e-2) if lora else dict(learning_rate=1e-3)
    cfg = TrainConfig(
        model=str(model_dir),
        data=str(_data(tmp_path)),
        lora=lora,
        max_steps=3,
        per_device_batch_size=2,
        report_to="none",
        cpu=True,
        gradient_checkpointing=False,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        max_length=64,
        max_prompt_length=32,
        output_dir=str(tmp_path / "run"),
        **extra,
    )
    return model_dir, train(cfg)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


IDS = torch.tensor([[104, 105, 32, 116, 104, 101, 114, 101, 257], [97, 98, 99, 100, 101, 102, 103, 104, 105]])


def test_lora_run_exports_merged_model_with_card(tmp_path):
    model_dir, res = _train(tmp_path, lora=True)
    out = tmp_path / "exported"
    assert main(["export", str(res.run_dir), f"output_dir={out}", "merge=true"]) == 0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert not (out / "adapter_config.json").exists()
    exported = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, no peft
    policy, base = res.model.eval(), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    want, got = _logits(policy, IDS), _logits(exported, IDS)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    assert (_logits(base, IDS) - want).abs().max() > 1e-3  # the adapter changed the model, and it was merged

    card = (out / "README.md").read_text()
    final = last_metrics(res.run_dir / "metrics.jsonl")
    assert "`dpo`" in card and f"| `loss` | {fmt(final['loss'])} |" in card and final["step"] == 3
    assert "prefs.jsonl" in card and "LoRA r=4" in card and "lora_r: 4" in card  # summary and config.yaml
    assert "## Report (report.md)" in card  # train writes report.md
    assert json.loads((out / MARKER).read_text())["kind"] == "merged"

    assert main(["export", str(res.run_dir), f"output_dir={out}"]) == 0  # an earlier export is replaced


def test_final_dir_carries_the_runs_card_not_peft_template(tmp_path):
    _, res = _train(tmp_path, lora=True)
    card = (res.final_dir / "README.md").read_text()
    final = last_metrics(res.run_dir / "metrics.jsonl")
    assert "More Information Needed" not in card  # peft's template is replaced
    assert "Written by `alignlab train`" in card and "`dpo`" in card
    assert f"| `loss` | {fmt(final['loss'])} |" in card and "## Training config (config.yaml)" in card


def test_full_run_is_copied_and_dtype_can_change(tmp_path):
    _, res = _train(tmp_path, lora=False)
    assert main(["export", str(res.run_dir)]) == 0  # default output_dir: RUN/export
    out = res.run_dir / "export"
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(_logits(exported, IDS), _logits(res.model.eval(), IDS))
    assert "full fine-tuning" in (out / "README.md").read_text()
    assert main(["export", str(res.run_dir), f"output_dir={tmp_path / 'bf16'}", "dtype=bfloat16"]) == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def test_unfinished_run_and_foreign_output_dir_fail_cleanly(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: x\nloss: dpo\n")
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no final/" in err[0] and "resume_from=latest" in err[0]
    (run / "final").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    from alignlab.models.export import export_run

    with pytest.raises(ExportError, match="not written by `alignlab export`"):
        export_run(run, other)
    assert (other / "keep.txt").read_text() == "mine"
