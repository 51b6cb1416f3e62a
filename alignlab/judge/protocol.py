"""The labelling protocol: every pair judged in both orders, the two answers averaged (docs/rlaif.md).

Pass 1 shows (A, B) and reads p1 = P("1"); pass 2 shows (B, A) and reads p2 = P("2"), the probability that A is
better in the swapped order. The label is p = (p1 + p2) / 2 = P(A better) (Lee et al. 2309.00267; spec rlhf.md
§5.2). Position consistency: both passes prefer the same candidate. A tie: |p - 0.5| < tie_threshold.

Why the care in ``combine``: a public pipeline's swap guard could never fire, so "chosen" was always the first
candidate and half of its labels contradicted its judge. Here judging (B, A) must give exactly 1 - p, bit for bit,
and tests/test_judge.py checks it. In floating point (1 - a + 1 - b) / 2 is not always 1 - (a + b) / 2, so p is
computed from the candidates' supports a = P("1"|A,B) + P("2"|B,A) and b = P("1"|B,A) + P("2"|A,B): these two
sums swap exactly when A and B swap; the larger one gives the winner's probability w = max(a, b) / 2 >= 0.5 and
the loser gets 1 - w, which is exact both ways (1 - w is exact for w in [0.5, 1], and so is 1 - (1 - w)).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

from alignlab.judge.cache import JudgeCache
from alignlab.judge.templates import JudgeTemplate
from alignlab.judge.types import JudgeBackend, Pair, PairVerdict, Readout

DEFAULT_TIE_THRESHOLD = 0.05


def combine(ab: Readout, ba: Readout, tie_threshold: float = DEFAULT_TIE_THRESHOLD) -> PairVerdict:
    """The verdict for A from the readouts of order (A, B) and order (B, A) (module doc: exact under swap)."""
    for r in (ab, ba):
        if r.p1 is None:
            return PairVerdict(None, None, None, None, None, skip=r.error or "bad_answer", detail=r.detail)
    a = ab.p1 + ba.p2  # support for A from both passes (twice its mean probability)
    b = ba.p1 + ab.p2  # support for B
    w = max(a, b) / 2.0
    p = w if a > b else (1.0 - w if b > a else 0.5)
    consistent = ab.prefers != 0 and ab.prefers == -ba.prefers
    return PairVerdict(p, ab.p1, ba.p2, consistent, (w - 0.5) < tie_threshold)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def query_key(judge_id: str, template: JudgeTemplate, context: str, first: str, second: str) -> str:
    """The cache key of one judged order: (judge id, template hash, sha of the context, sha of the response shown
    first, sha of the response shown second). The order is the position of the two response hashes, so (A, B) and
    (B, A) are two entries, and the same two texts shown in the same order are one, whichever pair they come from."""
    parts = [judge_id, template.digest(), text_hash(context), text_hash(first), text_hash(second)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


@dataclass
class JudgeStats:
    """What judging cost and what failed, for the run's report (pairs and queries: one query = one order)."""

    pairs: int = 0
    queries: int = 0  # distinct (judge, template, context, first, second) needed
    cache_hits: int = 0
    requested: int = 0  # queries sent to the backend in this run
    failed: dict[str, int] = field(default_factory=dict)  # query failures by reason (SKIP_REASONS)
    skipped_pairs: dict[str, int] = field(default_factory=dict)  # pairs without a label, by reason
    cache_corrupt_lines: int = 0  # cache lines that did not parse: counted, never used, their queries re-asked
    backend: dict[str, int] = field(default_factory=dict)  # the backend's counters (requests, retries, ...)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Judge:
    """A backend + a template + the cache: ``judge_pairs`` labels pairs with both orders each, asking the backend
    only for orders that no cache entry answers (every success is cached at once, so an interrupted run resumes)."""

    def __init__(
        self,
        backend: JudgeBackend,
        template: JudgeTemplate,
        cache: JudgeCache | None = None,
        tie_threshold: float = DEFAULT_TIE_THRESHOLD,
        chunk_size: int = 64,
    ):
        if not 0.0 <= tie_threshold < 0.5:
            raise ValueError(f"tie_threshold must be in [0, 0.5), got {tie_threshold}")
        self.backend, self.template, self.cache = backend, template.validate(), cache
        self.tie_threshold, self.chunk_size = tie_threshold, chunk_size
        self.stats = JudgeStats(cache_corrupt_lines=cache.corrupt_lines if cache is not None else 0)

    def judge_pairs(
        self, pairs: Sequence[Pair], progress: Callable[[int, int], None] | None = None
    ) -> list[PairVerdict]:
        """One PairVerdict per pair, in order (``progress(done, total)`` after each chunk of queries)."""
        orders = [(p.context, p.a, p.b) for p in pairs] + [(p.context, p.b, p.a) for p in pairs]
        keys = [query_key(self.backend.judge_id, self.template, *q) for q in orders]
        readouts: dict[str, Readout] = {}
        todo: dict[str, tuple[str, str, str]] = {}
        for key, q in zip(keys, orders):
            if key in readouts or key in todo:
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                readouts[key] = hit
            else:
                todo[key] = q
        self.stats.pairs += len(pairs)
        self.stats.queries += len(readouts) + len(todo)
        self.stats.cache_hits += len(readouts)
        items = list(todo.items())
        for s in range(0, len(items), self.chunk_size):
            chunk = items[s : s + self.chunk_size]
            bodies = [self.template.render(*q) for _, q in chunk]
            got = self.backend.readout(bodies, self.template)
            if len(got) != len(chunk):
                raise RuntimeError(f"judge backend returned {len(got)} readouts for {len(chunk)} queries")
            self.stats.requested += len(chunk)
            for (key, _), r in zip(chunk, got):
                readouts[key] = r
                if r.p1 is None:
                    self.stats.failed[r.error or "bad_answer"] = self.stats.failed.get(r.error or "bad_answer", 0) + 1
                elif self.cache is not None:
                    self.cache.put(key, r)  # only answers are cached: a failure is asked again next run
            if progress is not None:
                progress(min(s + self.chunk_size, len(items)), len(items))
        n = len(pairs)
        out = [combine(readouts[keys[i]], readouts[keys[n + i]], self.tie_threshold) for i in range(n)]
        for v in out:
            if v.skip:
                self.stats.skipped_pairs[v.skip] = self.stats.skipped_pairs.get(v.skip, 0) + 1
        self.stats.backend = dict(self.backend.counters())
        return out
