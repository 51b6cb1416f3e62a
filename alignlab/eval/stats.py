"""Statistics for the evaluation protocol (docs/evaluation.md; docs/conventions.md E2-E3): pure functions on arrays.

Shapes. A *cell* is one (seed, prompt): ``scores[s, p]`` is the aligned method's gold score on prompt p for
training/sampling seed s (several samples of one cell are averaged by the caller first). Arrays are
``[S, P]``; a 1-D ``[P]`` array means one seed (S = 1). A baseline is ``[P]`` when it has one value per prompt
(greedy decoding, the base model scored once) or ``[S, P]`` when it was sampled with the same seeds; a ``[P]``
baseline is broadcast over seeds. Inputs may be lists, numpy arrays or CPU/GPU torch tensors; everything is
computed in float64 numpy. Bootstraps are deterministic given ``seed`` (``numpy.random.default_rng``), and two
calls with the same ``seed`` and the same S, P, n_boot draw the same resamples, so a gain and a win rate from
one call each are resampled jointly.

From harness results (one ``MethodResult`` per seed, ``n_prompts`` prompts):
``np.stack([r.per_prompt(r.gold, n_prompts) for r in results])`` is the ``[S, P]`` array.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "GainEstimate",
    "paired_gain",
    "win_rate",
    "anova_components",
    "TermBreakdown",
    "term_breakdown",
    "KLSummary",
    "kl_summary",
    "LengthBaselines",
    "length_baselines",
    "plural",
]


def plural(n: int, word: str) -> str:
    """``n`` and ``word``, with an ``s`` unless n is 1: "1 seed", "3 seeds"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _arr(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, any device
        x = x.detach().to("cpu").double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values (nan/inf)")
    return a


def _cells(scores, baseline, what: str = "scores", base: str = "baseline") -> tuple[np.ndarray, np.ndarray]:
    """(g, b) as [S, P] float64 arrays; b broadcast from [P]. Raises ValueError naming both shapes."""
    g0, b = _arr(scores, what), _arr(baseline, base)
    g = g0[None, :] if g0.ndim == 1 else g0
    if g.ndim != 2:
        raise ValueError(f"{what} must be [S seeds, P prompts] or [P]; got shape {g0.shape}")
    if b.shape == g.shape[1:]:
        b = np.broadcast_to(b, g.shape)
    elif b.shape != g.shape:
        raise ValueError(
            f"{base} has shape {b.shape}; expected {g.shape[1:]} or {g.shape} to match {what} of shape {g0.shape}"
        )
    if g.shape[1] < 2:
        raise ValueError(f"need at least 2 prompts; {what} has shape {g0.shape}")
    return g, b


def anova_components(d) -> tuple[float, float, float]:
    """Variance components (σ²_seed, σ²_prompt, σ²_resid) of ``d`` [S, P] from the two-way random-effects ANOVA.

    Model d[s, p] = μ + a_s + c_p + e_sp, one observation per cell. With row means r_s, column means c̄_p and the
    grand mean m:  MS_seed = P·Σ_s (r_s − m)² / (S − 1),  MS_prompt = S·Σ_p (c̄_p − m)² / (P − 1),
    MS_resid = Σ (d − r_s − c̄_p + m)² / ((S − 1)(P − 1)).  From E[MS_seed] = σ²_resid + P·σ²_seed and
    E[MS_prompt] = σ²_resid + S·σ²_prompt:  σ²_seed = max(0, (MS_seed − MS_resid)/P),
    σ²_prompt = max(0, (MS_prompt − MS_resid)/S),  σ²_resid = MS_resid.
    With S = 1 the seed and residual components are not identified: returns (nan, var_p(d), nan), where var_p
    is the sample variance (ddof 1) over prompts.
    """
    d = np.atleast_2d(_arr(d, "d"))
    S, P = d.shape
    if S == 1:
        return float("nan"), float(np.var(d[0], ddof=1)), float("nan")
    m, r, c = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seed = P * np.sum((r - m) ** 2) / (S - 1)
    ms_prompt = S * np.sum((c - m) ** 2) / (P - 1)
    ms_resid = np.sum((d - r[:, None] - c[None, :] + m) ** 2) / ((S - 1) * (P - 1))
    return float(max(0.0, (ms_seed - ms_resid) / P)), float(max(0.0, (ms_prompt - ms_resid) / S)), float(ms_resid)


@dataclass(frozen=True)
class GainEstimate:
    """A mean over (seed, prompt) cells with its two-level bootstrap error; see ``paired_gain``.

    ``se_analytic`` is the ANOVA cross-check; ``exceeds_2se`` is |mean − null| > 2·se (null = 0 for a gain,
    0.5 for a win rate). ``seed_variance_included`` is False when S = 1: the s.e. then covers prompts only.
    """

    mean: float
    se: float
    ci: tuple[float, float]
    se_analytic: float
    sigma2_seed: float
    sigma2_prompt: float
    sigma2_resid: float
    n_seeds: int
    n_prompts: int
    n_boot: int
    seed_variance_included: bool
    exceeds_2se: bool
    null: float = 0.0

    def __str__(self) -> str:
        note = "" if self.seed_variance_included else ", seed variance NOT included"
        return (
            f"{self.mean:.4g} ± {self.se:.2g} (95% CI [{self.ci[0]:.4g}, {self.ci[1]:.4g}]; "
            f"{plural(self.n_seeds, 'seed')} × {plural(self.n_prompts, 'prompt')}{note})"
        )


def _boot_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot] replicate means of x [S, P]: resample S rows, then P columns, with replacement; mean of cells.

    Index arrays i [B, S], j [B, P] are turned into per-replicate counts n_i [B, S], n_j [B, P], so the mean of
    x[i_b][:, j_b] is n_i,b · x · n_j,b / (S·P): O(B·S·P) work without materialising [B, S, P]. S = 1 draws no
    seed indices (prompt-only bootstrap).
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2; got {n_boot}")
    S, P = x.shape
    rng = np.random.default_rng(seed)
    rows = np.arange(n_boot)[:, None]
    if S > 1:
        i = rng.integers(0, S, size=(n_boot, S))
        ni = np.bincount((rows * S + i).ravel(), minlength=n_boot * S).reshape(n_boot, S)
    else:
        ni = np.ones((n_boot, 1))
    j = rng.integers(0, P, size=(n_boot, P))
    nj = np.bincount((rows * P + j).ravel(), minlength=n_boot * P).reshape(n_boot, P)
    return np.einsum("bp,bp->b", ni @ x, nj) / (S * P)


