"""`alignlab rlaif` end to end on tiny random models (the policy and the judge): the demo's pairs, the judge's labels,
every method of the table trained on the same prompts and evaluated with the demo's harness, the agreement block and
the cost; the config contract (docs/rlaif.md)."""

import json

import pytest
from tiny_models import save_tiny

from alignlab.cli import main as cli
from alignlab.config import ConfigError, build_config
from alignlab.judge import RLAIF_METHODS
from alignlab.recipes.rlaif import LABELS, RLAIFConfig, run_rlaif


def _tiny_cfg(tmp_path, **overrides) -> RLAIFConfig:
    """Tiny random policy and judge (a different seed), a few prompts and tokens: the whole table in seconds."""
    base = dict(
        model=str(save_tiny(tmp_path / "policy")),
        judge=str(save_tiny(tmp_path / "judge", seed=5)),
        output_dir=str(tmp_path / "run"),
        cache_dir=str(tmp_path / "judge_cache"),
        samples_per_prompt=2,
        epochs=1,
        lora_top_layers=1,
        rm_epochs=1,
        n_boot=50,
    )
    return RLAIFConfig(**(base | overrides))


def test_rlaif_tiny_end_to_end(tmp_path):
    cfg = _tiny_cfg(
        tmp_path,
        tie_threshold=0.0,  # the random judge is close to 50/50 on every pair: no pair may be dropped as a tie
        train_prompts=6,
        pair_max_new_tokens=6,
        methods=list(RLAIF_METHODS),
        per_device_batch_size=4,
        rl_steps=2,
        rl_prompts_per_step=2,
        rl_max_new_tokens=4,
        eval_prompts=4,
        eval_max_new_tokens=6,
    )
    out = run_rlaif(cfg)
    rows = out["rows"]
    assert [r["method"] for r in rows] == ["base"] + [f"{LABELS[m]} (1 seed)" for m in RLAIF_METHODS]
    for r in rows[1:]:  # every policy evaluated like the demo's: the same prompts, KL, the gold's terms
        assert r["n_prompts"] == 4 and r["kl"] is not None and "win_rate" in r
        assert abs(sum(r["breakdown"].values()) - r["diff"]) < 1e-9
    a, n_pairs = out["agreement"], out["agreement"]["pairs"]
    assert n_pairs >= 1 and a["labeled"] == n_pairs
    for key in ("agreement", "agreement_pass1", "position_consistency", "tie_rate"):
        assert a[key] is not None
    c = out["label_counts"]  # every labelled pair is kept, swapped or dropped as a tie
    assert c["kept"] + c["swapped"] + c["ties_dropped"] + c["skipped"] == n_pairs
    cost = out["cost"]
    assert cost["labels"]["queries"] == 2 * n_pairs and cost["labels"]["requested"] == 2 * n_pairs
    r = cost["d_rlaif_ratings"]  # 2 RL steps x 2 prompts x 2 samples, each rated (or answered by the cache)
    assert r["queries"] + 0 <= 8 and r["requested"] + r["cache_hits"] == r["queries"] > 0 and r["seconds"] > 0
    assert cost["total"]["queries"] == cost["labels"]["queries"] + r["queries"]
    run = tmp_path / "run"
    report = (run / "report.md").read_text()
    for text in (
        "The judge against the gold's labels",
        "position consistency",
        "Cost of the judge",
        "d-RLAIF ratings",
        "Reward model for RLOO vs RM on judge labels",
        "RL runs: reward and gold",
    ):
        assert text in report, text  # fmt: skip
    assert json.loads((run / "results.json").read_text())[1]["method"] == rows[1]["method"]
    assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    # the judge's RM trained on soft labels, held out on the gold's
    judge_rm = [json.loads(x) for x in (run / "rm_judge" / "rm_pairs_train.jsonl").read_text().splitlines()]
    assert all(0.0 <= x["p_chosen"] <= 1.0 for x in judge_rm)
    assert "p_chosen" not in (run / "rm_judge" / "rm_pairs_heldout.jsonl").read_text()
    curves = [json.loads(x) for x in (run / "rl_curves.jsonl").read_text().splitlines()]
    assert {c["run"] for c in curves} == {"rloo_judge_rm s0", "d_rlaif s0", "rloo_gold_rm s0"}
    d = [c for c in curves if c["run"] == "d_rlaif s0"]
    assert all(-1.0 <= c["proxy"] <= 1.0 for c in d)  # the judge's rating, mapped to [-1, 1]


def test_rlaif_config_contract():
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config(RLAIFConfig, None, ["judge_temperature=0"])
    with pytest.raises(ConfigError, match="rl_steps=3.*no RL method"):
        build_config(RLAIFConfig, None, ["methods=dpo_gold,dpo_judge", "rl_steps=3"])
    with pytest.raises(ConfigError, match="rm_epochs=3.*no reward model"):
        build_config(RLAIFConfig, None, ["methods=dpo_gold,d_rlaif", "rm_epochs=3"])
    with pytest.raises(ConfigError, match="rating_template"):
        build_config(RLAIFConfig, None, ["methods=dpo_gold", "rating_template=detailed"])
    with pytest.raises(ConfigError, match="unknown"):
        build_config(RLAIFConfig, None, ["methods=dpo_gold,ppo"])
    with pytest.raises(ConfigError, match="nosuch"):
        build_config(RLAIFConfig, None, ["template=nosuch"])
    cfg = build_config(RLAIFConfig, None, ["methods=dpo_gold,d_rlaif,rloo_gold_rm", "rating_template=detailed"])
    assert cfg.rating_spec == "judge:smollm2-135m-instruct:detailed"
    assert cli(["rlaif", "rl_steps=3", "methods=dpo_gold"]) == 2  # one line on stderr, exit code 2


def test_rlaif_judge_leaving_too_few_pairs_is_a_reported_skip(tmp_path):
    """A judge whose labels are (nearly) all ties leaves DPO nothing to train on: the row is skipped with its reason in
    the report and metrics.json, and the rest of the table still runs (the built-in 135M judge does this on the
    embedded pairs: 46 of 48 ties, docs/rlaif.md)."""
    cfg = _tiny_cfg(
        tmp_path,
        tie_threshold=0.49,  # every pair of the random judge (p close to 0.5) is a tie
        train_prompts=4,
        pair_max_new_tokens=4,
        methods=["dpo_judge"],
        per_device_batch_size=2,
        eval_prompts=2,
        eval_max_new_tokens=4,
    )
    out = run_rlaif(cfg)
    assert [r["method"] for r in out["rows"]] == ["base"]
    assert out["label_counts"]["ties_dropped"] == out["agreement"]["pairs"] >= 1
    why = out["skipped"]["dpo_judge"]
    assert why.startswith("not trained: the judge left 0 of") and "ties_dropped" in why
    assert f"{LABELS['dpo_judge']}: not trained" in (tmp_path / "run" / "report.md").read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped"]["dpo_judge"] == why
