"""`alignlab study`: a tiny end-to-end run of each mode (tiny random model, a length gold), resume, config errors,
and the HTML page in headless Chromium."""

import json
import re
from pathlib import Path

import pytest
from browser import CHROMIUM, MISSING, load_page
from tiny_models import save_tiny

from alignlab.config import ConfigError, build_config
from alignlab.recipes.study import StudyConfig, run_study
from alignlab.rewards import FunctionReward
from alignlab.study.points import checkpoint_steps, read_points

GOLD = FunctionReward(lambda p, r: min(len(r), 40) / 40 - 0.02 * max(0, len(r) - 40), name="length-gold")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    model = save_tiny(root / "tiny")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}?"}) + "\n" for i in range(12)))
    return root, model, prompts


def _cfg(setup, mode, out, **kw):
    root, model, prompts = setup
    base = dict(
        mode=mode, model=str(model), output_dir=str(root / out), train_prompts=str(prompts), pair_prompts=12,
        samples_per_prompt=3, eval_prompts=str(prompts), prompts=4, max_new_tokens=12, gen_batch_size=16, n_boot=20,
        lora_r=4, lora_alpha=8, lora_top_layers=1, heldout=0.25,
    )  # fmt: skip
    return StudyConfig(**(base | kw))


def _check_outputs(out: dict, n_points: int):
    res = json.loads(Path(out["results"]).read_text())
    assert len(res["points"]) == n_points and res["verdict"]
    assert all(p["sqrt_kl"] >= 0 and p["gold"] == p["gold"] for p in res["points"])
    html = Path(out["html"]).read_text()
    assert "Verdict" in html and html.count("data:image/png;base64,") == 2
    assert not re.search(r"https?:|href=|<script|<link", html)
    return res


def test_bon_mode_end_to_end_and_resume(setup, capsys):
    cfg = _cfg(setup, "bon", "bon", sizes=[3, 6], rm_epochs=1, pool=6, n_max=4)
    out = run_study(cfg, gold=GOLD)
    res = _check_outputs(out, 2 * 4)
    pts = [p for p in res["points"] if p["run"] == "bon rm=3"]
    assert [p["n"] for p in pts] == [1, 2, 3, 4] and pts[0]["kl"] == 0.0
    assert pts[3]["kl"] == pytest.approx(0.636294, abs=1e-6)
    assert set(res["fits"]) == {"bon rm=3", "bon rm=6"} and res["fits"]["bon rm=3"]["law"]["n"] == 4
    # n = 1 is the pool's plain mean; both proxies share the pool
    assert pts[0]["gold"] == pytest.approx(res["points"][4]["gold"])
    capsys.readouterr()
    run_study(cfg, gold=GOLD)  # everything done: nothing is recomputed
    assert "[study] bon" not in capsys.readouterr().out
    lines = (Path(cfg.output_dir) / "points.jsonl").read_text().splitlines()
    assert len(lines) == 8

    if CHROMIUM is None:
        pytest.skip(MISSING)
    dom = load_page(Path(out["html"]), Path(cfg.output_dir))
    assert "Verdict" in dom and dom.count("<img") == 2 and "bon rm=6" in dom


def test_daa_mode_end_to_end_resumes_at_checkpoints(setup, capsys):
    cfg = _cfg(setup, "daa", "daa", losses=["dpo"], betas=[0.1], checkpoints=3, epochs=2, learning_rate=0.05,
               per_device_batch_size=2)  # fmt: skip
    out = run_study(cfg, gold=GOLD)
    res = json.loads(Path(out["results"]).read_text())
    pts = res["points"]
    assert pts[0]["method"] == "base" and pts[0]["implicit_ties"] == 1.0 and pts[0]["kl"] == 0.0
    trained = [p for p in pts if p["method"] == "dpo"]
    assert len(trained) >= 2 and trained[-1]["epoch_fraction"] == 1.0
    assert all(p["implicit_acc"] is not None and p["length"] > 0 for p in trained)
    assert any(p["kl"] != 0 for p in trained)
    # a lost point is recomputed from the checkpoint before it; the others are skipped
    path = Path(cfg.output_dir) / "points.jsonl"
    rows = path.read_text().splitlines()
    path.write_text("\n".join(rows[:-1]) + "\n")
    capsys.readouterr()
    run_study(cfg, gold=GOLD)
    log = capsys.readouterr().out
    assert log.count("[study] daa/") == 1
    again = read_points(Path(cfg.output_dir))
    last = json.loads(rows[-1])
    assert again[last["key"]].gold == pytest.approx(last["gold"]) and again[last["key"]].kl == pytest.approx(last["kl"])


def test_rl_mode_end_to_end(setup):
    cfg = _cfg(setup, "rl", "rl", sizes=[6], rm_epochs=1, algos=["rloo"], rl_steps=3, checkpoints=2,
               rl_prompts_per_step=2, rl_learning_rate=0.05)  # fmt: skip
    out = run_study(cfg, gold=GOLD)
    res = _check_outputs(out, 1 + len(checkpoint_steps(3, 2)))
    pts = res["points"]
    assert pts[0]["method"] == "base" and pts[0]["proxy"] is not None
    assert all(p["train_kl"] is not None and p["proxy"] is not None for p in pts[1:])
    first = json.loads((Path(out["results"]).parent / "proxies" / "rm6.jsonl").read_text())
    assert first["cache_hit"] is False and first["size"] == 6
    # another study (another output_dir, another mode) finds the proxy in the cache instead of training it again
    again = run_study(_cfg(setup, "bon", "bon_after_rl", sizes=[6], rm_epochs=1, pool=4, n_max=2), gold=GOLD)
    second = json.loads((Path(again["results"]).parent / "proxies" / "rm6.jsonl").read_text())
    assert second["cache_hit"] is True and second["dir"] == first["dir"]


def test_unread_keys_are_errors(setup):
    with pytest.raises(ConfigError, match="n_max=8 is set but not read"):
        build_config(StudyConfig, None, ["mode=daa", "n_max=8"])
    with pytest.raises(ConfigError, match="betas"):
        build_config(StudyConfig, None, ["mode=bon", "betas=0.1"])
    with pytest.raises(ConfigError, match="sizes"):
        build_config(StudyConfig, None, ["mode=rl", "proxy=runs/rm/final", "sizes=10"])
    with pytest.raises(ConfigError, match="mode"):
        build_config(StudyConfig, None, ["mode=ppo"])
    assert build_config(StudyConfig, None, ["mode=rl", "algos=rloo,ppo"]).algos == ["rloo", "ppo"]


def test_checkpoint_steps_are_distinct_and_front_loaded():
    # 100 steps, 8 checkpoints: 4 in the first quarter at floor(25 * i / 4 + 0.5), 4 over steps 26..100
    assert checkpoint_steps(100, 8) == [6, 13, 19, 25, 44, 63, 81, 100]
    # the daa default (8 steps, 8 asked): every step, not the 6 that round-half-even gave ({1, 2, 4, 5, 6, 8})
    assert checkpoint_steps(8, 8) == list(range(1, 9))
    assert checkpoint_steps(3, 8) == [1, 2, 3] and checkpoint_steps(5, 1) == [5]
    for total in range(1, 60):
        for k in (1, 2, 3, 8):
            steps = checkpoint_steps(total, k)
            assert len(set(steps)) == min(total, k) and steps == sorted(steps) and steps[-1] == total
            if total >= 4 * k:  # room for half of them in the first quarter
                assert sum(s <= total / 4 for s in steps) == k // 2
