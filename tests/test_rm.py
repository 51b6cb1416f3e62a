"""`alignlab rm`: the Bradley–Terry loss and metrics (spec values), pooling at the last real token under any padding,
and a tiny end-to-end run whose final/ directory loads with plain transformers and through alignlab.rewards."""

import json
import math
import random

import pytest
import torch
from tiny_models import save_tiny
from transformers import AutoModelForSequenceClassification

from alignlab.cli import main as cli
from alignlab.config import ConfigError, build_config
from alignlab.data.tokenize import TokenizedPair
from alignlab.losses.reward_model import bradley_terry_loss, reward_metrics
from alignlab.models.reward_model import (
    apply_reward_lora,
    load_reward_backbone,
    reward_forward,
    reward_normalisation,
)
from alignlab.recipes.rm import RMConfig, train_rm
from alignlab.rewards import HFRewardModel, load_reward
from alignlab.training.rm_step import collate_rewards, length_baseline_accuracy, source_key
from alignlab.training.step import NonFiniteLossError

T = torch.tensor


# ---------------------------------------------------------------- loss and metrics (reward_models.md: loss and metrics)


def test_bradley_terry_values():
    assert bradley_terry_loss(T([0.3]), T([0.3])).item() == pytest.approx(math.log(2), abs=1e-6)
    assert bradley_terry_loss(T([1.0]), T([0.0])).item() == pytest.approx(0.313262, abs=1e-6)
    assert bradley_terry_loss(T([1.0]), T([0.0]), margin=0.5).item() == pytest.approx(0.474077, abs=1e-6)
    per_pair_margin = bradley_terry_loss(T([1.0, 1.0]), T([0.0, 0.0]), margin=T([0.0, 0.5]))
    assert per_pair_margin.tolist() == pytest.approx([0.313262, 0.474077], abs=1e-6)
    plain = bradley_terry_loss(T([0.7]), T([0.3]))
    centred = bradley_terry_loss(T([0.7]), T([0.3]), center_coef=0.01)  # r_c + r_r = 1
    assert (centred - plain).item() == pytest.approx(0.01, abs=1e-7)
    assert bradley_terry_loss(T([1.0, 0.0]), T([0.0, 0.0])).shape == (2,)  # per pair, not reduced


def test_soft_labels():
    assert bradley_terry_loss(T([1.0]), T([0.0]), soft_label=0.7).item() == pytest.approx(0.613262, abs=1e-6)
    rc, rr, m = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64), torch.rand(6).double()
    hard = bradley_terry_loss(rc, rr, margin=m, center_coef=0.01)
    assert torch.allclose(bradley_terry_loss(rc, rr, margin=m, center_coef=0.01, soft_label=1.0), hard, atol=1e-12)
    swapped = bradley_terry_loss(rr, rc, margin=-m, soft_label=T([1.0] * 6).double())
    assert torch.allclose(bradley_terry_loss(rc, rr, margin=m, soft_label=0.0), swapped, atol=1e-12)


def test_metrics_tie_counts_wrong_and_per_source():
    m = reward_metrics(T([1.0, 0.5, 2.0, -1.0]), T([0.0, 0.5, 3.0, -2.0]), ["a", "a", "b", "b"])
    assert m["accuracy"] == 0.5 and m["ties"] == 0.25  # the tie (0.5, 0.5) is wrong
    assert m["margin"] == pytest.approx((1 + 0 - 1 + 1) / 4)
    assert (m["rewards/min"], m["rewards/max"]) == (-2.0, 3.0)
    assert m["rewards/mean"] == pytest.approx(4.0 / 8)
    assert m["accuracy/a"] == 0.5 and m["accuracy/b"] == 0.5
    assert "accuracy/a" not in reward_metrics(T([1.0]), T([0.0]))
    assert source_key("data/hh.jsonl.gz:17") == "hh.jsonl.gz" and source_key("hf:o/n[train][3]") == "hf:o/n[train]"


def test_length_baseline_ties_count_wrong():
    pairs = [TokenizedPair([1], [2, 3, 9], [4, 9], "a"), TokenizedPair([1], [2, 9], [3, 9], "b")]
    pairs.append(TokenizedPair([1], [9], [2, 3, 9], "c"))
    assert length_baseline_accuracy(pairs) == pytest.approx(1 / 3)
    assert length_baseline_accuracy(pairs, "shorter") == pytest.approx(1 / 3)  # the tie is wrong for both


# ---------------------------------------------------------------- pooling (reward_models.md: pooling)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("rm") / "tiny")


def _pair(rng: random.Random) -> TokenizedPair:
    def seq(k):
        return [rng.randrange(0, 250) for _ in range(k)]

    return TokenizedPair(seq(rng.randint(1, 6)), seq(rng.randint(0, 7)) + [257], seq(rng.randint(0, 4)) + [257], "t")


