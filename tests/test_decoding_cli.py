"""`alignlab generate` and the harness rows on tiny models (no downloads)."""
import json

import pytest
import torch

from alignlab.cli import main as cli
from tiny_models import save_tiny, tiny_causal_lm, tiny_tokenizer
from alignlab.rewards import FunctionReward


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    root = tmp_path_factory.mktemp("gen")
    model_dir = save_tiny(root / "policy", seed=0)
    rm_tok = tiny_tokenizer(add_bos=True)  # a different tokenizer family than the policy's
    cfg = LlamaConfig(vocab_size=len(rm_tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=rm_tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(root / "rm")
    rm_tok.save_pretrained(root / "rm")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p}) for p in ["hi", "tell me a story", "why?"]) + "\n")
    return root, model_dir, root / "rm", prompts


@pytest.mark.parametrize("method,extra", [
    ("greedy", ["reward=none"]),
    ("args", ["k=4"]),
    ("tq-direct", ["k=3", "horizon=2", "rollout_model=base"]),
    ("linear", ["ratio=2", "principle=Be nice."]),
    ("best-of-n", ["n=2"]),
])
def test_generate_cli_writes_jsonl_with_costs(dirs, method, extra):
    root, model_dir, rm_dir, prompts = dirs
    out = root / f"{method}.jsonl"
    argv = ["generate", f"method={method}", f"model={model_dir}", f"prompts={prompts}", f"output={out}",
            "max_new_tokens=5", f"reward={rm_dir}"] + extra
    assert cli(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["hi", "tell me a story", "why?"]
    for r in rows:
        assert r["method"] == method and 1 <= r["cost"]["new_tokens"] <= 5
        assert {"lm_calls", "lm_tokens", "reward_calls", "wall_s"} <= set(r["cost"]) and "cost_per_token" in r
        assert (r["reward"] is None) == ("reward=none" in extra)
    assert (root / "config.yaml").exists()


def test_generate_cli_rejects_bad_config(dirs, capsys):
    root, model_dir, _, prompts = dirs
    assert cli(["generate", "method=beam", f"model={model_dir}"]) == 2
    assert cli(["generate", "method=greedy", "horizon=3", f"model={model_dir}"]) == 2
    assert "does not apply" in capsys.readouterr().err
    assert cli(["generate", "method=tq-direct", f"model={model_dir}", f"prompts={prompts}", "reward=none",
                f"output={root / 'x.jsonl'}"]) == 2


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
    s = DecodingEvalSettings(prompts=3, subset=2, max_new_tokens=4, k=3, n=2, horizon=2, indirect_horizon=2,
                             cd_train_prompts=3, cd_samples=2)
    res = decoding_rows(m, tok, ["alpha", "beta gamma", "delta"], rew, rollout_model=tiny_causal_lm(tok, seed=1),
                        baseline_reward=rew, settings=s, embedder=FakeEmbedder())
    names = [r["method"] for r in res.rows]
    assert names[0] == "greedy" and len(names) == 8
    for r in res.rows:
        for key in ("gold", "win_rate", "diversity", "coherence", "ms_per_token", "kl_kind", "prompts_note"):
            assert key in r
    assert res.rows[0]["win_rate"] == 0.5
    assert any("first 2 of 3" in r["prompts_note"] for r in res.rows)
    assert res.rows == list(res) and res.notes and set(res.timings) >= {"greedy", "cd_train"}
    # the demo's call: positional prompts + gold, methods / max_new_tokens / seed overrides; rows extend a list
    rows = [{"method": "base"}]
    rows += decoding_rows(m, tok, ["alpha", "beta"], rew, methods=["args", "linear"], max_new_tokens=3, seed=1,
                          embedder=FakeEmbedder())
    assert [r["method"] for r in rows] == ["base", "greedy", "args k=5", "linear ratio=3"]
    with pytest.raises(ValueError, match="unknown decoding method"):
        decoding_rows(m, tok, ["alpha"], rew, methods=["beam"], embedder=FakeEmbedder())
