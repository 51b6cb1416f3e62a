"""T-REG token-reward diagnostics: hand-derived values."""

import math

import pytest

from alignlab.eval.treg_diagnostics import format_diagnostics, token_reward_diagnostics


def test_hand_example():
    rewards = [
        ([0.2, 0.1], [-0.1]),  # Σ chosen 0.3 > Σ rejected -0.1: prefers chosen
        ([0.005, 0.005], [0.3]),  # 0.01 < 0.3: prefers rejected
        ([0.0], [0.0]),
    ]  # tie: counts 1/2
    d = token_reward_diagnostics(rewards, {"relevance": [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]})
    assert d["pairs"] == 3 and d["tokens"] == 8
    assert d["pref_chosen"] == pytest.approx((1 + 0 + 0.5) / 3)
    # |r̂| sorted: 0, 0, 0.005, 0.005, 0.1, 0.1, 0.2, 0.3: median (0.005 + 0.1) / 2, 4 of 8 below 0.01
    assert d["abs_rhat_median"] == pytest.approx(0.0525)
    assert d["share_abs_below_0.01"] == pytest.approx(0.5)
    # Σr̂ differences (0.4, -0.29, 0) against term differences (1, -1, 0): perfectly ordered, r close to 1
    assert 0.99 < d["corr_with/relevance"] <= 1.0
    assert "prefers chosen in 50.0% of pairs" in format_diagnostics(d)


def test_no_signal_is_half_and_correlation_undefined():
    d = token_reward_diagnostics([([0.0], [0.0])] * 4, {"t": [(1.0, 0.0)] * 4})
    assert d["pref_chosen"] == 0.5 and math.isnan(d["corr_with/t"])
