"""Decoding-time alignment rows for the demo / harness: every method on the embedded task's eval prompts.

    rows = decoding_rows(model, tok, prompts, gold, methods=["args", "linear"], rollout_model=aligned)  # a list of rows

Each row is ``alignlab.eval.harness.summarize`` of a MethodResult (gold reward ± s.e., win rate and paired
difference vs greedy decoding on the same prompts) plus: diversity (docs/conventions.md D6, regex word tokens instead of
NLTK), coherence (MiniLM cosine instead of SimCSE), the method's KL figure and its kind, and cost per
generated token (wall ms, LM token-forwards, reward calls). Expensive methods (cd, tq-*) run on the first
``subset`` prompts; their row says so and is compared with greedy on that same subset.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from alignlab.decoding import METHODS, DecodeOutput, decode
from alignlab.decoding.metrics import coherence, diversity
from alignlab.eval.cd_ranking import CDFitSettings, fit_and_check
from alignlab.eval.harness import MethodResult, result_from_generations, summarize
from alignlab.eval.stats import term_breakdown

# A principle for Linear Alignment written for the embedded task (docs/gold_reward.md says what the gold
# reward values): a direct, relevant answer of a few complete sentences, no repetition, no disclaimers.
TASK_PRINCIPLE = (
    "Answer the request directly and helpfully in two to four complete sentences, stay on topic, "
    "do not repeat yourself, and do not add disclaimers."
)

ALL_METHODS = METHODS  # every decoding method, in the registry's order


@dataclass
class DecodingEvalSettings:
    """The decoding table's settings (docs/decoding.md, docs/demo.md "Decoding-time alignment").

    Every method runs on the same ``prompts`` test prompts (≥ 32 so the paired s.e. can separate methods) at
    ``max_new_tokens`` ≥ 64; ``subset`` < prompts restricts the expensive ones (cd, tq-*) for quick runs.
    w = 10 (α = 0.1), not the API default 1: the gold reward lies in about [0, 1] and one token changes it by
    ~0.01-0.1, while the top-k candidates' log-probs differ by nats, so w = 1 leaves greedy decoding unchanged.
    horizon 16: a Transfer Q* rollout long enough to reach past the candidate (with H = 3 it was nearly ARGS).
    """

    prompts: int = 32  # test prompts for every method
    subset: int = 32  # of those, for the expensive methods (cd, tq-direct, tq-indirect); = prompts: all
    max_new_tokens: int = 64
    k: int = 5  # candidates per step (args, cd, tq)
    w: float = 10.0  # guidance weight 1/α (args, cd, tq)
    n: int = 4  # best-of-n samples
    horizon: int = 16  # tq-direct rollout tokens
    indirect_horizon: int = 16
    indirect_rollouts: int = 2
    indirect_beta: float = 1.0
    la_ratio: float = 3.0  # beside it, always, the ratio = 0 control (the principle prompt alone)
    principle: str = TASK_PRINCIPLE
    cd_train_prompts: int = 48  # task train prompts for the prefix scorer (held out by prompt inside)
    cd_samples: int = 4
    cd_num_blocks: int = 4  # blockwise CD: best of K sampled blocks by V_θ (V compares different continuations)
    cd_block_size: int = 16
    cd_check_prompts: int = 16  # validation prompts for the within-state ranking check of V_θ
    cd_check_rollouts: int = 4
    batch_size: int = 16
    seed: int = 0
    methods: tuple = ALL_METHODS


class DecodingRows(list):
    """The harness rows -- a list, so ``rows += decoding_rows(...)`` works -- carrying the MethodResults, notes,
    timings (s) and the raw outputs (method -> list[DecodeOutput])."""

    def __init__(self, rows: list[dict], results: list[MethodResult], notes: list[str], timings: dict, outputs: dict):
        super().__init__(rows)
        self.results, self.notes, self.timings, self.outputs = results, notes, timings, outputs

    @property
    def rows(self) -> list[dict]:
        return list(self)


def merged_copy(peft_policy):
    """The aligned policy as a plain module: a copy of the LoRA-wrapped policy with the adapter merged."""
    return copy.deepcopy(peft_policy).merge_and_unload().eval()


def _result(
    name: str, outs: list[DecodeOutput], gold, prompts: list[str], kl_default: float | None = None
) -> MethodResult:
    kl = [o.kl if o.kl is not None else kl_default for o in outs]
    return result_from_generations(name, outs, gold, prompts, None if any(v is None for v in kl) else kl)


def _subset(res: MethodResult, n: int) -> MethodResult:
    terms = {k: v[:n] for k, v in res.extra.get("terms", {}).items()}
    return MethodResult(
        res.name,
        res.gold[:n],
        res.lengths[:n],
        res.finished[:n],
        res.texts[:n],
        res.kl[:n] if res.kl is not None else None,
        {"terms": terms} if terms else {},
    )


def _breakdown(res: MethodResult, base: MethodResult) -> dict:
    """Δgold vs the baseline split into the gold's signed term contributions (they add up to Δgold)."""
    if not (res.extra.get("terms") and base.extra.get("terms")):
        return {}
    keys = list(base.extra["terms"])
    b = term_breakdown(
        {k: np.array(res.extra["terms"][k]) for k in keys},
        {k: np.array(base.extra["terms"][k]) for k in keys},
        {k: 1.0 for k in keys},
    )
    return {"breakdown": b.contribution, "breakdown_dominant": b.dominant}


