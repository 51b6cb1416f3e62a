"""`alignlab generate` and the harness rows on tiny models (no downloads)."""

import json
import math

import pytest
import torch
import yaml
from tiny_models import save_tiny, tiny_causal_lm, tiny_tokenizer

from alignlab.cli import main as cli
from alignlab.config import build_config
from alignlab.decoding import DECODING
from alignlab.recipes.generate import method_keys
from alignlab.rewards import FunctionReward


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("gen")
    model_dir = save_tiny(root / "policy", seed=0)
    rm_tok = tiny_tokenizer(add_bos=True)  # a different tokenizer family than the policy's
    cfg = LlamaConfig(
        vocab_size=len(rm_tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=rm_tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(root / "rm")
    rm_tok.save_pretrained(root / "rm")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["hi", "tell me a story", "why?"]) + "\n")
    return root, model_dir, root / "rm", prompts


@pytest.mark.parametrize(
    "method,extra",
    [
        ("greedy", ["reward=none"]),
        ("args", ["k=4", "save_steps=true"]),
        ("tq-direct", ["k=3", "horizon=2", "rollout_model=base"]),
        ("linear", ["ratio=2", "principle=Be nice."]),
        ("best-of-n", ["n=2"]),
    ],
)
def test_generate_cli_writes_run_directory(dirs, method, extra):
    root, model_dir, rm_dir, prompts = dirs
    out = root / method
    argv = [
        "generate",
        f"method={method}",
        f"model={model_dir}",
        f"prompts={prompts}",
        f"output_dir={out}",
        "max_new_tokens=5",
        f"reward={rm_dir}",
    ] + extra
    assert cli(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "outputs.jsonl", "report.md", "summary.json"]
    rows = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hi", "tell me a story", "why?"]
    for r in rows:
        assert r["method"] == method and 1 <= r["cost"]["new_tokens"] <= 5
        assert {"lm_calls", "lm_tokens", "reward_calls", "wall_s"} <= set(r["cost"]) and "cost_per_token" in r
        assert (r["reward"] is None) == ("reward=none" in extra)
        assert ("steps" in r) == ("save_steps=true" in extra)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["prompts"] == 3
    assert summary["new_tokens"] == sum(r["cost"]["new_tokens"] for r in rows)
    report = (out / "report.md").read_text()
    assert f"# alignlab generate: {method}" in report and "| new_tokens |" in report
    assert "| per_token.lm_calls |" in report
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == method and cfg["output_dir"] == str(out)


def test_generate_cli_rejects_bad_config(dirs, capsys):
    root, model_dir, _, prompts = dirs
    assert cli(["generate", "method=beam", f"model={model_dir}"]) == 2
    assert cli(["generate", "method=greedy", "horizon=3", f"model={model_dir}"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert (
        cli(
            [
                "generate",
                "method=tq-direct",
                f"model={model_dir}",
                f"prompts={prompts}",
                "reward=none",
                f"output_dir={root / 'x'}",
            ]
        )
        == 2
    )
    assert "needs a reward" in capsys.readouterr().err
    assert not (root / "x").exists()  # validation fails before anything is written or loaded
    assert cli(["generate", "method=greedy", "output=x.jsonl"]) == 2  # the old key is gone
    assert "unknown config key 'output'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["method=greedy", "k=5"], "k"),
        (["method=args", "rollout_model=x"], "rollout_model"),
        (["method=sample", "scorer=dir"], "scorer"),
        (["method=linear", "cd_samples=2"], "cd_samples"),
        (["method=best-of-n", "save_steps=true"], "save_steps"),
        (["method=tq-direct", "rollout_model=base", "beta=2"], "beta"),
        (["method=args", "baseline_reward=gold"], "baseline_reward"),
    ],
)
def test_generate_keys_the_method_does_not_read_are_errors(overrides, key):
    from alignlab.recipes.generate import GenerateConfig

    method = overrides[0].split("=", 1)[1]
    with pytest.raises(ValueError, match="does not apply") as e:
        build_config(GenerateConfig, None, overrides)
    msg = str(e.value)
    assert msg.startswith(f"{key}=") and repr(method) in msg
    reads = msg.rsplit("are: ", 1)[1]
    want = method_keys(DECODING[method])
    assert reads == (", ".join(want) or "none") and key not in want


def test_generate_keys_the_method_reads_are_accepted():
    from alignlab.recipes.generate import GenerateConfig

    for overrides in (
        ["method=cd", "cd_samples=2"],
        ["method=cd", "scorer=dir", "mode=blockwise"],
        ["method=args", "k=5", "save_steps=true"],
        ["method=greedy", "k=None", "cd_samples=4"],
        ["method=tq-indirect", "rollout_model=base", "baseline_reward=gold", "beta=2"],
        ["method=linear", "principle=Be brief.", "reward=none"],
    ):
        build_config(GenerateConfig, None, overrides)
    with pytest.raises(ValueError, match="only applies when cd trains"):
        build_config(GenerateConfig, None, ["method=cd", "scorer=dir", "cd_samples=2"])
    with pytest.raises(ValueError, match="needs rollout_model"):
        build_config(GenerateConfig, None, ["method=tq-direct"])
    with pytest.raises(ValueError, match="needs baseline_reward"):
        build_config(GenerateConfig, None, ["method=tq-indirect", "rollout_model=base"])
    with pytest.raises(ValueError, match="needs scorer=DIR or a reward"):
        build_config(GenerateConfig, None, ["method=cd", "reward=none"])


