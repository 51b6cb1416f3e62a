"""Evaluation metrics of the decoding papers (docs/conventions.md D6), reimplemented without NLTK/SimCSE.

- Word tokens: a regex ``\\w+|[^\\w\\s]`` (runs of word characters, or one punctuation mark), lowercased --
  close to NLTK's ``word_tokenize`` on plain English, which is not available offline.
- Coherence: cosine of the prompt and response embeddings of all-MiniLM-L6-v2 (alignlab.task.embed, the
  gold reward's encoder) instead of SimCSE (princeton-nlp/sup-simcse-bert-base-uncased is not shipped).
  Absolute values are therefore not comparable with the papers' tables; rankings usually are.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\w+|[^\w\s]")


def word_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def rep_n(tokens: list[str], n: int) -> float:
    """100·(1 − |unique n-grams| / (|n-grams| + 1)), Transfer-Q metrics.py (the +1 is theirs)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 100.0 * (1.0 - len(set(grams)) / (len(grams) + 1))


def diversity_of(tokens: list[str]) -> float:
    """Π_{n=2..4} (1 − rep_n/100) for one response."""
    out = 1.0
    for n in (2, 3, 4):
        out *= 1.0 - rep_n(tokens, n) / 100.0
    return out


def diversity(texts: list[str], limit: int | None = None) -> float:
    """Mean per-response diversity; ``limit=100`` reproduces the reference script (first 100 only)."""
    texts = texts[:limit] if limit else texts
    if not texts:
        return float("nan")
    return sum(diversity_of(word_tokens(t)) for t in texts) / len(texts)


def coherence(prompts: list[str], responses: list[str], embedder=None, limit: int | None = None) -> float:
    """Mean cosine(e(prompt), e(response)); empty responses count 0 (an empty string has no meaning to
    embed, and the gold reward scores them 0 too)."""
    if embedder is None:
        from alignlab.task.embed import get_embedder

        embedder = get_embedder()
    if limit:
        prompts, responses = prompts[:limit], responses[:limit]
    if not responses:
        return float("nan")
    live = [i for i, r in enumerate(responses) if r.strip()]
    sims = [0.0] * len(responses)
    if live:
        e = embedder.embed([prompts[i] for i in live] + [responses[i] for i in live])
        n = len(live)
        for j, i in enumerate(live):
            sims[i] = float(e[j] @ e[n + j])
    return sum(sims) / len(sims)


def win_tie(wins: int, ties: int, losses: int) -> float:
    """GPT-4-style win-tie rate of the reference script: (wins + ties) / N."""
    n = wins + ties + losses
    return (wins + ties) / n if n else float("nan")


def win_rate_half_ties(wins: int, ties: int, losses: int) -> float:
    """Win rate with ties counted as one half (alignlab's default; a distinct metric from win-tie)."""
    n = wins + ties + losses
    return (wins + 0.5 * ties) / n if n else float("nan")
