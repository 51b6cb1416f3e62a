"""Evaluation harness shared by every method: the same held-out prompts, the same sampling, the same gold.

Per method: mean gold reward (± standard error over prompts), win rate against the baseline judged by the
gold reward (ties count 1/2), paired difference vs the baseline with its standard error, KL(pi || pi_ref)
estimated from the method's own samples, mean length, share of answers that finished (EOS), and
distinct-2 diversity. KL estimator: mean over samples y ~ pi of log pi(y|x) - log pi_ref(y|x), both scored
at the sampling temperature (the exact log-probs of the distributions sampled, docs/conventions.md R6.2); an
unbiased estimate of KL between the tempered policies. Only methods whose samples come from a policy with
computable log-probs report it; the others report None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from alignlab.data.collate import pad_sequences
from alignlab.models.lora import reference_mode
from alignlab.models.scorer import SequenceScorer
from alignlab.rollout.generate import Generation


@dataclass
class MethodResult:
    name: str
    gold: list[float]  # per sample, prompt-major
    lengths: list[int]  # completion tokens (incl. EOS when finished)
    finished: list[bool]
    texts: list[str]
    kl: list[float] | None = None  # per sample log pi - log pi_ref
    extra: dict = field(default_factory=dict)

    def per_prompt(self, values: list[float], n_prompts: int) -> list[float]:
        k = len(values) // n_prompts
        return [sum(values[i * k : (i + 1) * k]) / k for i in range(n_prompts)]


def mean_se(x: list[float]) -> tuple[float, float]:
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(x) / n
    if n < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in x) / (n - 1)
    return m, math.sqrt(var / n)


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct n-grams / total n-grams over all words of all texts (corpus-level diversity)."""
    grams, total = set(), 0
    for t in texts:
        w = t.split()
        for i in range(len(w) - n + 1):
            grams.add(tuple(w[i : i + n]))
            total += 1
    return len(grams) / total if total else 0.0


@torch.no_grad()
def score_generations(
    model, gens: list[Generation], pad_id: int, temperature: float, batch_size: int = 16
) -> list[float]:
    """Summed log-probs of the sampled completion ids under ``model`` at the sampling temperature."""
    scorer = SequenceScorer(model, temperature=temperature if temperature > 0 else 1.0)
    device = next(model.parameters()).device
    out = [0.0] * len(gens)
    for s in range(0, len(gens), batch_size):
        chunk = gens[s : s + batch_size]
        ids, attn, comp = pad_sequences([g.prompt_ids for g in chunk], [g.completion_ids for g in chunk], pad_id)
        lp = scorer(ids.to(device), attn.to(device), comp.to(device)).sum.cpu().tolist()
        out[s : s + len(chunk)] = lp
    return out


def kl_to_reference(policy, tok, gens: list[Generation], temperature: float) -> list[float]:
    """Per sample log π − log π_ref on the policy's samples, both scored at ``temperature`` (π_ref: the LoRA
    policy with its adapter off)."""
    lp = score_generations(policy, gens, tok.pad_token_id, temperature)
    with reference_mode(policy):
        lr = score_generations(policy, gens, tok.pad_token_id, temperature)
    return [a - b for a, b in zip(lp, lr)]


def result_from_generations(
    name: str, gens: list[Generation], gold_fn: Callable, prompt_texts: list[str], kl: list[float] | None = None
) -> MethodResult:
    """Score ``gens`` with ``gold_fn``; a reward with terms (``score()`` -> GoldScore) also fills
    ``extra["terms"]`` with the signed per-term contributions of every sample (they add up to the total)."""
    prompts = [prompt_texts[g.prompt_index] for g in gens]
    texts = [g.text for g in gens]
    finished = [g.finished for g in gens]
    extra = {}
    if hasattr(gold_fn, "score"):
        s = gold_fn.score(prompts, texts, finished)
        gold, extra["terms"] = s.total, s.terms()
    else:
        gold = gold_fn(prompts, texts, finished)
    return MethodResult(name, list(map(float, gold)), [len(g.completion_ids) for g in gens], finished, texts, kl, extra)


def summarize(res: MethodResult, baseline: MethodResult | None, n_prompts: int) -> dict:
    """One table row. Win rate and paired difference are per prompt (samples averaged within a prompt)."""
    g_mean, g_se = mean_se(res.per_prompt(res.gold, n_prompts))
    row = {
        "method": res.name,
        "gold": g_mean,
        "gold_se": g_se,
        "length": sum(res.lengths) / len(res.lengths),
        "finished": sum(res.finished) / len(res.finished),
        "distinct2": distinct_n(res.texts, 2),
        "n_prompts": n_prompts,
        "n_samples": len(res.gold),
    }
    if res.kl is not None:
        row["kl"], row["kl_se"] = mean_se(res.kl)
    else:
        row["kl"], row["kl_se"] = None, None
    if baseline is not None:
        a = res.per_prompt(res.gold, n_prompts)
        b = baseline.per_prompt(baseline.gold, n_prompts)
        diff = [x - y for x, y in zip(a, b)]
        row["diff"], row["diff_se"] = mean_se(diff)
        row["win_rate"] = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in diff) / len(diff)
    row.update({k: v for k, v in res.extra.items() if k not in ("terms", "kl_t1")})  # per-sample lists stay out
    return row