def _estimate(x: np.ndarray, n_boot: int, seed: int, null: float) -> GainEstimate:
    S, P = x.shape
    reps = _boot_means(x, n_boot, seed)
    mean, se = float(x.mean()), float(reps.std(ddof=1))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    s2s, s2p, s2e = anova_components(x)
    var = s2p / P if S == 1 else s2s / S + s2p / P + s2e / (S * P)
    return GainEstimate(
        mean,
        se,
        (float(lo), float(hi)),
        math.sqrt(var),
        s2s,
        s2p,
        s2e,
        S,
        P,
        n_boot,
        S > 1,
        bool(abs(mean - null) > 2 * se),
        null,
    )


def paired_gain(scores, baseline, *, n_boot: int = 2000, seed: int = 0) -> GainEstimate:
    """Paired gain D = mean_{s,p} d[s, p],  d = scores[s, p] − baseline[p]  (or − baseline[s, p]).

    scores: [S seeds, P prompts] (or [P] for one seed); baseline: [P] or [S, P] (see module docstring).
    s.e.: two-level bootstrap, B = n_boot replicates; each resamples the S seeds with replacement, then the P
    prompts with replacement, and takes the mean of d over the S·P resampled cells; se = std (ddof 1) of the B
    means, ``ci`` = their 2.5/97.5 percentiles. With S = 1 only prompts are resampled and
    ``seed_variance_included`` is False.
    Cross-check: se_analytic² = σ²_seed/S + σ²_prompt/P + σ²_resid/(S·P) (``anova_components``; S = 1:
    var_p(d)/P). In expectation the bootstrap variance is
    ≈ (1 − 1/S)·σ²_seed/S + σ²_prompt/P + 3σ²_resid/(S·P): it shrinks the seed term for few seeds (by 1/3 at
    S = 3) and counts the residual about three times, so compare ``se`` with ``se_analytic`` and distrust a
    claim that holds under only one.
    ``exceeds_2se`` = |D| > 2·se under this combined se.
    """
    g, b = _cells(scores, baseline)
    return _estimate(g - b, n_boot, seed, null=0.0)