def _plan(s: DecodingEvalSettings, prompts, sub, guide, judge, ro, ro_name, baseline_reward, indirect_model) -> list:
    """(method, row name, prompts, parameters, inputs, guide label) per row; linear adds its ratio = 0 control.
    ``judge``: the guide column's text for the guiding reward."""
    plan = {
        "greedy": [("greedy", "greedy", prompts, {}, {}, "-")],
        "sample": [("sample", "sample T=1", prompts, {}, {}, "-")],
        "best-of-n": [("best-of-n", f"best-of-{s.n}", prompts, dict(n=s.n), dict(reward=guide), judge)],
        "args": [("args", f"args k={s.k} w={s.w:g}", prompts, dict(k=s.k, w=s.w), dict(reward=guide), judge)],
        "cd": [
            ("cd", f"cd tokenwise k={s.k} w={s.w:g}", sub, dict(k=s.k, w=s.w), {}, f"V_θ fitted on {judge}"),
            (
                "cd",
                f"cd blockwise K={s.cd_num_blocks} x {s.cd_block_size} tok",
                sub,
                dict(mode="blockwise", num_blocks=s.cd_num_blocks, block_size=s.cd_block_size),
                {},
                f"V_θ fitted on {judge}",
            ),
        ],
        "tq-direct": [
            (
                "tq-direct",
                f"tq-direct k={s.k} H={s.horizon} (rollouts: {ro_name})",
                sub,
                dict(k=s.k, w=s.w, horizon=s.horizon),
                dict(reward=guide, rollout_model=ro),
                judge,
            )
        ],
        "tq-indirect": [
            (
                "tq-indirect",
                f"tq-indirect k={s.k} H={s.indirect_horizon} M={s.indirect_rollouts}",
                sub,
                dict(k=s.k, w=s.w, horizon=s.indirect_horizon, rollouts=s.indirect_rollouts, beta=s.indirect_beta),
                dict(reward=guide, rollout_model=indirect_model, baseline_reward=baseline_reward),
                judge,
            )
        ]
        if indirect_model is not None
        else [],
        "linear": [
            (
                "linear",
                f"linear ratio={r:g}" + (" (principle prompt only: control)" if r == 0 else ""),
                prompts,
                dict(ratio=r, principle=s.principle),
                {},
                "-",
            )
            for r in (0.0, s.la_ratio)
        ],
    }
    methods = ["greedy"] + [m for m in s.methods if m != "greedy"]  # greedy first: it is every row's baseline
    return [row for m in methods for row in plan[m]]


def _timing_key(method: str, params: dict) -> str:
    """The timings/outputs key of a row: the method, told apart where one method gives two rows."""
    if method == "linear":
        return f"linear ratio={params['ratio']:g}"
    if method == "cd":
        return f"cd {params.get('mode', 'tokenwise')}"
    return method


