"""The decoding methods: one ``DecodingSpec`` per method, the only table that says which parameters, loop and
inputs a method has (``decode`` dispatches through it; ``alignlab generate`` validates its config with it).

A runner is ``run(policy: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost]) -> list[DecodeOutput]``;
everything method-specific reaches it through ``ctx`` (parameters, reward, rollout model, scorer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from alignlab.decoding.cd import run_cd
from alignlab.decoding.guided import run_guided
from alignlab.decoding.la import run_la
from alignlab.decoding.loops import run_bon, run_plain
from alignlab.decoding.types import (
    ARGSParams,
    BestOfNParams,
    CDParams,
    CommonParams,
    GreedyParams,
    LAParams,
    SampleParams,
    TQIndirectParams,
    TQParams,
)

# What a method may need besides the policy and the prompts (decode's keyword arguments of the same names).
NEEDS = ("reward", "rollout_model", "baseline_reward", "scorer")


@dataclass(frozen=True)
class DecodingSpec:
    """One decoding method.

    name: the ``method=`` value. params: its parameter dataclass (CommonParams and the method's own).
    run: its loop (see the module docstring). needs: the inputs it requires, a subset of NEEDS.
    step_diagnostics: its outputs carry per-step StepInfo records (candidates, Q̂, scores).
    summary: one line, what it does and what it costs per generated token.
    """

    name: str
    params: type[CommonParams]
    run: Callable
    needs: frozenset[str]
    step_diagnostics: bool
    summary: str

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"{self.name}: unknown needs {sorted(unknown)}; known: {NEEDS}")

    def param_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.params)]

    def make_params(self, **kw) -> CommonParams:
        """The validated parameter object; unknown keys are an error that lists the valid ones."""
        names = self.param_names()
        bad = sorted(set(kw) - set(names))
        if bad:
            raise ValueError(f"parameter(s) {bad} do not apply to method {self.name!r}; valid: {sorted(names)}")
        p = self.params(**kw)
        p.validate()
        return p


def _spec(name, params, run, needs=(), step_diagnostics=False, summary="") -> DecodingSpec:
    return DecodingSpec(name, params, run, frozenset(needs), step_diagnostics, summary)


DECODING: dict[str, DecodingSpec] = {
    s.name: s
    for s in [
        _spec("greedy", GreedyParams, run_plain, summary="argmax of π_ref; 1 LM call per token"),
        _spec(
            "sample",
            SampleParams,
            run_plain,
            summary="a draw from π_ref (temperature / top-k / top-p); 1 LM call per token",
        ),
        _spec(
            "best-of-n",
            BestOfNParams,
            run_bon,
            needs=("reward",),
            summary="n samples of π_ref, the highest-reward one is kept; n LM rows per token, n reward calls per "
            "response",
        ),
        _spec(
            "args",
            ARGSParams,
            run_guided,
            needs=("reward",),
            step_diagnostics=True,
            summary="top-k tokens of π_ref rescored by w·reward of the partial sequence; 1 LM call + k reward calls "
            "per token",
        ),
        _spec(
            "cd",
            CDParams,
            run_cd,
            needs=("scorer",),
            step_diagnostics=True,
            summary="controlled decoding: top-k tokens rescored by a learned prefix scorer (or the best of K sampled "
            "blocks); 1 LM call over k rows + k scorer calls per token",
        ),
        _spec(
            "tq-direct",
            TQParams,
            run_guided,
            needs=("reward", "rollout_model"),
            step_diagnostics=True,
            summary="Transfer Q*: top-k tokens rescored by the mean reward of M rollouts (≤ H tokens) of the aligned "
            "model; ≤ H LM calls over k·M rows + k·M reward calls per token",
        ),
        _spec(
            "tq-indirect",
            TQIndirectParams,
            run_guided,
            needs=("reward", "rollout_model", "baseline_reward"),
            step_diagnostics=True,
            summary="Transfer Q* with importance weights exp((r − r_BL)/β) over the rollouts; as tq-direct, with "
            "2·k·M reward calls per token",
        ),
        _spec(
            "linear",
            LAParams,
            run_la,
            summary="Linear Alignment: logits extrapolated from the plain to the principle-prompted context; 1 LM "
            "call over 2 rows per token",
        ),
    ]
}
METHODS: tuple[str, ...] = tuple(DECODING)


def get_spec(method: str) -> DecodingSpec:
    if method not in DECODING:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return DECODING[method]


def make_params(method: str, **kw) -> CommonParams:
    """The validated parameters of ``method``; unknown keys are an error that lists the valid ones."""
    return get_spec(method).make_params(**kw)
