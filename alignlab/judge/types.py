"""Typed values that cross the judge's module boundaries: one judged order (``Readout``), one pair to judge
(``Pair``), the two-order verdict (``PairVerdict``) and the backend protocol (``JudgeBackend``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from alignlab.judge.templates import JudgeTemplate

# Why a query produced no label (counted per reason, reported; never turned into a label).
SKIP_REASONS = {
    "bad_answer": "the answer was not 1 or 2 (parse mode), neither was in the top log-probs, or non-finite logits",
    "timeout": "the request timed out on every attempt",
    "http_error": "the server answered 5xx / 429 on every attempt (or a connection error)",
    "malformed_body": "the response body was not the JSON the API promises, on every attempt",
    "too_long": "the judge prompt is longer than the judge's context (max_length)",
}


@dataclass(frozen=True)
class Readout:
    """The judge's answer for one pair shown in one order.

    p1: P("1") = P(the first shown response is better), normalised over the answers {"1", "2"}; None when the query
        failed (``error`` says why). Log-prob mode: softmax over the two tokens' log-probs; parse mode: 1.0 or 0.0.
    mode: "logprobs" or "parse" (how p1 was read). answer: the top answer token / the parsed answer text (short).
    rationale: the chain-of-thought text (cot templates; "" otherwise). error / detail: the skip reason
        (a key of SKIP_REASONS) and a one-line detail for the report.
    """

    p1: float | None
    mode: str = "logprobs"
    answer: str = ""
    rationale: str = ""
    error: str | None = None
    detail: str = ""

    @property
    def p2(self) -> float:
        """P("2") = P(the second shown response is better)."""
        return 1.0 - self.p1

    @property
    def prefers(self) -> int:
        """+1 when this order's answer prefers the first shown response, -1 the second, 0 neither (p1 = p2)."""
        return (self.p1 > self.p2) - (self.p1 < self.p2)


@dataclass(frozen=True)
class Pair:
    """One pair to judge: the context and the candidates A and B, as the plain text the judge sees."""

    context: str
    a: str
    b: str


@dataclass(frozen=True)
class PairVerdict:
    """Both orders combined (docs/rlaif.md "Protocol").

    p: P(A better) = (pass1 + pass2) / 2, computed so that judging (B, A) gives exactly 1 - p (``combine``).
    pass1: P(A better) from pass 1 alone, order (A, B): P("1"). pass2: from pass 2, order (B, A): P("2").
    consistent: both passes prefer the same candidate. tie: |p - 0.5| < tie_threshold.
    skip: why there is no label (a key of SKIP_REASONS); p and the rest are None then.
    """

    p: float | None
    pass1: float | None
    pass2: float | None
    consistent: bool | None
    tie: bool | None
    skip: str | None = None
    detail: str = ""

    def flipped(self) -> "PairVerdict":
        """The same verdict stated for B: P(B better) = 1 - p (exact: see ``combine``)."""
        if self.skip:
            return self
        return PairVerdict(1.0 - self.p, 1.0 - self.pass1, 1.0 - self.pass2, self.consistent, self.tie)


@runtime_checkable
class JudgeBackend(Protocol):
    """Reads the judge's preference for pairs already rendered by a template.

    ``judge_id`` names everything that changes the answers besides the template and the texts (model and its
    weights' fingerprint, endpoint + model name, readout settings): it is part of every cache key.
    ``readout(bodies, template)`` returns one Readout per body (``template.render`` output), in order; a failure
    is a Readout with ``error`` set, never an exception (except a configuration error such as a refused API key,
    which stops the run). ``counters()``: backend-level counts for the report (requests, retries by reason).
    """

    judge_id: str

    def readout(self, bodies: Sequence[str], template: JudgeTemplate) -> list[Readout]: ...

    def counters(self) -> dict[str, int]: ...