def _fit_cd(model, tokenizer, s: DecodingEvalSettings, guide, notes: list, timings: dict):
    """CD-FUDGE prefix scorer on train prompts (held out by prompt) and its within-state ranking check on
    validation prompts: V_θ is only useful if it orders the k candidates of one state like their Monte-Carlo
    returns do (docs/decoding.md)."""
    from alignlab.task.prompts import balanced, load_task_prompts

    scorer, rep, check = fit_and_check(
        model,
        tokenizer,
        [p.instruction for p in balanced(load_task_prompts("train"), s.cd_train_prompts)],
        [p.instruction for p in balanced(load_task_prompts("validation"), s.cd_check_prompts)],
        guide,
        CDFitSettings(s.cd_samples, s.k, s.cd_check_rollouts, s.max_new_tokens, s.seed, s.batch_size),
    )
    timings["cd_train"] = rep["seconds"]
    timings["cd_check"] = check.seconds
    notes.append(
        f"cd: linear prefix scorer (ridge, l2 {rep.get('l2', '?')}, on the frozen model's final hidden states) fitted "
        f"on {rep['sequences']} sampled responses / {rep['prefixes']} prefixes of {s.cd_train_prompts} train "
        f"prompts in {rep['seconds']:.0f} s; held-out R² (by prompt) {rep['r2_heldout']:.2f}; within-state ranking "
        f"on {s.cd_check_prompts} validation prompts: {check.summary()}"
    )
    return scorer, check


