"""Pure tensor math of the candidate-scoring methods (docs/conventions.md D0-D4); no models, no loops.

Everything is computed in fp32 (D0 "fp32 score arithmetic"). Shapes: ``[..., k]`` = candidates of one
state in top-k order (most likely first); ``[..., M]`` = rollouts of one candidate.
"""

from __future__ import annotations

import math

import torch


def topk_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(z|s) [B, k] fp32, token ids [B, k]) of the k most likely tokens, most likely first.

    log-softmax first: raw logits and log-probs differ by a per-row constant (same selection), but the
    log-probs are what the spec's score and the per-step KL are defined with.
    """
    if k > logits.shape[-1]:
        raise ValueError(f"k={k} is larger than the vocabulary ({logits.shape[-1]} tokens)")
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.topk(k, dim=-1)


def guided_scores(base_logps: torch.Tensor, q: torch.Tensor, w: float) -> torch.Tensor:
    """score(z) = log π_ref(z|s) + w·Q̂(s, z), w = 1/α. With w = 0 the result equals base_logps bit for bit
    (so guided decoding reduces exactly to greedy / top-k sampling)."""
    base = base_logps.float()
    if w == 0:
        return base.clone()
    return base + w * q.float()


def candidate_distribution(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """π_alg over the candidates: softmax(score / T), fp32, rows sum to 1."""
    return torch.softmax(scores.float() / temperature, dim=-1)


def draw(logits: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One categorical draw per row from softmax(logits) [B, n] (−inf entries are never drawn).

    Each row uses its own generator (one uniform per draw, inverse CDF), so a row's samples do not depend
    on which other rows share its batch: batched and per-prompt sampling give the same tokens.
    """
    if logits.shape[0] != len(generators):
        raise ValueError(f"{logits.shape[0]} rows but {len(generators)} generators")
    probs = torch.softmax(logits.float(), dim=-1)
    cdf = probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(cdf.device)
    # u > 0 so a zero-probability first entry (cdf 0) can never be hit; scale by the last cdf value
    # because the fp32 cumulative sum may end slightly below 1.
    thr = u.clamp_min(1e-12) * cdf[:, -1]
    idx = (cdf < thr.unsqueeze(-1)).sum(-1)
    return idx.clamp_max(logits.shape[-1] - 1)


def select(
    scores: torch.Tensor, greedy: bool, temperature: float = 1.0, generators: list[torch.Generator] | None = None
) -> torch.Tensor:
    """Index of the chosen candidate per row: argmax (first on ties) or a draw from softmax(score/T)."""
    if greedy:
        return scores.argmax(dim=-1)
    if generators is None:
        raise ValueError("sampling needs one generator per row")
    return draw(scores.float() / temperature, generators)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus, all in logit space: removed tokens get −inf (never zeroed
    probabilities, which underflow; R11). Returns fp32 [B, V]."""
    z = logits.float() / temperature
    if top_k and top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        z = z.masked_fill(~nucleus_keep(z, top_p), float("-inf"))
    return z


def nucleus_keep(z: torch.Tensor, top_p: float, head: int = 256) -> torch.Tensor:
    """Keep-mask of the nucleus of softmax(z): sorted descending, a token is dropped when the mass strictly
    before it is >= top_p; the most likely token is always kept (D5.2).

    Sorting a 50k vocabulary per row per step is the expensive part, so the ``head`` most likely tokens are
    taken first (partial sort); only rows whose head holds less than ``top_p`` of the mass fall back to a
    full sort. Every token outside the head has at least the head's mass before it, so it is dropped anyway.
    """
    probs = torch.softmax(z.float(), dim=-1)
    if top_p >= 1.0:
        return torch.ones_like(probs, dtype=torch.bool)
    m = min(head, probs.shape[-1])
    sp, order = probs.topk(m, dim=-1)
    if m < probs.shape[-1] and bool((sp.sum(-1) < top_p).any()):
        sp, order = probs.sort(dim=-1, descending=True)
    before = sp.cumsum(-1) - sp
    keep_sorted = before < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep_sorted)


def step_kl(scores: torch.Tensor, base_logps: torch.Tensor) -> torch.Tensor:
    """KL(π_alg ‖ q) per row, π_alg = softmax(scores), q = softmax(base_logps) renormalised over the top-k."""
    lp = torch.log_softmax(scores.float(), dim=-1)
    lq = torch.log_softmax(base_logps.float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def step_kl_bound(q: torch.Tensor, w: float) -> torch.Tensor:
    """Per-step bound KL(π_alg ‖ q) <= w·(max Q̂ − min Q̂) (D4.4)."""
    return w * (q.float().amax(-1) - q.float().amin(-1))


# ------------------------------------------------------------------------------------------ Q estimators


def direct_q(rewards: torch.Tensor) -> torch.Tensor:
    """Q̂ = (1/M) Σ_m r_m over the last dim (rollouts of ρ_BL aligned to the target reward; D4.2)."""
    return rewards.float().mean(-1)


def indirect_q(rewards: torch.Tensor, baseline_rewards: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalised importance-sampling estimate over the last dim (D4.3), and its ESS.

    w̃_m = exp((r_m − r_BL,m)/β);  Q̂ = Σ w̃ r / Σ w̃;  ESS = (Σ w̃)² / Σ w̃². Computed in log space: a shift
    of every log-weight by the same constant (a reward offset c(s)) cancels exactly in both.
    """
    r = rewards.double()
    logw = (r - baseline_rewards.double()) / beta
    q = (torch.softmax(logw, dim=-1) * r).sum(-1)
    ess = torch.exp(2 * torch.logsumexp(logw, -1) - torch.logsumexp(2 * logw, -1))
    return q.float(), ess.float()


# ------------------------------------------------------------------------------------------ best-of-N


def bon_kl_bound(n: int) -> float:
    """KL(π_BoN ‖ π_ref) <= log N − (N−1)/N nats; exact for a reward without ties (arXiv 2401.01879)."""
    if n < 1:
        raise ValueError(f"N must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def bon_win_rate_bound(n: int) -> float:
    """Best-of-N beats a reference sample with probability at most N/(N+1)."""
    return n / (n + 1)


def bon_exact_kl(probs: list[float], rewards: list[float], n: int) -> float:
    """Exact KL(π_BoN ‖ π) for a discrete reference over outcomes with the given rewards.

    Outcomes sorted by reward with CDF c_i: BoN puts q_i = c_i^N − c_{i−1}^N on outcome i. Tied outcomes
    form one group (BoN picks the first sample with the top reward, so within a group q ∝ p).
    """
    groups: dict[float, float] = {}
    for p, r in zip(probs, rewards):
        groups[r] = groups.get(r, 0.0) + p
    kl, c_prev = 0.0, 0.0
    for r in sorted(groups):
        p = groups[r]
        c = c_prev + p
        q = c**n - c_prev**n
        if q > 0:
            kl += q * math.log(q / p)
        c_prev = c
    return kl
