"""Functional forms of reward over-optimization, fitted by linear least squares (docs/study.md).

d = sqrt(KL) in nats. Gao, Schulman, Hilton (arXiv 2210.10760), gold score relative to the initial policy:

- best-of-n: R(d) = d (a - b d)            features (d, -d^2)
- RL:        R(d) = d (a - b log d)        features (d, -d log d), with d log d := 0 at d = 0

(a, b are the paper's alpha, beta, renamed to keep them apart from the DPO beta.) Both are linear in (a, b), so
ordinary least squares fits them exactly; ``intercept=True`` adds a free W0 (Rafailov et al. arXiv 2406.02900 fit
the RL form to raw win rates, which are not 0 at d = 0). Each law is reported beside a plain quadratic baseline,
c0 + c1 x + c2 x^2 in x = d (default) or x = KL. Peaks: BoN d* = a / (2b); RL d* = exp(a/b - 1); KL* = d*^2;
reported as measured only when b > 0 and d* lies inside the observed range ("extrapolated" or "none" otherwise).
Pure numpy; no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FORMS = ("bon", "rl")


def sqrt_kl(kl: float) -> tuple[float, bool]:
    """(d, clamped): d = sqrt(max(KL, 0)), never NaN; clamped is True when a negative estimate was set to 0."""
    if kl is None or not math.isfinite(kl):
        raise ValueError(f"KL must be a finite number, got {kl!r}")
    return math.sqrt(max(kl, 0.0)), kl < 0


def _xlogx(d: np.ndarray) -> np.ndarray:
    out = np.zeros_like(d)
    pos = d > 0
    out[pos] = d[pos] * np.log(d[pos])
    return out


def features(form: str, d, intercept: bool = False) -> np.ndarray:
    """The design matrix of a law: columns (W0,) a, b."""
    d = np.asarray(d, dtype=np.float64)
    if form == "bon":
        cols = [d, -(d**2)]
    elif form == "rl":
        cols = [d, -_xlogx(d)]
    else:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if intercept:
        cols = [np.ones_like(d)] + cols
    return np.stack(cols, axis=1)


def law(form: str, coef: dict, d) -> np.ndarray:
    """R(d) of a fitted law (``coef``: a, b and optionally W0)."""
    d = np.asarray(d, dtype=np.float64)
    x = features(form, d)
    return coef.get("W0", 0.0) + coef["a"] * x[:, 0] + coef["b"] * x[:, 1]


def quadratic(coef: dict, d, in_kl: bool = False) -> np.ndarray:
    x = np.asarray(d, dtype=np.float64) ** (2 if in_kl else 1)
    return coef["c0"] + coef["c1"] * x + coef["c2"] * x**2


def _lstsq(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(x, y, rcond=None)[0]


@dataclass
class Peak:
    d: float | None
    kl: float | None
    value: float | None
    status: str  # "measured" (inside the observed d range), "extrapolated" (outside it), "none" (b <= 0)


def peak(form: str, coef: dict, d_range: tuple[float, float] | None = None) -> Peak:
    """Where the fitted law peaks: BoN d* = a/(2b), value a^2/(4b); RL d* = exp(a/b - 1), value b d*; plus W0."""
    a, b, w0 = coef["a"], coef["b"], coef.get("W0", 0.0)
    if not b > 0:
        return Peak(None, None, None, "none")
    if form == "bon":
        d = a / (2 * b)
        if d <= 0:
            return Peak(None, None, None, "none")
        value = a * a / (4 * b)
    else:
        z = a / b - 1
        if z > 700:
            return Peak(None, None, None, "none")
        d = math.exp(z)
        value = b * d
    inside = d_range is not None and d_range[0] <= d <= d_range[1]
    return Peak(d, d * d, value + w0, "measured" if inside else "extrapolated")


@dataclass
class Fit:
    form: str  # bon | rl | quadratic
    coef: dict[str, float]
    rmse: float
    r2: float
    n: int
    residuals: list[float] = field(default_factory=list)
    peak: Peak | None = None
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # bootstrap 95% intervals (coef, "d_star")
    heldout_rmse: float | None = None


def _stats(y: np.ndarray, pred: np.ndarray) -> tuple[float, float, list[float]]:
    res = y - pred
    rmse = float(np.sqrt(np.mean(res**2))) if len(y) else float("nan")
    ss = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(res**2)) / ss if ss > 0 else float("nan")
    return rmse, r2, res.tolist()


def fit_law(form: str, d, r, intercept: bool = False) -> Fit:
    """Least squares of ``r`` on the law's features. Needs at least as many points as coefficients."""
    d, r = np.asarray(d, dtype=np.float64), np.asarray(r, dtype=np.float64)
    x = features(form, d, intercept)
    if len(d) < x.shape[1]:
        raise ValueError(f"{form} fit: {len(d)} points for {x.shape[1]} coefficients")
    beta = _lstsq(x, r)
    names = (["W0"] if intercept else []) + ["a", "b"]
    coef = {k: float(v) for k, v in zip(names, beta)}
    rmse, r2, res = _stats(r, x @ beta)
    rng = (float(d.min()), float(d.max())) if len(d) else None
    return Fit(form, coef, rmse, r2, len(d), res, peak(form, coef, rng))


