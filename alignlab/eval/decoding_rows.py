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

from alignlab.decoding import METHODS, DecodeOutput, decode, train_prefix_scorer
from alignlab.decoding.metrics import coherence, diversity
from alignlab.eval.harness import MethodResult, result_from_generations, summarize

# A principle for Linear Alignment written for the embedded task (docs/gold_reward.md says what the gold
# reward values): a direct, relevant answer of a few complete sentences, no repetition, no disclaimers.
TASK_PRINCIPLE = (
    "Answer the request directly and helpfully in two to four complete sentences, stay on topic, "
    "do not repeat yourself, and do not add disclaimers."
)

ALL_METHODS = METHODS  # every decoding method, in the registry's order


@dataclass
class DecodingEvalSettings:
    """Small settings so all methods together fit the demo's time budget on a 2-core CPU (docs/decoding.md).

    w = 10 (α = 0.1), not the API default 1: the gold reward lies in about [0, 1] and one token changes it by
    ~0.01-0.1, while the top-k candidates' log-probs differ by nats, so w = 1 leaves greedy decoding unchanged.
    """

    prompts: int = 12  # eval prompts for the cheap methods (greedy, sample, best-of-n, args, linear)
    subset: int = 4  # eval prompts for the expensive methods (cd, tq-direct, tq-indirect)
    max_new_tokens: int = 24
    k: int = 5  # candidates per step (args, cd, tq)
    w: float = 10.0  # guidance weight 1/α (args, cd, tq)
    n: int = 4  # best-of-n samples
    horizon: int = 3  # tq-direct rollout tokens
    indirect_horizon: int = 2
    indirect_rollouts: int = 2
    indirect_beta: float = 1.0
    la_ratio: float = 3.0
    principle: str = TASK_PRINCIPLE
    cd_train_prompts: int = 16  # task train prompts for the prefix scorer
    cd_samples: int = 3
    batch_size: int = 12
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
    return MethodResult(
        res.name,
        res.gold[:n],
        res.lengths[:n],
        res.finished[:n],
        res.texts[:n],
        res.kl[:n] if res.kl is not None else None,
    )


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
    guide_reward=None,
    baseline_reward=None,
    settings: DecodingEvalSettings | None = None,
    embedder=None,
) -> DecodingRows:
    """Run every method of ``methods`` (default: all) and build one harness row each (see module docstring).

    prompts: the eval prompt texts (default: the embedded task's first ``settings.prompts`` eval prompts); the
        expensive methods use the first ``settings.subset`` of them. Greedy decoding always runs (first row):
        it is every row's baseline.
    gold: the judge (default: the gold reward). methods / max_new_tokens / seed override ``settings``.
    model: the reference policy π_ref (a plain module; ``merged_copy`` turns a LoRA policy into one).
    rollout_model: TQ*'s aligned baseline (e.g. the DPO model); None = π_ref itself (the training-free CD
        baseline of D3, named so in the row).
    guide_reward: the reward the methods optimise (default: the judge itself -- optimistic, see the notes);
        baseline_reward: tq-indirect's r_BL (default: gold without its length term, a stand-in for "the
        reward the baseline was aligned to").
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
    plan = {
        "greedy": ("greedy", prompts, {}, {}),
        "sample": ("sample", prompts, {}, {}),
        "best-of-n": (f"best-of-{s.n}", prompts, dict(n=s.n), dict(reward=guide)),
        "args": (f"args k={s.k}", prompts, dict(k=s.k, w=s.w), dict(reward=guide)),
        "cd": (f"cd k={s.k}", sub, dict(k=s.k, w=s.w), {}),
        "tq-direct": (
            f"tq-direct k={s.k} H={s.horizon} (rollouts: {ro_name})",
            sub,
            dict(k=s.k, w=s.w, horizon=s.horizon),
            dict(reward=guide, rollout_model=ro),
        ),
        "tq-indirect": (
            f"tq-indirect k={s.k} H={s.indirect_horizon} M={s.indirect_rollouts}",
            sub,
            dict(k=s.k, w=s.w, horizon=s.indirect_horizon, rollouts=s.indirect_rollouts, beta=s.indirect_beta),
            dict(reward=guide, rollout_model=ro, baseline_reward=baseline_reward),
        ),
        "linear": (f"linear ratio={s.la_ratio:g}", prompts, dict(ratio=s.la_ratio, principle=s.principle), {}),
    }
    rows, results, timings, outputs = [], [], {}, {}
    notes = []
    base_full: MethodResult | None = None
    methods = ["greedy"] + [m for m in s.methods if m != "greedy"]  # greedy first: it is every row's baseline
    for method in methods:
        name, ps, params, kw = plan[method]
        t0 = time.perf_counter()
        if method == "cd":
            scorer, rep = train_prefix_scorer(
                model,
                tokenizer,
                [p.instruction for p in load_task_prompts("train")][: s.cd_train_prompts],
                guide,
                samples_per_prompt=s.cd_samples,
                max_new_tokens=s.max_new_tokens,
                seed=s.seed,
                batch_size=s.batch_size,
            )
            timings["cd_train"] = time.perf_counter() - t0
            notes.append(
                f"cd: linear prefix scorer (ridge on the frozen model's final hidden states) fitted on "
                f"{rep['sequences']} sampled responses / {rep['prefixes']} prefixes of {s.cd_train_prompts} "
                f"train prompts in {rep['seconds']:.0f} s; held-out R² {rep['r2_heldout']:.2f}"
            )
            kw = dict(scorer=scorer)
            t0 = time.perf_counter()  # the row's time is decoding only; training is reported separately
        outs = decode(model, tokenizer, ps, method, **kw, **params, **common)
        timings[method] = time.perf_counter() - t0
        outputs[method] = outs
        res = _result(name, outs, gold, ps, kl_default=0.0 if method == "greedy" else None)
        if method == "greedy":
            base_full = res
        base = base_full if len(ps) == len(prompts) else _subset(base_full, len(ps))
        row = summarize(res, base, len(ps))
        toks = max(sum(o.cost.new_tokens for o in outs), 1)
        row.update(
            {
                "kl_kind": outs[0].kl_kind or ("reference decoder" if method == "greedy" else "-"),
                "diversity": diversity(res.texts),
                "coherence": coherence(ps, res.texts, embedder),
                "ms_per_token": 1000 * sum(o.cost.wall_s for o in outs) / toks,
                "lm_tokens_per_token": sum(o.cost.lm_tokens for o in outs) / toks,
                "reward_calls_per_token": sum(o.cost.reward_calls for o in outs) / toks,
                "seconds": timings[method],
                "prompts_note": "all" if len(ps) == len(prompts) else f"first {len(ps)} of {len(prompts)} (expensive)",
            }
        )
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
    notes += [
        f"decoding rows: {len(prompts)} eval prompts (expensive methods: first {len(sub)}), {s.max_new_tokens} new "
        f"tokens, seed {s.seed}; win rate / Δgold are against greedy decoding on the same prompts",
        "the guiding reward is the gold reward that also judges the rows (best-of-n, args, tq-*, cd): optimistic -- a "
        "held-out judge would show less gain"
        if guide is gold
        else "guiding reward differs from the gold judge",
        "tq-*: rollouts from "
        + ("the given aligned model" if rollout_model is not None else "π_ref itself (training-free CD baseline, D3)")
        + "; "
        f"tq-indirect: r_BL = {getattr(baseline_reward, 'name', 'baseline reward')} "
        + (
            "(gold without the length term, a stand-in)"
            if getattr(baseline_reward, "weights", {}).get("length") == 0.0
            else ""
        ),
        "kl column: best-of-n = analytic bound log N − (N−1)/N, sample = 0 (π_ref itself); empty for greedy-selected "
        "methods, whose kl_decoding field is Σ_t KL(π_alg‖top-k π_ref) of the decoding distribution along the chosen "
        "path (args/cd/tq) or Σ_t KL(q_LA‖π_0 at T) (linear) -- not comparable to a trained policy's KL",
        "diversity = Π_{n=2..4}(1 − rep_n/100) with regex word tokens (NLTK not used); coherence = cosine of MiniLM "
        "prompt/response embeddings (SimCSE is not available offline)",
        "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
    ]
    return DecodingRows(rows, results, notes, timings, outputs)
