"""The demo's wiring end to end on a tiny random model: pairs -> train (two methods) -> eval -> decoding rows ->
report. Values are checked for internal consistency (the numbers in the report are the numbers returned)."""

import json

import pytest
from tiny_models import save_tiny

from alignlab.config import ConfigError, build_config
from alignlab.eval.decoding_rows import ALL_METHODS
from alignlab.recipes.demo import DemoConfig, run_demo


def test_demo_tiny_end_to_end(tmp_path):
    model_dir = save_tiny(tmp_path / "tiny")
    cfg = DemoConfig(
        model=str(model_dir),
        output_dir=str(tmp_path / "demo"),
        train_prompts=6,
        samples_per_prompt=2,
        pair_max_new_tokens=6,
        methods=["dpo", "dpo_treg"],
        seeds=[0],
        epochs=1,
        per_device_batch_size=4,
        lora_top_layers=0,
        eval_prompts=4,
        eval_max_new_tokens=6,
        decoding_prompts=3,
        decoding_subset=2,
        decoding_max_new_tokens=3,
        decoding=list(ALL_METHODS),
        eval_temperature=0.7,
        n_boot=200,
    )
    out = run_demo(cfg)
    rows = out["rows"]
    assert [r["method"] for r in rows] == ["base", "dpo (1 seed)", "dpo_treg (1 seed)"]
    for r in rows[1:]:  # one seed: the s.e. covers prompts only, and the row says so
        assert r["seed_variance_included"] is False and r["diff_se"] >= 0
        # the per-term contributions add up to the gain; KL at T = 1 comes from separate T = 1 samples
        assert abs(sum(r["breakdown"].values()) - r["diff"]) < 1e-9 and r["kl"] is not None
        assert "kl_sampling_t" in r
    assert rows[0]["diff"] == 0.0 and rows[0]["win_rate"] == 0.5  # base vs itself
    assert all(r["n_prompts"] == 4 for r in rows)
    drows = out["decoding_rows"]
    assert drows[0]["method"] == "greedy" and drows[0]["diff"] == 0.0
    # tq-indirect is dropped (no baseline policy aligned to r_BL is trained); linear adds its ratio = 0 control
    # and cd runs tokenwise and blockwise
    assert len(drows) == len(ALL_METHODS) + 1 and not any(r["method"].startswith("tq-indirect") for r in drows)
    expensive = [r for r in drows if r["method"].startswith(("cd", "tq-"))]
    assert len(expensive) == 3 and all(r["n_prompts"] == 2 for r in expensive)
    for r in drows[1:]:  # every decoding gain is split into the gold's terms, which add up to it
        assert abs(sum(r["breakdown"].values()) - r["diff"]) < 1e-9
    # TQ*'s rollouts come from the trained DPO policy, and the row says so
    assert any("rollouts: aligned" in r["method"] for r in drows)
    run = tmp_path / "demo"
    report = (run / "report.md").read_text()
    assert "## Decoding-time alignment" in report and "win vs greedy" in report and "## Gain by gold term" in report
    page = (run / "report.html").read_text()  # the same tables as one page; the decoding gains as a bar chart
    assert page.count("<img ") == 2 and (run / "report_decoding.png").is_file()
    saved = json.loads((run / "results.json").read_text())
    assert [r["gold"] for r in saved] == [r["gold"] for r in rows]
    assert len(json.loads((run / "results_decoding.json").read_text())) == len(drows)
    gens = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 3 * 4  # base + 2 methods, 4 eval prompts each


def test_demo_tiny_rlhf(tmp_path):
    """The RLHF branch: pairs -> proxy RM (held-out accuracy beside the length baselines) -> RLOO and PPO against
    it (gold tracked per step) -> the same evaluation as DPO, one table; the proxy/gold curves and their plot."""
    model_dir = save_tiny(tmp_path / "tiny")
    cfg = DemoConfig(
        model=str(model_dir),
        output_dir=str(tmp_path / "demo"),
        train_prompts=6,
        samples_per_prompt=2,
        pair_max_new_tokens=6,
        methods=["dpo", "rloo", "ppo"],
        epochs=1,
        per_device_batch_size=4,
        lora_top_layers=1,
        rm_epochs=1,
        rl_steps=2,
        rl_prompts_per_step=2,
        rl_max_new_tokens=4,
        eval_prompts=4,
        eval_max_new_tokens=6,
        n_boot=50,
    )
    out = run_demo(cfg)
    rows = out["rows"]
    assert [r["method"] for r in rows] == ["base", "dpo (1 seed)", "rloo (1 seed)", "ppo (1 seed)"]
    for r in rows[1:]:  # evaluated like DPO: the same prompts, the gold's terms, KL at T = 1
        assert r["n_prompts"] == 4 and r["kl"] is not None
        assert abs(sum(r["breakdown"].values()) - r["diff"]) < 1e-9
    run = tmp_path / "demo"
    curves = [json.loads(line) for line in (run / "rl_curves.jsonl").read_text().splitlines()]
    assert [(c["run"], c["step"]) for c in curves] == [("rloo s0", 1), ("rloo s0", 2), ("ppo s0", 1), ("ppo s0", 2)]
    assert all(isinstance(c["proxy"], float) and isinstance(c["gold"], float) for c in curves)
    for algo in ("rloo", "ppo"):  # the curve is the RL run's own log, proxy and gold of the same rollouts
        logged = [json.loads(line) for line in (run / f"rl_{algo}_seed0" / "metrics.jsonl").read_text().splitlines()]
        assert [m["gold"] for m in logged] == [c["gold"] for c in curves if c["run"] == f"{algo} s0"]
    report = (run / "report.md").read_text()
    assert (run / "report_rl.png").is_file() and "![proxy vs gold](report_rl.png)" in report
    assert "length only: the longer response wins" in report and "proxy RM, trained" in report
    # the RM's data: TRL-format pairs, held-out prompts disjoint from its training prompts
    read = lambda name: [json.loads(line) for line in (run / name).read_text().splitlines()]  # noqa: E731
    train, held = read("rm_pairs_train.jsonl"), read("rm_pairs_heldout.jsonl")
    assert set(train[0]) == {"prompt", "chosen", "rejected"} and held
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert len(read("rl_prompts.jsonl")) == 6 and (run / "rm" / "final" / "config.json").is_file()
    assert (run / "report.html").read_text().count("<img ") == 2


