"""Typed containers of decoding-time alignment: per-method parameters, cost counters, per-step diagnostics
and the per-prompt output (docs/conventions.md D0, D7).

Parameters are one dataclass per method, all sharing ``CommonParams`` (which method uses which class is the
registry, alignlab.decoding.registry); ``decode(**params)`` rejects keys that do not belong to the chosen
method, so a typo or a key of another method never falls back silently (R11).
Guidance strength is the weight ``w = 1/α`` of the spec: score(z) = log π_ref(z|s) + w·Q̂(z).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


@dataclass
class CommonParams:
    max_new_tokens: int = 128  # response budget (tokens)
    stop_at_eos: bool = True  # stop at EOS and the end-of-turn ids of the vocabulary
    stop_ids: list[int] = field(default_factory=list)  # extra stop ids (always honoured)
    batch_size: int = 8  # prompts decoded together (rows = prompts × candidates × rollouts)
    seed: int = 0  # per-row generators are seeded from (seed, prompt index, sample index)
    max_prompt_length: int = 2048  # longer prompts are an error, never silently cut
    diagnostics: bool = True  # keep per-step StepInfo records

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class GreedyParams(CommonParams):
    pass


@dataclass
class SampleParams(CommonParams):
    temperature: float = 1.0  # 1.0 = the reference policy itself
    top_k: int = 0  # 0 = whole vocabulary; else draw among the k most likely tokens
    top_p: float = 1.0  # nucleus (computed after temperature and top-k)

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 for sampling (use method=greedy for argmax decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class BestOfNParams(SampleParams):
    n: int = 16  # samples per prompt; the highest-reward one is returned (lowest index on ties)
    return_all: bool = False  # keep every sample and its reward in DecodeOutput.extra["samples"]

    def validate(self) -> None:
        super().validate()
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")


@dataclass
class GuidedParams(CommonParams):
    """Shared by ARGS, controlled decoding (tokenwise) and Transfer Q*: pick among the top-k tokens of π_ref
    by log π_ref(z|s) + w·Q̂(s, z)."""

    k: int = 10  # candidates per step (top-k of the proposal model)
    w: float = 1.0  # guidance weight = 1/α; 0 = plain greedy / top-k sampling
    greedy: bool = True  # False: sample from softmax(score / temperature) over the candidates
    temperature: float = 0.7  # only for greedy=False (ARGS reference code default)

    def validate(self) -> None:
        super().validate()
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when greedy=False")
        if not math.isfinite(self.w) or self.w < 0:
            raise ValueError(f"w (= 1/alpha) must be finite and >= 0, got {self.w}")


@dataclass
class ARGSParams(GuidedParams):
    pass


@dataclass
class TQParams(GuidedParams):
    """Transfer Q* (direct): Q̂(s, z) from M rollouts of ≤ H tokens of the rollout (aligned baseline) model."""

    horizon: int = 20  # rollout tokens after the candidate (0 = ARGS)
    rollouts: int = 1  # M rollouts per candidate
    rollout_temperature: float = 0.0  # 0 = greedy rollouts (HF default decoding of the reference code)
    rollout_top_p: float = 1.0

    def validate(self) -> None:
        super().validate()
        if self.horizon < 0 or self.rollouts < 1:
            raise ValueError(f"need horizon >= 0 and rollouts >= 1, got {self.horizon}, {self.rollouts}")
        if self.rollouts > 1 and self.rollout_temperature <= 0 and self.horizon > 0:
            raise ValueError(
                "rollouts > 1 with greedy rollouts gives M identical rollouts; set rollout_temperature > 0"
            )


@dataclass
class TQIndirectParams(TQParams):
    """Indirect TQ*: self-normalised importance weights exp((r − r_BL)/β) over the rollouts. It needs M > 1
    samples drawn from ρ_BL itself (temperature 1) for the weights to be valid; horizon 5 as in the
    reference code."""

    horizon: int = 5
    rollouts: int = 4
    rollout_temperature: float = 1.0
    beta: float = 1.0  # the KL strength the baseline was aligned with

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@dataclass
class CDParams(GuidedParams):
    """Controlled decoding with a learned prefix scorer V_θ (alignlab.decoding.cd.PrefixScorer)."""

    mode: str = "tokenwise"  # "tokenwise": top-k reweighted by exp(w·V); "blockwise": best of K blocks by V
    block_size: int = 8  # blockwise: tokens per block (M_b)
    num_blocks: int = 4  # blockwise: sampled continuations per block (K)
    block_temperature: float = 1.0  # blockwise: blocks are samples of π_ref

    def validate(self) -> None:
        super().validate()
        if self.mode not in ("tokenwise", "blockwise"):
            raise ValueError(f"mode must be 'tokenwise' or 'blockwise', got {self.mode!r}")
        if self.block_size < 1 or self.num_blocks < 1 or self.block_temperature <= 0:
            raise ValueError("need block_size >= 1, num_blocks >= 1 and block_temperature > 0")


DEFAULT_PRINCIPLE = (
    "Please give a helpful, honest and harmless answer: address the request directly in a few "
    "complete sentences and avoid repetition."
)


@dataclass
class LAParams(CommonParams):
    """Linear Alignment: z = z_p + ratio·(z_p − z_0), nucleus from softmax(z_p/T) (D5)."""

    principle: str = DEFAULT_PRINCIPLE  # appended to the system prompt of the principle context
    system_prompt: str | None = None  # base system prompt of both contexts; None = the template's default
    ratio: float = 3.0  # 0 = principle prompting, −1 = plain decoding
    temperature: float = 0.5
    top_p: float = 0.8  # nucleus of the principle-conditioned distribution
    greedy: bool = True
    batched: bool = True  # both contexts in one forward pass of 2B rows

    def validate(self) -> None:
        super().validate()
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature > 0 and top_p in (0, 1]")
        if not math.isfinite(self.ratio):
            raise ValueError(f"ratio must be finite, got {self.ratio}")


@dataclass
class Cost:
    """Work done for one prompt. Counters are totals over the whole response; ``per_token`` divides by
    the generated tokens. lm_calls counts batched forward calls this prompt took part in (a call over many
    rows counts once); lm_tokens counts the token positions this prompt fed through any LM (prefill,
    decode, candidates, rollouts), the FLOP-proportional measure."""

    new_tokens: int = 0
    lm_calls: int = 0
    lm_tokens: int = 0
    policy_steps: int = 0  # decode steps of the proposal/base model
    rollouts: int = 0  # rollouts started (k·M per step for TQ*)
    rollout_tokens: int = 0  # tokens generated by the rollout model (≤ k·M·H per step)
    reward_calls: int = 0  # sequences scored by a reward model (one batched call over n sequences counts n)
    scorer_calls: int = 0  # prefix-scorer (value head) evaluations
    generations: int = 0  # complete responses sampled (best-of-N: N)
    wall_s: float = 0.0  # this prompt's share of the wall time of its batch

    def per_token(self) -> dict[str, float]:
        n = max(self.new_tokens, 1)
        return {k: v / n for k, v in dataclasses.asdict(self).items() if k != "new_tokens"}

    def add(self, other: "Cost") -> "Cost":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self


@dataclass
class StepInfo:
    """One decoding step of a candidate-scoring method (lists of length k, candidate order = top-k order).

    base_logps: log π_ref(z|s) of each candidate (fp32); q: Q̂ (reward, rollout estimate or V_θ);
    scores: log π_ref + w·Q̂; chosen: index into candidates; ess: indirect TQ* only, one per candidate.
    """

    candidates: list[int]
    base_logps: list[float]
    q: list[float]
    scores: list[float]
    chosen: int
    kl: float  # KL(π_alg ‖ top-k-renormalised π_ref) of this step's candidate distribution
    ess: list[float] | None = None


@dataclass
class DecodeOutput:
    """One prompt's response. completion_ids ends with a stop id iff finished; text never contains special
    tokens (it is what rewards see)."""

    prompt_index: int
    method: str
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finished: bool
    cost: Cost
    reward: float | None = None  # the guiding reward of the final response, when the method computed it
    kl: float | None = None  # method-specific KL figure, see ``kl_kind``
    kl_kind: str = ""
    steps: list[StepInfo] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {
            "prompt_index": self.prompt_index,
            "method": self.method,
            "text": self.text,
            "finished": self.finished,
            "completion_ids": self.completion_ids,
            "reward": self.reward,
            "kl": self.kl,
            "kl_kind": self.kl_kind,
            "cost": dataclasses.asdict(self.cost),
            "cost_per_token": self.cost.per_token(),
        }
        d.update({k: v for k, v in self.extra.items() if k not in d})
        return d