def win_rate(scores, baseline, *, n_boot: int = 2000, seed: int = 0) -> GainEstimate:
    """Win rate W = mean_{s,p} w[s, p],  w = 1 if scores > baseline, 0.5 if equal, 0 otherwise.

    Per cell (seed, prompt), shapes as ``paired_gain``; the s.e., interval and ANOVA cross-check are those of
    ``paired_gain`` applied to w (same resampling for the same ``seed``). ``null`` = 0.5, so ``exceeds_2se`` is
    |W − 0.5| > 2·se. (The harness's single-run win rate is per prompt with samples averaged first.)
    """
    g, b = _cells(scores, baseline)
    w = np.where(g > b, 1.0, np.where(g == b, 0.5, 0.0))
    return _estimate(w, n_boot, seed, null=0.5)


@dataclass(frozen=True)
class TermBreakdown:
    """Per-term gains: ``delta[k]`` (raw), ``contribution[k]`` (signed weight × delta), ``share[k]``
    (contribution / total; nan when total == 0), ``total`` = Δ of the gold, ``weights`` (signed, as used)."""

    delta: dict[str, float]
    contribution: dict[str, float]
    share: dict[str, float]
    total: float
    weights: dict[str, float]

    @property
    def dominant(self) -> str:
        """The term whose contribution has the largest magnitude."""
        return max(self.contribution, key=lambda k: abs(self.contribution[k]))


def term_breakdown(terms_method: dict, terms_base: dict, weights: dict, *, signs: dict | None = None) -> TermBreakdown:
    """Split a gold gain into its terms, for gold = Σ_k w_k·term_k with signed weights w_k.

    terms_method[k]: [S, P] or [P]; terms_base[k]: [P] or the same shape (paired as in ``paired_gain``).
    Δ_k = mean_{s,p}(term_method_k − term_base_k);  contribution_k = w_k·Δ_k;  total = Σ_k contribution_k,
    which equals Δ gold = mean_{s,p}(gold_method − gold_base) by linearity;  share_k = contribution_k / total.
    Weights: either signed (a penalty has a negative weight), or positive magnitudes plus ``signs`` (dict of
    ±1, missing keys = +1), used as w_k·signs_k. Shares can be negative or exceed 1 when terms offset.
    """
    keys = list(terms_method)
    for name, dct in (("terms_base", terms_base), ("weights", weights)):
        if set(dct) != set(keys):
            raise ValueError(f"{name} keys {sorted(dct)} differ from terms_method keys {sorted(keys)}")
    signs = dict(signs or {})
    if set(signs) - set(keys):
        raise ValueError(f"signs has unknown keys {sorted(set(signs) - set(keys))}")
    if any(v not in (1, -1) for v in signs.values()):
        raise ValueError(f"signs must be +1 or -1; got {signs}")
    w = {k: float(weights[k]) * signs.get(k, 1) for k in keys}
    delta = {}
    for k in keys:
        g, b = _cells(terms_method[k], terms_base[k], f"terms_method[{k!r}]", f"terms_base[{k!r}]")
        delta[k] = float((g - b).mean())
    contrib = {k: w[k] * delta[k] for k in keys}
    total = float(math.fsum(contrib.values()))
    share = {k: (contrib[k] / total if total != 0 else float("nan")) for k in keys}
    return TermBreakdown(delta, contrib, share, total, w)


@dataclass(frozen=True)
class KLSummary:
    """KL(π‖π_ref) estimate; see ``kl_summary``."""

    per_seq: float
    per_seq_se: float
    per_token: float
    per_token_se: float
    share_cut: float
    n_prompts: int
    n_samples: int
    temperature: float
    sane: bool