def test_generate_keys_are_all_classified():
    """Every GenerateConfig key is common, a method parameter, or tied to a need / step diagnostics, so the
    "does not apply" rule covers each new key; every parameter key is a field of some method's parameters."""
    import dataclasses

    from alignlab.recipes import generate as g

    need_keys = {k for v in g.NEED_KEYS.values() for k in v}
    classified = set(g.COMMON_KEYS) | set(g.PARAM_KEYS) | set(g.STEP_KEYS) | need_keys
    assert {f.name for f in dataclasses.fields(g.GenerateConfig)} == classified
    assert set(g.PARAM_KEYS) <= {n for spec in DECODING.values() for n in spec.param_names()}
    assert set(g.NEED_KEYS) <= {n for spec in DECODING.values() for n in spec.needs}


class FakeEmbedder:
    def embed(self, texts):
        g = torch.Generator().manual_seed(len(texts))
        e = torch.randn(len(texts), 8, generator=g)
        return torch.nn.functional.normalize(e, dim=-1)


def test_decoding_rows_smoke():
    from alignlab.eval.decoding_rows import DecodingEvalSettings, decoding_rows

    tok = tiny_tokenizer()
    m = tiny_causal_lm(tok, seed=0)
    rew = FunctionReward(lambda p, r: r.count("e") / (1 + len(r)), "e-share")
    s = DecodingEvalSettings(
        prompts=3,
        subset=2,
        max_new_tokens=4,
        k=3,
        n=2,
        horizon=2,
        indirect_horizon=2,
        cd_train_prompts=3,
        cd_samples=2,
        cd_check_prompts=2,
        cd_check_rollouts=2,
    )
    res = decoding_rows(
        m,
        tok,
        ["alpha", "beta gamma", "delta"],
        rew,
        rollout_model=tiny_causal_lm(tok, seed=1),
        indirect_model=tiny_causal_lm(tok, seed=2),
        baseline_reward=rew,
        settings=s,
        embedder=FakeEmbedder(),
    )
    names = [r["method"] for r in res.rows]
    # every method once, and Linear Alignment beside its ratio = 0 control (the principle prompt alone)
    assert names[0] == "greedy" and len(names) == 10  # cd: tokenwise and blockwise
    assert names[-2:] == ["linear ratio=0 (principle prompt only: control)", "linear ratio=3"]
    for r in res.rows:
        for key in ("gold", "win_rate", "diversity", "coherence", "ms_per_token", "kl_kind", "prompts_note", "guide"):
            assert key in r
    # the guide column says when the guiding reward is the judge itself
    assert {r["guide"] for r in res.rows if r["method"].startswith(("args", "best-of", "tq-"))} == {
        "gold (= the judge)"
    }
    assert res.rows[0]["win_rate"] == 0.5
    assert any("first 2 of 3" in r["prompts_note"] for r in res.rows)
    assert res.rows == list(res) and res.notes and set(res.timings) >= {"greedy", "cd_train", "cd_check"}
    cds = [r for r in res.rows if r["method"].startswith("cd")]
    assert [r["method"].split()[1] for r in cds] == ["tokenwise", "blockwise"]
    tau = cds[0]["cd_ranking_tau"]  # nan when every candidate's return ties (a toy reward can be flat)
    assert (math.isnan(tau) or -1.0 <= tau <= 1.0) and any("within-state ranking" in n for n in res.notes)
    # without a baseline policy aligned to r_BL the tq-indirect row is dropped, and the notes say why
    res2 = decoding_rows(m, tok, ["alpha", "beta"], rew, methods=["tq-indirect"], settings=s, embedder=FakeEmbedder())
    assert [r["method"] for r in res2.rows] == ["greedy"] and any("row dropped" in n for n in res2.notes)
    # the demo's call: positional prompts + gold, methods / max_new_tokens / seed overrides; rows extend a list
    rows = [{"method": "base"}]
    rows += decoding_rows(
        m, tok, ["alpha", "beta"], rew, methods=["args", "linear"], max_new_tokens=3, seed=1, embedder=FakeEmbedder()
    )
    assert [r["method"] for r in rows] == [
        "base",
        "greedy",
        "args k=5 w=10",
        "linear ratio=0 (principle prompt only: control)",
        "linear ratio=3",
    ]
    with pytest.raises(ValueError, match="unknown decoding method"):
        decoding_rows(m, tok, ["alpha"], rew, methods=["beam"], embedder=FakeEmbedder())
