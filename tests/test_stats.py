"""alignlab.eval.stats: hand-derived values, bootstrap vs analytic error, determinism, validation."""

import itertools
import math
import time
import warnings

import numpy as np
import pytest
import torch

from alignlab.eval.harness import mean_se
from alignlab.eval.stats import anova_components, kl_summary, length_baselines, paired_gain, term_breakdown, win_rate

# Hand example, S = 2 seeds × P = 3 prompts.
# scores = [[4, 3, 5], [1, 1, 4]], baseline = [1, 2, 3]  ->  d = [[3, 1, 2], [0, -1, 1]]
# grand mean m = 6/6 = 1; seed (row) means r = [2, 0]; prompt (column) means c = [1.5, 0, 1.5]
# MS_seed   = P·Σ(r − m)²/(S − 1) = 3·(1 + 1)/1 = 6
# MS_prompt = S·Σ(c − m)²/(P − 1) = 2·(0.25 + 1 + 0.25)/2 = 1.5
# residuals d − r − c + m = [[0.5, 0, −0.5], [−0.5, 0, 0.5]]; MS_resid = 1/((S−1)(P−1)) = 1/2
# (check: total SS = Σ(d − m)² = 4+0+1+1+4+0 = 10 = 6 + 3 + 1)
# σ²_seed = (6 − 0.5)/3 = 11/6; σ²_prompt = (1.5 − 0.5)/2 = 1/2; σ²_resid = 1/2
# Var(D) = (11/6)/2 + (1/2)/3 + (1/2)/6 = 11/12 + 2/12 + 1/12 = 7/6
# win per cell: [[1, 1, 1], [0.5 (tie), 0, 1]] -> 4.5/6 = 0.75
SCORES = [[4.0, 3.0, 5.0], [1.0, 1.0, 4.0]]
BASE = [1.0, 2.0, 3.0]
D = np.array([[3.0, 1.0, 2.0], [0.0, -1.0, 1.0]])


def test_hand_example_mean_anova_and_analytic_se():
    est = paired_gain(SCORES, BASE)
    assert est.mean == pytest.approx(1.0)
    assert (est.sigma2_seed, est.sigma2_prompt, est.sigma2_resid) == pytest.approx((11 / 6, 0.5, 0.5))
    assert est.se_analytic == pytest.approx(math.sqrt(7 / 6))
    assert (est.n_seeds, est.n_prompts, est.n_boot) == (2, 3, 2000)
    assert est.seed_variance_included and est.null == 0.0
    assert est.exceeds_2se == (abs(est.mean) > 2 * est.se)
    assert est.ci[0] <= est.mean <= est.ci[1]


def test_anova_clips_negative_components_at_zero():
    # d = [[1, 0], [0, 1]]: row and column means all 0.5 -> MS_seed = MS_prompt = 0; residuals ±0.5,
    # MS_resid = 4·0.25/1 = 1 -> σ²_seed = max(0, (0 − 1)/2) = 0, σ²_prompt = 0, σ²_resid = 1
    assert anova_components([[1.0, 0.0], [0.0, 1.0]]) == (0.0, 0.0, 1.0)


def test_hand_example_exact_bootstrap_variance():
    # Exact two-level bootstrap variance = Σ_s(r_s − m)²/S² + Σ_p(c_p − m)²/P² + Σ e²/(S²P²)
    #   = 2/4 + 1.5/9 + 1/36 = 25/36; check by enumerating all 2²·3³ = 108 equally likely resamples.
    means = [
        D[np.ix_(i, j)].mean()
        for i in itertools.product(range(2), repeat=2)
        for j in itertools.product(range(3), repeat=3)
    ]
    assert np.var(means) == pytest.approx(25 / 36)
    est = paired_gain(SCORES, BASE, n_boot=40000, seed=1)
    assert est.se == pytest.approx(5 / 6, rel=0.02)  # Monte-Carlo relative error ≈ 1/√(2B) ≈ 0.4%


def test_hand_example_win_rate():
    wr = win_rate(SCORES, BASE)
    assert wr.mean == pytest.approx(0.75)
    assert wr.null == 0.5 and wr.exceeds_2se == (abs(wr.mean - 0.5) > 2 * wr.se)
    # same machinery: identical to paired_gain on the indicator matrix with the same seed
    w = np.array([[1.0, 1.0, 1.0], [0.5, 0.0, 1.0]])
    same = paired_gain(w, np.zeros(3), seed=0)
    assert (wr.se, wr.ci, wr.se_analytic) == (same.se, same.ci, same.se_analytic)


