"""T-REG under 2 CPU ranks (gloo): token rewards scored as rank shards + all-reduce, training equal to 1 process."""
import pytest
import torch
from safetensors.torch import load_file

from test_distributed import TOL, _max_metric_diff, _max_param_diff, _result, _run, assets  # noqa: F401

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
    assert rw1.shape == rw2.shape and (rw1 - rw2).abs().max().item() < 1e-6 and rw1.abs().max() > 0
    mdiff = _max_metric_diff(r1["metrics"], r2["metrics"])
    assert all(v < TOL for v in mdiff.values()), mdiff
    for k in ("treg/w", "treg/reg_chosen", "treg/rhat_mean_rejected"):
        assert all(abs(a[k] - b[k]) < TOL for a, b in zip(r1["metrics"], r2["metrics"])), k
    assert _max_param_diff(p1, p2) < TOL