def test_demo_rl_keys_need_an_rl_method():
    """The RLHF keys are read only with an RL method: set without one they are an error (no silent options)."""
    with pytest.raises(ConfigError, match="rl_steps=5.*no RL method"):
        build_config(DemoConfig, None, ["methods=dpo", "rl_steps=5"])
    with pytest.raises(ConfigError, match="rm_epochs"):
        build_config(DemoConfig, None, ["rm_epochs=3"])
    cfg = build_config(DemoConfig, None, ["methods=dpo,rloo,ppo", "rl_steps=5", "rm_epochs=3"])
    assert cfg.methods == ["dpo", "rloo", "ppo"] and cfg.rl_steps == 5
    with pytest.raises(ValueError, match="unknown"):
        build_config(DemoConfig, None, ["methods=dpo,reinforce"])
    # PPO's own learning rate: read only when PPO runs; RLOO keeps rl_learning_rate
    with pytest.raises(ConfigError, match="ppo_learning_rate=0.0005.*ppo is not among methods"):
        build_config(DemoConfig, None, ["methods=dpo,rloo", "ppo_learning_rate=5e-4"])
    cfg = build_config(DemoConfig, None, ["methods=rloo,ppo"])  # the validation-tuned defaults
    assert (cfg.rl_lr("rloo"), cfg.rl_lr("ppo"), cfg.rl_lr("grpo")) == (1e-3, 3e-4, 1e-3)
    cfg = build_config(DemoConfig, None, ["methods=ppo", "rl_learning_rate=2e-3", "ppo_learning_rate=5e-4"])
    assert (cfg.rl_lr("rloo"), cfg.rl_lr("ppo")) == (2e-3, 5e-4)


def _tiny_dpo_demo(model_dir, output_dir, **overrides) -> DemoConfig:
    """DPO alone on a tiny random model: 6 train prompts x 2 samples, 4 evaluation prompts, a few tokens each."""
    base = dict(
        model=str(model_dir),
        output_dir=str(output_dir),
        train_prompts=6,
        samples_per_prompt=2,
        pair_max_new_tokens=6,
        methods=["dpo"],
        epochs=1,
        per_device_batch_size=4,
        lora_top_layers=1,
        eval_prompts=4,
        eval_max_new_tokens=6,
    )
    return DemoConfig(**(base | overrides))


def test_demo_tiny_proxy_guided_decoding(tmp_path):
    """decoding_guide=both: the proxy RM is trained on the pairs (no RL method needed) and the decoding methods run
    once guided by the gold and once by the proxy, judged by the gold under one greedy baseline."""
    cfg = _tiny_dpo_demo(
        save_tiny(tmp_path / "tiny"),
        tmp_path / "demo",
        rm_epochs=1,
        decoding=["greedy", "best-of-n", "args"],
        decoding_prompts=3,
        decoding_subset=2,
        decoding_max_new_tokens=3,
        decoding_guide="both",
        n_boot=50,
    )
    drows = run_demo(cfg)["decoding_rows"]
    names = [r["method"] for r in drows]
    assert names[0] == "greedy" and names.count("greedy") == 1
    plain = [n for n in names[1:] if not n.endswith(" [proxy]")]
    assert [n + " [proxy]" for n in plain] == [n for n in names if n.endswith(" [proxy]")] and plain
    for r in drows[1:]:
        assert r["guide"] == ("proxy RM" if r["method"].endswith("[proxy]") else "gold (= the judge)")
    assert (tmp_path / "demo" / "rm" / "final" / "config.json").is_file()
    assert "RLHF: proxy reward model" in (tmp_path / "demo" / "report.md").read_text()
    with pytest.raises(ConfigError, match="decoding_guide"):
        build_config(DemoConfig, None, ["decoding_guide=proxy"])  # no decoding methods
    cfg = build_config(DemoConfig, None, ["decoding=greedy,args", "decoding_guide=proxy", "rm_epochs=3"])
    assert cfg.needs_proxy and cfg.rm_epochs == 3
    with pytest.raises(ConfigError, match="rl_steps"):
        build_config(DemoConfig, None, ["decoding=greedy", "decoding_guide=proxy", "rl_steps=3"])


def test_demo_is_reproducible_on_one_machine(tmp_path, monkeypatch):
    """Two runs of the same config with empty caches (pairs sampled, trained, evaluated anew) print the same numbers,
    bit for bit: every sampler and the training are seeded. Across CPUs they need not agree (docs/demo.md: other
    kernels change the last bits of the logits and a sampled token can flip), which is why this runs twice here."""
    model_dir = save_tiny(tmp_path / "tiny")

    def run(tag: str) -> list[dict]:
        monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / f"cache_{tag}"))
        return run_demo(_tiny_dpo_demo(model_dir, tmp_path / tag, decoding=[], n_boot=50))["rows"]

    first, second = run("a"), run("b")
    keys = ("gold", "diff", "diff_se", "win_rate", "kl", "breakdown")
    assert [[r.get(k) for k in keys] for r in first] == [[r.get(k) for k in keys] for r in second]
    assert first[1]["kl"] != 0.0  # the trained row moved away from the base: the comparison is not vacuous