def test_single_seed_bootstrap_matches_analytic_se_of_mean():
    rng = np.random.default_rng(0)
    base = rng.normal(size=200)
    scores = base + 0.3 + rng.normal(size=200)
    est = paired_gain(scores[None, :], base, n_boot=4000, seed=0)
    _, se = mean_se(list(scores - base))
    assert not est.seed_variance_included and est.n_seeds == 1
    assert math.isnan(est.sigma2_seed) and math.isnan(est.sigma2_resid)
    assert est.se_analytic == pytest.approx(se, rel=1e-12)
    assert est.se == pytest.approx(se, rel=0.05)  # MC error ≈ 1.1%, bootstrap bias √(1 − 1/P) ≈ 0.25%
    one_d = paired_gain(scores, base, n_boot=4000, seed=0)  # [P] scores = one seed
    assert (one_d.mean, one_d.se, one_d.ci, one_d.n_seeds) == (est.mean, est.se, est.ci, 1)
    assert "NOT included" in str(est)


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_bootstrap_agrees_with_analytic_on_random_effects_model(data_seed):
    S, P, s_seed, s_prompt, s_resid = 8, 200, 0.2, 1.0, 1.0
    rng = np.random.default_rng(data_seed)
    d = 0.1 + rng.normal(0, s_seed, (S, 1)) + rng.normal(0, s_prompt, (1, P)) + rng.normal(0, s_resid, (S, P))
    base = rng.normal(size=P)
    est = paired_gain(d + base, base, seed=0)
    assert est.se == pytest.approx(est.se_analytic, rel=0.10)
    true_se = math.sqrt(s_seed**2 / S + s_prompt**2 / P + s_resid**2 / (S * P))
    assert est.se_analytic == pytest.approx(true_se, rel=0.35)  # σ²_seed from 8 seeds is noisy
    assert est.sigma2_resid == pytest.approx(s_resid**2, rel=0.15)


def test_seed_variance_matters_with_three_seeds():
    # Three seeds whose gains differ (σ_seed = 0.3), many prompts: the prompt-only s.e. of the per-prompt
    # mean (the harness's mean_se) is several times smaller than the combined one.
    rng = np.random.default_rng(3)
    S, P = 3, 500
    d = 0.2 + rng.normal(0, 0.3, (S, 1)) + rng.normal(0, 0.5, (1, P)) + rng.normal(0, 0.5, (S, P))
    _, naive = mean_se(list(d.mean(axis=0)))
    est = paired_gain(d, np.zeros(P))
    assert est.se > 3 * naive and est.se_analytic > 3 * naive


def test_deterministic_and_fast():
    rng = np.random.default_rng(0)
    scores, base = rng.normal(size=(8, 200)), rng.normal(size=(8, 200))
    paired_gain(scores, base)  # warm-up
    t = time.perf_counter()
    a = paired_gain(scores, base, n_boot=2000, seed=7)
    assert time.perf_counter() - t < 1.0
    assert paired_gain(scores, base, n_boot=2000, seed=7) == a
    assert paired_gain(scores, base, n_boot=2000, seed=8).se != a.se
    tt = paired_gain(torch.tensor(scores), torch.tensor(base), seed=7)  # tensors accepted
    assert tt == a


def test_per_seed_baseline_is_paired_cellwise():
    scores = np.array([[1.0, 2.0], [3.0, 5.0]])
    base = np.array([[0.0, 1.0], [3.0, 3.0]])  # d = [[1, 1], [0, 2]]
    assert paired_gain(scores, base).mean == pytest.approx(1.0)
    assert win_rate(scores, base).mean == pytest.approx((1 + 1 + 0.5 + 1) / 4)


