"""Best-of-n from a pool: the unbiased estimator and the KL of best-of-n (docs/study.md).

For one prompt with a pool of N >= n samples, sort the samples by **proxy** score ascending (rank i = 1..N). The
best-of-n pick of a uniformly random n-subset is the sample of highest proxy rank in it; rank i is that pick in
C(i-1, n-1) of the C(N, n) subsets, so the expected value of any per-sample quantity v under best-of-n is

    E_n = sum_i C(i-1, n-1) / C(N, n) * v_(i)

(Nakano et al. 2021, App. I; used by Gao et al. 2210.10760). The same weights give the expected gold, proxy,
gold terms, length or EOS share. **Ties** in the proxy: best-of-n is taken to break them uniformly at random; since
E_n is linear in the sorted values, that expectation equals E_n with every tied block's values replaced by the
block's mean (``tie_mean``), which is what ``bon_expectation`` does. KL of best-of-n to the sampling policy:
log n - (n-1)/n (Stiennon et al. 2020, App. G.3), an upper bound (Beirami et al. 2401.01879), exact only for
distinct continuous rewards; ``exact_bon_kl`` gives the exact value for a discrete distribution (tests).
"""

from __future__ import annotations

import math

import numpy as np


def kl_bon(n: int) -> float:
    """log n - (n-1)/n (nats): the analytic best-of-n KL, an upper bound (``kl_bon_upper_bound``)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_weights(pool: int, n: int) -> np.ndarray:
    """w_i = C(i-1, n-1) / C(N, n), i = 1..N (ascending proxy rank); they sum to 1. Exact integer binomials."""
    if not 1 <= n <= pool:
        raise ValueError(f"need 1 <= n <= pool, got n={n}, pool={pool}")
    total = math.comb(pool, n)
    return np.array([math.comb(i - 1, n - 1) / total for i in range(1, pool + 1)], dtype=np.float64)


def tie_mean(proxy: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` sorted by ``proxy`` ascending, each block of equal proxy scores replaced by its mean."""
    order = np.argsort(proxy, kind="stable")
    p, v = proxy[order], values[order].astype(np.float64)
    out = v.copy()
    start = 0
    for i in range(1, len(p) + 1):
        if i == len(p) or p[i] != p[start]:
            out[start:i] = v[start:i].mean()
            start = i
    return out


def bon_expectation(proxy, values, n: int) -> float:
    """Expected ``values`` of the best-of-n pick (by ``proxy``) over all n-subsets of one prompt's pool."""
    proxy, values = np.asarray(proxy, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if proxy.shape != values.shape or proxy.ndim != 1:
        raise ValueError(f"proxy and values must be 1-d of one length, got {proxy.shape} and {values.shape}")
    return float(bon_weights(len(proxy), n) @ tie_mean(proxy, values))


def bon_curve(proxy, values: dict[str, np.ndarray], ns: list[int]) -> dict[int, dict[str, tuple[float, float]]]:
    """Per n: for each named quantity ([P, N] arrays, one pool per prompt), the mean over prompts of the per-prompt
    best-of-n expectation and its standard error over prompts: {n: {name: (mean, se)}}."""
    proxy = np.asarray(proxy, dtype=np.float64)
    P, N = proxy.shape
    out: dict[int, dict[str, tuple[float, float]]] = {}
    for n in ns:
        w = bon_weights(N, n)
        row = {}
        for name, v in values.items():
            v = np.asarray(v, dtype=np.float64)
            per = np.array([w @ tie_mean(proxy[p], v[p]) for p in range(P)])
            se = float(per.std(ddof=1) / math.sqrt(P)) if P > 1 else float("nan")
            row[name] = (float(per.mean()), se)
        out[n] = row
    return out


def exact_bon_kl(probs, n: int) -> float:
    """KL(best-of-n || base) for a discrete base distribution whose outcomes are listed by increasing reward
    (distinct rewards): P_bon(i) = F(i)^n - F(i-1)^n."""
    p = np.asarray(probs, dtype=np.float64)
    cdf = np.cumsum(p)
    q = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n
    keep = q > 0
    return float(np.sum(q[keep] * np.log(q[keep] / p[keep])))
