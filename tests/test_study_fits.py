"""The over-optimization fits and the best-of-n estimator against hand-derived values (docs/study.md; the numbers
are those of the spec's test list, worked out in natural logs)."""

import itertools
import math

import numpy as np
import pytest

from alignlab.study.bon import bon_curve, bon_expectation, bon_weights, exact_bon_kl, kl_bon, tie_mean
from alignlab.study.fits import bootstrap, features, fit_all, fit_law, fit_quadratic, heldout_rmse, peak, sqrt_kl

D4 = [0.5, 1.0, 2.0, 3.0]


def test_kl_bon_values_and_monotone():
    want = {1: 0.0, 2: 0.193147, 4: 0.636294, 16: 1.835089, 64: 3.174508, 1000: 5.908755, 1024: 5.932448}
    for n, v in want.items():
        assert kl_bon(n) == pytest.approx(v, abs=1e-6)
    assert kl_bon(60_000) == pytest.approx(10.002117, abs=1e-6)
    assert math.sqrt(kl_bon(2)) == pytest.approx(0.439485, abs=1e-6)
    assert math.sqrt(kl_bon(60_000)) == pytest.approx(3.162612, abs=1e-6)
    vals = [kl_bon(n) for n in range(1, 200)]
    assert all(b > a for a, b in zip(vals, vals[1:]))


def test_exact_discrete_bon_kl_is_below_the_formula():
    for probs, want in (
        ([0.5, 0.5], {2: 0.130812, 4: 0.459356, 16: 0.692963}),
        ([1 / 2, 1 / 3, 1 / 6], {2: 0.139780, 4: 0.553659}),
    ):
        for n, v in want.items():
            assert exact_bon_kl(probs, n) == pytest.approx(v, abs=1e-6)
            assert exact_bon_kl(probs, n) <= kl_bon(n)


def test_bon_estimator_hand_values():
    gold = [0.1, 0.4, 0.2, 0.9]  # already in proxy order
    proxy = [1.0, 2.0, 3.0, 4.0]
    for n, v in {1: 0.4, 2: 0.583333, 3: 0.725, 4: 0.9}.items():
        assert bon_expectation(proxy, gold, n) == pytest.approx(v, abs=1e-6)
    for n in range(1, 5):
        assert bon_weights(4, n).sum() == pytest.approx(1.0, abs=1e-12)


def _brute(proxy, gold, n):
    """Mean over every n-subset of the gold of its max-proxy member, ties broken uniformly (mean over the tied)."""
    vals = []
    for sub in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in sub)
        vals.append(np.mean([gold[i] for i in sub if proxy[i] == top]))
    return float(np.mean(vals))


@pytest.mark.parametrize("ties", [False, True])
def test_bon_estimator_equals_enumeration_over_subsets(ties):
    rng = np.random.default_rng(3)
    N = 9
    proxy = rng.integers(0, 4, N).astype(float) if ties else rng.normal(size=N)
    gold = rng.normal(size=N)
    for n in range(1, N + 1):
        assert bon_expectation(proxy, gold, n) == pytest.approx(_brute(proxy, gold, n), abs=1e-12)


def test_bon_curve_means_over_prompts():
    proxy = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    gold = np.array([[0.1, 0.4, 0.2, 0.9], [0.9, 0.2, 0.4, 0.1]])
    curve = bon_curve(proxy, {"gold": gold}, [1, 4])
    assert curve[1]["gold"][0] == pytest.approx(0.4) and curve[4]["gold"][0] == pytest.approx(0.9)
    assert curve[4]["gold"][1] == pytest.approx(0.0)
    assert list(tie_mean(np.array([2.0, 1.0, 2.0]), np.array([1.0, 5.0, 3.0]))) == [5.0, 2.0, 2.0]