def kl_summary(policy_logps, ref_logps, lengths, cut_by_budget, *, temperature: float = 1.0) -> KLSummary:
    """KL̂ per sequence, KL̂(x, y) = log π(y|x) − log π_ref(y|x) = Σ_t [log π(y_t|·) − log π_ref(y_t|·)].

    Inputs: per-sample summed completion log-probs of the policy and the reference on the policy's own samples,
    token counts, and whether the sample was cut by the token budget (no EOS); each [P] (one sample per prompt)
    or [P, K] (K samples per prompt), all the same shape. The headline figure has both log-probs at T = 1 on
    samples drawn at T = 1 without top-k/top-p; a figure at another sampling temperature is passed with
    ``temperature`` set so that it is labelled.
    per_seq = mean over prompts of k_p (k_p = mean of KL̂ over the prompt's samples), per_seq_se = sd_p(k_p)/√P.
    per_token = Σ KL̂ / Σ lengths (ratio of means), per_token_se by the delta method over prompts:
    sd_p(k_p − per_token·l_p)/(√P·mean_p l_p), l_p the prompt's mean length.
    share_cut = mean(cut_by_budget). The budget truncates both distributions, so the figure is the KL of the
    truncated ones. ``sane`` is False (and a RuntimeWarning is issued) when per_seq < −2·per_seq_se: KL is
    ≥ 0 in expectation, so sampling and scoring disagree (padding, temperature, position ids).
    """
    lp, lr, n = _arr(policy_logps, "policy_logps"), _arr(ref_logps, "ref_logps"), _arr(lengths, "lengths")
    cut = _arr(cut_by_budget, "cut_by_budget")
    shapes = {"policy_logps": lp.shape, "ref_logps": lr.shape, "lengths": n.shape, "cut_by_budget": cut.shape}
    if len(set(shapes.values())) != 1 or lp.ndim not in (1, 2) or lp.size == 0:
        raise ValueError(f"inputs must share one shape [P] or [P, K]; got {shapes}")
    if np.any(n < 0):
        raise ValueError("lengths must be >= 0")
    kl = (lp - lr).reshape(lp.shape[0], -1)
    n = n.reshape(kl.shape)
    P = kl.shape[0]
    kp, lpm = kl.mean(axis=1), n.mean(axis=1)
    per_seq = float(kp.mean())
    per_seq_se = float(kp.std(ddof=1) / math.sqrt(P)) if P > 1 else float("nan")
    total_len = float(n.sum())
    per_token = float(kl.sum() / total_len) if total_len > 0 else float("nan")
    if P > 1 and total_len > 0:
        per_token_se = float(np.std(kp - per_token * lpm, ddof=1) / (math.sqrt(P) * lpm.mean()))
    else:
        per_token_se = float("nan")
    sane = not (P > 1 and per_seq < -2 * per_seq_se)
    if not sane:
        warnings.warn(
            f"mean KL {per_seq:.4g} is below -2 s.e. ({per_seq_se:.2g}) over {kl.size} samples: sampling "
            "and scoring disagree (padding, temperature, position ids?)",
            RuntimeWarning,
            stacklevel=2,
        )
    return KLSummary(
        per_seq, per_seq_se, per_token, per_token_se, float((cut != 0).mean()), P, kl.size, float(temperature), sane
    )


@dataclass(frozen=True)
class LengthBaselines:
    """Length-only accuracies on preference pairs; longer_wins + shorter_wins + ties = 1."""

    longer_wins: float
    shorter_wins: float
    ties: float
    n_pairs: int


def length_baselines(len_chosen, len_rejected) -> LengthBaselines:
    """Accuracy of the length-only rules on preference pairs, to print beside any pairs accuracy.

    len_chosen, len_rejected: [N] lengths (tokens, words or characters: the caller's unit, the same for both).
    longer_wins = mean(len_chosen > len_rejected), shorter_wins = mean(len_chosen < len_rejected), ties = mean(==).
    Strict, like ``rewards/accuracies``: a tie counts for neither rule; an accuracy that gives ties ½ compares
    with longer_wins + ties/2.
    """
    c, r = _arr(len_chosen, "len_chosen"), _arr(len_rejected, "len_rejected")
    if c.ndim != 1 or c.shape != r.shape or c.size == 0:
        raise ValueError(f"len_chosen {c.shape} and len_rejected {r.shape} must be the same non-empty [N]")
    return LengthBaselines(float((c > r).mean()), float((c < r).mean()), float((c == r).mean()), int(c.size))