def fit_quadratic(d, r, in_kl: bool = False) -> Fit:
    """The baseline c0 + c1 x + c2 x^2, x = d (or KL = d^2 with ``in_kl``)."""
    x = np.asarray(d, dtype=np.float64) ** (2 if in_kl else 1)
    r = np.asarray(r, dtype=np.float64)
    if len(x) < 3:
        raise ValueError(f"quadratic fit: {len(x)} points for 3 coefficients")
    beta = _lstsq(np.stack([np.ones_like(x), x, x**2], axis=1), r)
    coef = dict(zip(("c0", "c1", "c2"), map(float, beta)))
    rmse, r2, res = _stats(r, quadratic(coef, d, in_kl))
    return Fit("quadratic_kl" if in_kl else "quadratic", coef, rmse, r2, len(x), res)


def _fit_any(form: str, d, r, intercept: bool, in_kl: bool) -> Fit:
    return fit_quadratic(d, r, in_kl) if form.startswith("quadratic") else fit_law(form, d, r, intercept)


def predict(fit: Fit, d) -> np.ndarray:
    if fit.form.startswith("quadratic"):
        return quadratic(fit.coef, d, fit.form == "quadratic_kl")
    return law(fit.form, fit.coef, d)


def bootstrap(form: str, d, r, n_boot: int = 1000, seed: int = 0, intercept: bool = False, in_kl: bool = False):
    """95% percentile intervals of each coefficient (and of d* for a law) over ``n_boot`` resamples of the points
    with replacement (seeded; resamples too degenerate to fit, e.g. one distinct d, are skipped)."""
    d, r = np.asarray(d, dtype=np.float64), np.asarray(r, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(n_boot):
        idx = rng.integers(0, len(d), len(d))
        if len(np.unique(d[idx])) < 3:
            continue
        f = _fit_any(form, d[idx], r[idx], intercept, in_kl)
        for k, v in f.coef.items():
            draws.setdefault(k, []).append(v)
        if f.peak is not None and f.peak.d is not None:
            draws.setdefault("d_star", []).append(f.peak.d)
    return {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in draws.items() if v}


def heldout_split(n: int, every: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) indices of points ordered by d: every ``every``-th point from the second on is held out."""
    held = np.zeros(n, dtype=bool)
    held[1::every] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def heldout_rmse(form: str, d, r, every: int = 4, intercept: bool = False, in_kl: bool = False) -> float | None:
    """RMSE on held-out points (``heldout_split`` over the points sorted by d) of a fit to the others; None when
    too few points remain to fit."""
    d, r = np.asarray(d, dtype=np.float64), np.asarray(r, dtype=np.float64)
    order = np.argsort(d, kind="stable")
    d, r = d[order], r[order]
    fit_i, held_i = heldout_split(len(d), every)
    need = 3 if form.startswith("quadratic") else 2 + intercept
    if len(held_i) == 0 or len(fit_i) < need:
        return None
    f = _fit_any(form, d[fit_i], r[fit_i], intercept, in_kl)
    return float(np.sqrt(np.mean((r[held_i] - predict(f, d[held_i])) ** 2)))


def fit_all(form: str, d, r, n_boot: int = 1000, seed: int = 0, intercept: bool = False, every: int = 4):
    """The law and the quadratic-in-d baseline on the same points, each with bootstrap intervals and held-out
    RMSE: {"law": Fit, "quadratic": Fit}."""
    out = {}
    for name, f_form in (("law", form), ("quadratic", "quadratic")):
        f = _fit_any(f_form, d, r, intercept, False)
        f.ci = bootstrap(f_form, d, r, n_boot, seed, intercept) if n_boot else {}
        f.heldout_rmse = heldout_rmse(f_form, d, r, every, intercept)
        out[name] = f
    return out