def test_pooling_same_under_left_right_and_no_padding(tiny_dir):
    torch.manual_seed(0)
    model, tok = load_reward_backbone(str(tiny_dir))
    assert tok.pad_token_id == model.config.pad_token_id != tok.eos_token_id  # pad is not EOS (HF pooling agrees)
    rng = random.Random(1)
    pairs = [_pair(rng) for _ in range(4)]
    rows = [p.prompt_ids + p.chosen_ids for p in pairs] + [p.prompt_ids + p.rejected_ids for p in pairs]
    lora = apply_reward_lora(model, 4, 8, 0.0, "all-linear")
    with torch.no_grad():  # a non-trivial adapter, so the LoRA path differs from the base model
        for name, p in lora.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.2)
    for m in (model, lora):
        with torch.no_grad():
            right = reward_forward(m, *collate_rewards(pairs, tok.pad_token_id, tok.eos_token_id, "right"))
            left = reward_forward(m, *collate_rewards(pairs, tok.pad_token_id, tok.eos_token_id, "left"))
            zero_pad = reward_forward(m, *collate_rewards(pairs, 0, tok.eos_token_id))  # the mask alone decides
            single = torch.cat([reward_forward(m, T([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])
        assert torch.allclose(left, right, rtol=1e-5, atol=1e-6), (left, right)
        assert torch.allclose(zero_pad, right, rtol=1e-5, atol=1e-6)
        assert torch.allclose(single, right, rtol=1e-5, atol=1e-6), (single, right)
    with torch.no_grad():  # plain transformers (right padding, the saved pad id) reads the same position
        ids, attn = collate_rewards(pairs, tok.pad_token_id, tok.eos_token_id)
        hf = model(input_ids=ids, attention_mask=attn).logits.squeeze(-1)
        assert torch.allclose(hf, reward_forward(model, ids, attn), rtol=1e-5, atol=1e-6)


def test_truncated_completion_still_ends_with_eos():
    ids, attn = collate_rewards([TokenizedPair([5, 6], [7, 8], [9, 257], "t")], pad_id=0, eos_id=257)
    assert ids.tolist() == [[5, 6, 7, 257], [5, 6, 9, 257]] and attn.sum().item() == 8


# ---------------------------------------------------------------- the recipe end to end


WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


def _write_data(path, n: int, seed: int = 0):
    """Pairs whose chosen response ends with the marker "ok!" (the rejected one never has it); lengths random."""
    rng = random.Random(seed)

    def words(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = []
    for _ in range(n):
        good, bad = words(rng.randint(1, 3)) + " ok!", words(rng.randint(2, 4))
        rows.append({"prompt": words(2), "chosen": good, "rejected": bad})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rm_cfg(tmp_path, tiny_dir, **kw) -> RMConfig:
    base = dict(
        model=str(tiny_dir),
        data=str(tmp_path / "pairs.jsonl"),
        output_dir=str(tmp_path / "run"),
        report_to="none",
        cpu=True,
        gradient_checkpointing=False,
        per_device_batch_size=8,
        max_length=64,
        max_prompt_length=32,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        learning_rate=1e-2,
    )
    return RMConfig(**(base | kw))


def test_rm_end_to_end(tmp_path, tiny_dir):
    data = _write_data(tmp_path / "pairs.jsonl", 64)
    norm = tmp_path / "policy.jsonl"
    norm.write_text("".join(json.dumps({"prompt": w, "response": f"{w} {w}"}) + "\n" for w in WORDS))
    argv = [f"model={tiny_dir}", f"output_dir={tmp_path / 'run'}", f"data={data}", f"eval_data={data}[:32]"]
    argv += ["max_steps=12", "eval_steps=6", f"normalize_on={norm}", "report_to=none", "cpu=true"]
    argv += ["gradient_checkpointing=false", "per_device_batch_size=8", "max_length=64", "max_prompt_length=32"]
    argv += ["lr_scheduler=constant", "warmup_ratio=0", "learning_rate=1e-2", "lora_r=8", "lora_alpha=16"]
    assert cli(["rm", *argv]) == 0
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_accuracy" in r]
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in evals] == [0, 6, 12] and len(train) == 12
    assert "eval_baseline/length_accuracy" in evals[0] and "eval_baseline/shorter_accuracy" in evals[0]
    for key in ("loss", "accuracy", "margin", "ties", "rewards/chosen", "rewards/min", "rewards/max", "grad_norm"):
        assert key in train[0], key
    assert evals[-1]["eval_accuracy"] >= 0.9 > evals[0]["eval_accuracy"]  # the marker is learned, not length:
    assert evals[0]["eval_baseline/length_accuracy"] < 0.6  # the chosen response is not mostly the longer one
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"] - 0.2
    report = (run / "report.md").read_text()
    assert "length-only baseline" in report and f"{evals[-1]['eval_accuracy']:.3f}" in report
    assert (run / "config.yaml").is_file() and (run / "data_report.json").is_file()

    final = run / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    config = json.loads((final / "config.json").read_text())
    norm_info = json.loads((run / "normalization.json").read_text())
    assert config["alignlab_reward_offset"] == pytest.approx(norm_info["offset"])
    assert config["alignlab_reward_scale"] == pytest.approx(norm_info["scale"]) and norm_info["scale"] != 1.0
    assert config["pad_token_id"] != config["eos_token_id"]
    # final/README.md: the run's card; its by-hand scoring recipe gives alignlab's own normalised reward
    card = (final / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "Final eval accuracy" in card
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace('path = "."', f"path = {str(final)!r}")
    scope: dict = {}
    exec(snippet, scope)
    ours = load_reward(str(final))(["Why is the sky blue?"], ["Rayleigh scattering."])[0]
    assert scope["reward"] == pytest.approx(ours, rel=1e-4, abs=1e-5)

    plain = AutoModelForSequenceClassification.from_pretrained(final).eval()  # plain transformers
    reward = load_reward(str(final))
    assert isinstance(reward, HFRewardModel)
    assert (reward.offset, reward.scale) == reward_normalisation(plain.config) != (0.0, 1.0)
    prompts, responses = ["alpha beta", "eta eta"], ["gamma ok!", "delta delta zeta"]
    rows = [reward.encode(p, r) for p, r in zip(prompts, responses)]
    assert all(r[-1] == reward.tokenizer.eos_token_id for r in rows)
    n = max(map(len, rows))
    pad = plain.config.pad_token_id
    ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    with torch.no_grad():
        raw = reward_forward(plain, ids, attn).double()
        hf = plain(input_ids=ids, attention_mask=attn).logits.squeeze(-1).double()
    assert torch.allclose(hf, raw, rtol=1e-5, atol=1e-6)
    scored = torch.tensor(reward(prompts, responses), dtype=torch.float64)
    assert torch.allclose(scored, (raw - reward.offset) / reward.scale, rtol=1e-5, atol=1e-5)
    assert scored[0] > scored[1]  # the marker scores higher
    normed = torch.tensor(reward([w for w in WORDS], [f"{w} {w}" for w in WORDS]), dtype=torch.float64)
    assert normed.mean().item() == pytest.approx(0.0, abs=1e-5) and normed.std().item() == pytest.approx(1, abs=1e-4)
    raw_scores = HFRewardModel(str(final), normalize=False)(prompts, responses)
    assert raw_scores == pytest.approx(raw.tolist(), rel=1e-5, abs=1e-6)


def test_resume_matches_uninterrupted(tmp_path, tiny_dir):
    _write_data(tmp_path / "pairs.jsonl", 32, seed=3)
    full = train_rm(_rm_cfg(tmp_path, tiny_dir, output_dir=str(tmp_path / "full"), max_steps=4, lora=False))
    part = dict(output_dir=str(tmp_path / "part"), max_steps=4, lora=False, save_steps=2)
    train_rm(_rm_cfg(tmp_path, tiny_dir, stop_after_steps=2, **part))
    resumed = train_rm(_rm_cfg(tmp_path, tiny_dir, resume_from="latest", **part))
    assert resumed.steps == 4 and [m["loss"] for m in resumed.metrics] == [m["loss"] for m in full.metrics[2:]]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_non_finite_loss_names_the_step(tmp_path, tiny_dir, monkeypatch):
    import alignlab.recipes.rm as rm_recipe

    _write_data(tmp_path / "pairs.jsonl", 16)
    real = rm_recipe.load_reward_backbone

    def poisoned(*a, **kw):
        model, tok = real(*a, **kw)
        with torch.no_grad():
            model.score.weight.fill_(float("nan"))
        return model, tok

    monkeypatch.setattr(rm_recipe, "load_reward_backbone", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*dataset indices"):
        train_rm(_rm_cfg(tmp_path, tiny_dir, max_steps=2))


@pytest.mark.parametrize(
    "override, message",
    [
        (["lora=false", "lora_r=8"], "lora_r=8 is set but not read"),
        (["eval_steps=5"], "no eval_data"),
        (["normalize_scale=false"], "no normalize_on"),
        (["max_steps=3", "epochs=2"], "max_steps=3 replaces epochs"),
        (["center_coef=-1"], "center_coef"),
        (["beta=0.1"], "unknown config key 'beta'"),
    ],
)
def test_bad_config_keys(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config(RMConfig, None, ["data=x.jsonl", "report_to=none", *override])


def test_cli_one_line_errors(tmp_path, capsys):
    assert cli(["rm", "report_to=none", f"output_dir={tmp_path}"]) == 2
    assert "rm needs data=" in capsys.readouterr().err
    assert cli(["rm", "lora=false", "lora_alpha=8", "data=x.jsonl", "report_to=none"]) == 2
    assert "lora_alpha=8 is set but not read" in capsys.readouterr().err
