"""T-REG under 2 CPU ranks (gloo): token rewards scored as rank shards + all-reduce, training equal to 1 process."""

import pytest
from safetensors.torch import load_file
from test_distributed import PARAM_TOL, _max_param_diff, _result, _run, assets, metrics_close  # noqa: F401

pytestmark = pytest.mark.slow


def _rewards(out):
    (f,) = list((out / "cache" / "treg_rewards").glob("*.safetensors"))
    return load_file(str(f))["values"]


def test_dpo_treg_two_ranks_match_one_process(tmp_path, assets):  # noqa: F811
    common = ["--max-steps", "3", "--lora", "0", "--loss", "dpo_treg"]
    two = _run(tmp_path / "two", assets["model"], assets["data16"], 2, "--per-device", "2", "--accum", "1", *common)
    one = _run(tmp_path / "one", assets["model"], assets["data16"], 1, "--per-device", "2", "--accum", "2", *common)
    r2, p2 = _result(tmp_path / "two", two, 2)
    r1, p1 = _result(tmp_path / "one", one, 1)
    rw1, rw2 = _rewards(tmp_path / "one"), _rewards(tmp_path / "two")
    # Token rewards lie in (-0.5, 0.5): an absolute tolerance is relative to their size.
    assert rw1.shape == rw2.shape and (rw1 - rw2).abs().max().item() < 1e-5 and rw1.abs().max() > 0
    # Summed log-probs of ~100 nats: compared relative to their size (fp32 rounding, CPU kernels differ).
    bad = metrics_close(r1["metrics"], r2["metrics"])
    bad += metrics_close(r1["metrics"], r2["metrics"], ("treg/w", "treg/reg_chosen", "treg/rhat_mean_rejected"))
    assert not bad, bad
    assert _max_param_diff(p1, p2) < PARAM_TOL