def test_rl_form_exact_recovery_and_peak():
    f = fit_law("rl", D4, [0.673287, 1.0, 1.306853, 1.352082])
    assert f.coef["a"] == pytest.approx(1.0, abs=2e-6) and f.coef["b"] == pytest.approx(0.5, abs=2e-6)
    exact = [d * (1 - 0.5 * math.log(d)) for d in D4]
    f = fit_law("rl", D4, exact)
    assert abs(f.coef["a"] - 1) < 1e-9 and abs(f.coef["b"] - 0.5) < 1e-9
    p = peak("rl", {"a": 1.0, "b": 0.5}, (0.5, 3.0))
    assert (p.d, p.value, p.kl) == pytest.approx((math.e, 1.359141, 7.389056), abs=1e-6)
    assert p.status == "measured"


def test_rl_form_with_intercept():
    exact = [0.3 + d * (0.25 - 0.12 * math.log(d)) for d in D4]
    f = fit_law("rl", D4, exact, intercept=True)
    assert [f.coef[k] for k in ("W0", "a", "b")] == pytest.approx([0.3, 0.25, 0.12], abs=1e-9)
    assert (f.peak.d, f.peak.value, f.peak.kl) == pytest.approx((2.954512, 0.654541, 8.729138), abs=1e-5)


def test_bon_form_recovery_and_peak():
    f = fit_law("bon", D4, [0.35, 0.6, 0.8, 0.6])
    assert f.coef == pytest.approx({"a": 0.8, "b": 0.2}, abs=1e-12)
    assert (f.peak.d, f.peak.value, f.peak.kl, f.peak.status) == pytest.approx((2.0, 0.8, 4.0, "measured"))


def test_zero_d_is_finite_and_sqrt_kl_clamps():
    x = features("rl", [0.0, 1.0, 2.0])
    assert np.isfinite(x).all() and x[0].tolist() == [0.0, 0.0]
    assert sqrt_kl(-0.3) == (0.0, True) and sqrt_kl(4.0) == (2.0, False)


def test_law_beats_quadratic_in_kl_on_noiseless_rl_data():
    d = np.linspace(0.1, 4, 30)
    r = d * (1 - 0.5 * np.log(d))
    assert fit_law("rl", d, r).rmse < 1e-9
    assert fit_quadratic(d, r, in_kl=True).rmse == pytest.approx(0.150183, abs=1e-6)
    both = fit_all("rl", d, r, n_boot=50)
    assert both["law"].heldout_rmse < 1e-9 < both["quadratic"].heldout_rmse


def test_noisy_recovery_over_seeds():
    d = np.linspace(0.05, 6, 60)
    truth = d * (1 - 0.5 * np.log(d))
    a, b = [], []
    for seed in range(200):
        f = fit_law("rl", d, truth + np.random.default_rng(seed).normal(0, 0.02, len(d)))
        a.append(f.coef["a"])
        b.append(f.coef["b"])
    assert max(abs(x - 1) for x in a) < 0.02 and max(abs(x - 0.5) for x in b) < 0.02
    assert np.std(a) == pytest.approx(0.0033, abs=0.001) and np.std(b) == pytest.approx(0.0022, abs=0.0008)


def test_peak_guard_and_bootstrap_intervals():
    assert peak("bon", {"a": 1.0, "b": -0.1}).status == "none"
    assert peak("bon", {"a": 1.0, "b": 0.1}, (0.0, 2.0)).status == "extrapolated"  # d* = 5 > 2
    d = np.linspace(0.2, 4, 20)
    r = d * (0.8 - 0.2 * d) + np.random.default_rng(0).normal(0, 0.01, 20)
    ci = bootstrap("bon", d, r, n_boot=200, seed=1)
    assert ci["a"][0] < 0.8 < ci["a"][1] and ci["b"][0] < 0.2 < ci["b"][1] and ci["d_star"][0] < 2 < ci["d_star"][1]
    assert ci == bootstrap("bon", d, r, n_boot=200, seed=1)  # seeded
    assert heldout_rmse("bon", d[:2], r[:2]) is None