def decoding_rows(
    model,
    tokenizer,
    prompts: list[str] | None = None,
    gold=None,
    *,
    methods=None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    rollout_model=None,
    indirect_model=None,
    guide_reward=None,
    baseline_reward=None,
    settings: DecodingEvalSettings | None = None,
    embedder=None,
) -> DecodingRows:
    """Run every method of ``methods`` (default: all) and build one harness row each (see module docstring).

    prompts: the eval prompt texts (default: the embedded task's first ``settings.prompts`` test prompts); the
        expensive methods use the first ``settings.subset`` of them. Greedy decoding always runs (first row):
        it is every row's baseline.
    gold: the judge (default: the gold reward). methods / max_new_tokens / seed override ``settings``.
    model: the reference policy π_ref (a plain module; ``merged_copy`` turns a LoRA policy into one).
    rollout_model: tq-direct's baseline ρ_BL, aligned to the guiding reward (e.g. the DPO model trained on
        gold-labelled pairs); None = π_ref itself (the training-free CD baseline of D3, named so in the row).
    indirect_model: tq-indirect's ρ_BL, aligned to ``baseline_reward`` (r_BL) rather than the guiding reward.
        None: the tq-indirect row is dropped and the notes say why (its estimator is only valid for a
        baseline that was aligned to r_BL).
    guide_reward: the reward the methods optimise (default: the judge itself -- optimistic, and every row says
        so in its ``guide`` column); baseline_reward: tq-indirect's r_BL (default: gold without its length term).
    """
    from alignlab.rewards import CachedEmbedder
    from alignlab.task.gold import GoldReward
    from alignlab.task.prompts import balanced, load_task_prompts

    s = settings or DecodingEvalSettings()
    over = {
        k: v
        for k, v in dict(methods=tuple(methods) if methods else None, max_new_tokens=max_new_tokens, seed=seed).items()
        if v is not None
    }
    s = dataclasses.replace(s, **over)
    unknown = sorted(set(s.methods) - set(ALL_METHODS))
    if unknown:
        raise ValueError(f"unknown decoding method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    if gold is None:
        gold = GoldReward(embedder=CachedEmbedder())
    guide = guide_reward or gold
    if baseline_reward is None:
        baseline_reward = GoldReward(embedder=gold.embedder if hasattr(gold, "embedder") else None, w_length=0.0)
    if prompts is None:
        prompts = [p.instruction for p in balanced(load_task_prompts("test"), s.prompts)]
    sub = prompts[: s.subset]
    common = dict(max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=s.seed)
    ro = rollout_model if rollout_model is not None else model
    ro_name = "aligned" if rollout_model is not None else "π_ref"
    judge = "gold (= the judge)" if guide is gold else getattr(guide, "name", "reward model")
    plan = _plan(s, prompts, sub, guide, judge, ro, ro_name, baseline_reward, indirect_model)
    rows, results, timings, outputs = [], [], {}, {}
    notes = []
    cd_fit = None  # (scorer, ranking check): one fit serves both cd rows
    base_full: MethodResult | None = None
    for method, name, ps, params, kw, guide_label in plan:
        if method == "cd":
            if cd_fit is None:
                cd_fit = _fit_cd(model, tokenizer, s, guide, notes, timings)
            kw = dict(scorer=cd_fit[0])
        t0 = time.perf_counter()  # the row's time is decoding only; cd's fitting is reported separately
        outs = decode(model, tokenizer, ps, method, **kw, **params, **common)
        key = _timing_key(method, params)
        timings[key] = time.perf_counter() - t0
        outputs[key] = outs
        res = _result(name, outs, gold, ps, kl_default=0.0 if method == "greedy" else None)
        if method == "greedy":
            base_full = res
        base = base_full if len(ps) == len(prompts) else _subset(base_full, len(ps))
        row = summarize(res, base, len(ps)) | _breakdown(res, base)
        toks = max(sum(o.cost.new_tokens for o in outs), 1)
        row.update(
            {
                "guide": guide_label,
                "kl_kind": outs[0].kl_kind or ("reference decoder" if method == "greedy" else "-"),
                "diversity": diversity(res.texts),
                "coherence": coherence(ps, res.texts, embedder),
                "ms_per_token": 1000 * sum(o.cost.wall_s for o in outs) / toks,
                "lm_tokens_per_token": sum(o.cost.lm_tokens for o in outs) / toks,
                "reward_calls_per_token": sum(o.cost.reward_calls for o in outs) / toks,
                "seconds": timings[key],
                "prompts_note": "all" if len(ps) == len(prompts) else f"first {len(ps)} of {len(prompts)} (expensive)",
            }
        )
        if method == "cd":
            row["cd_ranking_tau"] = cd_fit[1].tau_mean
        # "kl" keeps the harness meaning (KL of the output distribution to π_ref, nats per response): only
        # best-of-n (its bound) and sampling π_ref (0) have one. Greedy-selected methods output one fixed
        # response; their figure describes the decoding distribution along that path -> "kl_decoding".
        row["kl_decoding"] = (sum(o.kl for o in outs) / len(outs)) if all(o.kl is not None for o in outs) else None
        if method == "best-of-n":
            row["kl"], row["kl_se"] = outs[0].kl, 0.0
        elif not (method == "sample" and row.get("kl") == 0.0):
            row["kl"], row["kl_se"] = None, None
        rows.append(row)
        results.append(res)
    notes += _notes(s, prompts, sub, guide is gold, rollout_model, indirect_model, baseline_reward, timings)
    return DecodingRows(rows, results, notes, timings, outputs)


def _notes(s, prompts, sub, guide_is_judge, rollout_model, indirect_model, baseline_reward, timings) -> list[str]:
    notes = [
        f"decoding rows: {len(prompts)} test prompts (expensive methods: first {len(sub)}), {s.max_new_tokens} new "
        f"tokens, seed {s.seed}; win rate / Δgold are against greedy decoding of π_ref on the same prompts; s.e. "
        "over prompts (one decoding seed: greedy-selected methods are deterministic, sample and best-of-n are one "
        "draw per prompt)",
        "the guiding reward is the gold reward that also judges the rows (guide column): optimistic -- a held-out "
        "judge would show less gain"
        if guide_is_judge
        else "the guiding reward is not the judge (guide column)",
        "tq-direct: rollouts from "
        + (
            "the DPO policy trained on gold-labelled pairs (ρ_BL aligned to the guiding reward)"
            if rollout_model is not None
            else "π_ref itself (training-free CD baseline, D3)"
        ),
        f"tq-indirect: ρ_BL aligned to r_BL = {getattr(baseline_reward, 'name', 'baseline reward')}"
        if indirect_model is not None
        else "tq-indirect: row dropped -- its importance weights exp((r − r_BL)/β) are only valid for rollouts from "
        "a baseline policy aligned to r_BL, and no such policy was trained here (pass indirect_model=)",
        f"linear: ratio {s.la_ratio:g} beside ratio 0 (the principle prompt alone, no extrapolation): the difference "
        "between the two rows is what the extrapolation adds",
        "kl column: best-of-n = analytic bound log N − (N−1)/N, sample = 0 (π_ref itself); empty for greedy-selected "
        "methods, whose kl_decoding field is Σ_t KL(π_alg‖top-k π_ref) of the decoding distribution along the chosen "
        "path (args/cd/tq) or Σ_t KL(q_LA‖π_0 at T) (linear) -- not comparable to a trained policy's KL",
        "diversity = Π_{n=2..4}(1 − rep_n/100) with regex word tokens (NLTK not used); coherence = cosine of MiniLM "
        "prompt/response embeddings (SimCSE is not available offline)",
        "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
    ]
    return notes