def test_input_validation_names_shapes():
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\).*\(2, 4\)"):
        paired_gain(np.zeros((2, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        win_rate(np.zeros((2, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="got shape"):
        paired_gain(np.zeros((2, 3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 prompts"):
        paired_gain(np.zeros((3, 1)), np.zeros(1))
    with pytest.raises(ValueError, match="non-finite"):
        paired_gain([[1.0, float("nan")]], [0.0, 0.0])
    with pytest.raises(ValueError, match="n_boot"):
        paired_gain(SCORES, BASE, n_boot=1)


def test_term_breakdown_hand_example_and_signs():
    # gold = 1·quality − 0.5·length; method vs base on 2 prompts:
    # Δ quality = mean([3−1, 2−2]) = 1; Δ length = mean([10−4, 6−6]) = 3
    # contributions: 1·1 = 1 and −0.5·3 = −1.5; total = −0.5; shares −2 and 3
    tm = {"quality": [3.0, 2.0], "length": [10.0, 6.0]}
    tb = {"quality": [1.0, 2.0], "length": [4.0, 6.0]}
    br = term_breakdown(tm, tb, {"quality": 1.0, "length": 0.5}, signs={"length": -1})
    assert br.delta == pytest.approx({"quality": 1.0, "length": 3.0})
    assert br.contribution == pytest.approx({"quality": 1.0, "length": -1.5})
    assert br.total == pytest.approx(-0.5) and br.share == pytest.approx({"quality": -2.0, "length": 3.0})
    assert br.dominant == "length" and br.weights == {"quality": 1.0, "length": -0.5}
    assert term_breakdown(tm, tb, {"quality": 1.0, "length": -0.5}) == br  # signed weights, same result


def test_term_breakdown_sums_to_gold_delta():
    rng = np.random.default_rng(0)
    names = ["relevance", "fluency", "length", "stopped"]
    w = {"relevance": 1.0, "fluency": 0.3, "length": -0.01, "stopped": -0.7}
    tm = {k: rng.normal(size=(4, 50)) * 10 for k in names}
    tb = {k: rng.normal(size=50) * 10 for k in names}
    br = term_breakdown(tm, tb, w)
    gold_m = sum(w[k] * tm[k] for k in names)
    gold_b = sum(w[k] * tb[k] for k in names)
    assert sum(br.contribution.values()) == pytest.approx(br.total, rel=1e-12)
    assert br.total == pytest.approx(paired_gain(gold_m, gold_b).mean, rel=1e-10)
    assert sum(br.share.values()) == pytest.approx(1.0, rel=1e-10)


def test_term_breakdown_validation():
    with pytest.raises(ValueError, match="terms_base keys"):
        term_breakdown({"a": [1.0, 2.0]}, {"b": [1.0, 2.0]}, {"a": 1.0})
    with pytest.raises(ValueError, match="weights keys"):
        term_breakdown({"a": [1.0, 2.0]}, {"a": [1.0, 2.0]}, {})
    with pytest.raises(ValueError, match=r"\+1 or -1"):
        term_breakdown({"a": [1.0, 2.0]}, {"a": [1.0, 2.0]}, {"a": 1.0}, signs={"a": 2})
    with pytest.raises(ValueError, match=r"terms_base\['a'\] has shape \(3,\).*terms_method\['a'\] of shape \(2,\)"):
        term_breakdown({"a": [1.0, 2.0]}, {"a": [1.0, 2.0, 3.0]}, {"a": 1.0})


def test_kl_zero_when_policy_equals_ref():
    lp = -np.abs(np.random.default_rng(0).normal(size=(64, 4))) * 20
    s = kl_summary(lp, lp.copy(), np.full((64, 4), 12), np.zeros((64, 4), bool))
    assert (s.per_seq, s.per_seq_se, s.per_token, s.per_token_se, s.share_cut) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert s.sane and s.temperature == 1.0 and (s.n_prompts, s.n_samples) == (64, 256)


def test_kl_hand_example():
    # 2 prompts × 2 samples; KL̂ = policy − ref = [[1, 3], [2, 2]], lengths [[2, 4], [1, 3]]
    # k_p = [2, 2] -> per_seq 2, s.e. 0; per_token = 8/10 = 0.8; l_p = [3, 2]
    # k_p − 0.8·l_p = [−0.4, 0.4]: sd = √0.32, se = √0.32/(√2·2.5) = 0.16; cut: 1 of 4
    s = kl_summary(
        [[-1.0, -2.0], [-3.0, -4.0]],
        [[-2.0, -5.0], [-5.0, -6.0]],
        [[2, 4], [1, 3]],
        [[False, True], [False, False]],
        temperature=0.7,
    )
    assert (s.per_seq, s.per_seq_se, s.per_token) == pytest.approx((2.0, 0.0, 0.8))
    assert s.per_token_se == pytest.approx(0.16)
    assert s.share_cut == 0.25 and s.temperature == 0.7


def test_kl_negative_mean_flagged():
    rng = np.random.default_rng(0)
    ref = rng.normal(-20, 1, size=128)
    with pytest.warns(RuntimeWarning, match="sampling"):
        s = kl_summary(ref - 1.0 + rng.normal(0, 0.1, 128), ref, np.full(128, 10), np.zeros(128))
    assert not s.sane
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kl_summary(ref + 0.5, ref, np.full(128, 10), np.zeros(128)).sane


def test_kl_validation():
    with pytest.raises(ValueError, match=r"ref_logps': \(3,\)"):
        kl_summary(np.zeros(4), np.zeros(3), np.ones(4), np.zeros(4))


def test_length_baselines_hand_example():
    # pairs (chosen, rejected): (5, 3) longer, (3, 3) tie, (4, 6) shorter, (7, 2) longer
    lb = length_baselines([5, 3, 4, 7], [3, 3, 6, 2])
    assert (lb.longer_wins, lb.shorter_wins, lb.ties, lb.n_pairs) == (0.5, 0.25, 0.25, 4)
    with pytest.raises(ValueError, match=r"\(4,\).*\(3,\)"):
        length_baselines([1, 2, 3, 4], [1, 2, 3])
