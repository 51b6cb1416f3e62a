"""Does the CD prefix scorer V_θ rank the candidates of one state? (docs/decoding.md, CD section)

Tokenwise CD (docs/conventions.md D3) only ever compares V_θ([s, z]) across the top-k tokens z of one state
s, so a held-out R² over all prefixes (which mostly measures how well V tells prompts and response
lengths apart) says little about it. This check measures exactly the comparison CD makes:

1. per prompt, a state s = [x, y^t]: a response prefix sampled from π_ref at T = 1, t uniform in
   [0, max_new_tokens // 2] (seeded; a prefix that reaches a stop id is cut before it);
2. the top-k tokens z of π_ref(·|s) and V_θ([s, z]), read from the hidden state after feeding z, exactly
   as ``guided.run_guided`` scores CD candidates (one fork of the state's cache, one batched step);
3. the Monte-Carlo return of z: the mean reward of ``rollouts`` continuations from [s, z] sampled from
   π_ref at T = 1 until a stop id or the budget (t + 1 + rollout ≤ max_new_tokens). A stop-id candidate
   is scored on the finished sequence without a rollout;
4. Kendall τ_b between V and the MC return over the k candidates, per state, then the mean over states.

The noise ceiling ``tau_split_half`` is τ_b between the MC returns of two disjoint halves of the rollouts:
if it is near 0 the candidates cannot be ranked with this many rollouts at all, and neither can V be
judged. Use prompts the scorer was not trained on (the validation split).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from alignlab.data.tokenize import stop_ids
from alignlab.decoding import decode, prompt_text, train_prefix_scorer
from alignlab.decoding.lm import LM, LMState
from alignlab.decoding.loops import advance, make_generator
from alignlab.decoding.scores import draw, topk_candidates


@dataclass
class StateCheck:
    """One checked state: prompt index, the sampled response prefix y^t (ids), the k candidate ids (most
    likely first), V_θ of each candidate [k], and the rewards of its rollouts [k][M] (a stop-id candidate:
    M copies of its one reward)."""

    prompt: int
    prefix: list[int]
    candidates: list[int]
    values: list[float]
    returns: list[list[float]]

    @property
    def mc(self) -> list[float]:
        """MC return per candidate [k]: the mean over its rollouts."""
        return [sum(r) / len(r) for r in self.returns]


@dataclass
class RankingCheck:
    states: int  # states checked
    k: int  # candidates per state
    rollouts: int  # Monte-Carlo continuations per candidate
    tau_mean: float  # mean over states of Kendall tau-b(V([s,z]), MC return of z) over the k candidates
    tau_se: float  # s.e. over states
    share_positive: float  # share of states with tau > 0
    top1_agreement: float  # share of states where V's best candidate is the MC-best one
    tau_split_half: float  # mean tau between the MC returns of two disjoint halves of the rollouts (noise ceiling)
    seconds: float
    taus: list[float] = field(default_factory=list)  # per state; NaN where tau_b is undefined (a constant side)
    per_state: list[StateCheck] = field(default_factory=list, repr=False)

    def summary(self) -> str:
        """One line for reports."""
        defined = sum(1 for t in self.taus if not math.isnan(t)) if self.taus else self.states
        return (
            f"V ranks top-{self.k} candidates: Kendall τ_b {self.tau_mean:+.3f} ± {self.tau_se:.3f} over "
            f"{defined}/{self.states} states, τ>0 in {self.share_positive:.0%}, top-1 agreement "
            f"{self.top1_agreement:.0%} (chance ≈ {1 / self.k:.0%}); split-half τ_b of the MC returns "
            f"{self.tau_split_half:+.3f} ({self.rollouts} rollouts); {self.seconds:.0f} s"
        )


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall τ_b of two equal-length sequences: (C − D) / sqrt((n0 − n1)(n0 − n2)), n0 = n(n−1)/2 pairs,
    n1 / n2 = pairs tied in x / in y (a pair tied in both counts in both and is neither C nor D). NaN when
    either side is constant (or fewer than 2 items). O(n²): n is k, a handful of candidates."""
    if len(x) != len(y):
        raise ValueError(f"lengths differ: {len(x)} and {len(y)}")
    n = len(x)
    conc = disc = tie_x = tie_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            tie_x += dx == 0
            tie_y += dy == 0
            if dx * dy > 0:
                conc += 1
            elif dx * dy < 0:
                disc += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - tie_x) * (n0 - tie_y))
    return (conc - disc) / denom if denom > 0 else float("nan")


def top1_agrees(values: list[float], mc: list[float]) -> bool:
    """V's best candidate (first on ties) has the highest MC return (ties in the MC return all count as best)."""
    best = max(range(len(values)), key=lambda c: (values[c], -c))
    return mc[best] == max(mc)


def _mean_se(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def ranking_stats(per_state: list[StateCheck], k: int, rollouts: int, seconds: float) -> RankingCheck:
    """Aggregate the per-state values and rollout rewards into a RankingCheck (pure). States whose τ_b is
    undefined (V or the MC return constant over the candidates) are left out of the means and shares."""
    taus = [kendall_tau_b(s.values, s.mc) for s in per_state]
    defined = [(s, t) for s, t in zip(per_state, taus) if not math.isnan(t)]
    half = rollouts // 2
    split = [
        kendall_tau_b([sum(r[:half]) / half for r in s.returns], [sum(r[half:]) / (rollouts - half) for r in s.returns])
        for s in per_state
        if half >= 1
    ]
    mean, se = _mean_se(taus)
    return RankingCheck(
        states=len(per_state),
        k=k,
        rollouts=rollouts,
        tau_mean=mean,
        tau_se=se,
        share_positive=sum(t > 0 for _, t in defined) / len(defined) if defined else float("nan"),
        top1_agreement=sum(top1_agrees(s.values, s.mc) for s, _ in defined) / len(defined) if defined else float("nan"),
        tau_split_half=_mean_se(split)[0],
        seconds=seconds,
        taus=taus,
        per_state=per_state,
    )


def sample_states(model, tokenizer, prompts: list, max_new_tokens: int, seed: int, batch_size: int, stops: set[int]):
    """Per prompt: (rendered prompt ids, prefix ids). t ~ U{0..max_new_tokens // 2} per prompt from
    ``random.Random(seed)``; the prefix is the first t tokens of one π_ref sample at T = 1 (the first t
    tokens of an autoregressive sample are a sample of the length-t prefix), cut before any stop id."""
    rng = random.Random(seed)
    ts = [rng.randint(0, max_new_tokens // 2) for _ in prompts]
    outs = decode(
        model,
        tokenizer,
        prompts,
        "sample",
        max_new_tokens=max(1, max(ts)),
        seed=seed,
        batch_size=batch_size,
        diagnostics=False,
    )
    states = []
    for o, t in zip(outs, ts):
        prefix = o.completion_ids[:t]
        cut = next((i for i, z in enumerate(prefix) if z in stops), len(prefix))
        states.append((list(o.prompt_ids), prefix[:cut]))
    return states


def continue_rows(
    lm: LM, st: LMState, budgets: list[int], gens: list[torch.Generator], stops: torch.Tensor
) -> tuple[list[list[int]], list[bool]]:
    """Sample every row of ``st`` (its logits = the next-token distribution) from π_ref at T = 1 until a
    stop id or ``budgets[r]`` tokens. All rows advance together, one forward per token; a row that stops or
    runs out of budget is dropped from the state at once. Returns (tokens per row, stopped per row)."""
    R = st.rows
    toks: list[list[int]] = [[] for _ in range(R)]
    fin = [False] * R
    active = [r for r in range(R) if budgets[r] > 0]
    if not active:
        return toks, fin
    if len(active) < R:
        st = lm.select(st, active)
    while True:
        tok = draw(st.logits, [gens[r] for r in active]).cpu()
        stop = torch.isin(tok, stops)
        for i, r in enumerate(active):
            toks[r].append(int(tok[i]))
            fin[r] = bool(stop[i])
        done = stop | torch.tensor([len(toks[r]) >= budgets[r] for r in active])
        if bool(done.all()):
            return toks, fin
        st, active = advance(lm, st, tok, done, active)


def check_batch(
    lm: LM,
    tokenizer,
    scorer,
    reward,
    states: list,
    texts: list[str],
    index: list[int],
    k: int,
    M: int,
    budget: int,
    seed: int,
) -> list[StateCheck]:
    """The k candidates of each state (ids + prefix), their V_θ and the rewards of their M rollouts.

    Rows are state-major, candidate-minor (c = s·k + j), and rollout rows candidate-major (f = c·M + m),
    the layout of ``guided``. One prefill, one candidate step, one batched rollout loop, one reward call.
    """
    S = len(states)
    stop_list = sorted(set(stop_ids(tokenizer)))
    stops = torch.tensor(stop_list or [-1], dtype=torch.long)
    st = lm.prefill([p + y for p, y in states])
    cand_ids = topk_candidates(st.logits, k)[1].cpu()  # [S, k]
    flat = cand_ids.reshape(-1)
    child = lm.step(lm.fork(st, k), flat, want_hidden=True)  # as tokenwise CD: the state after feeding z
    with torch.no_grad():
        values = scorer(child.hidden).float().view(S, k).cpu()
    is_stop = torch.isin(flat, stops).tolist()
    budgets = [0 if is_stop[f // M] else budget - len(states[f // (k * M)][1]) - 1 for f in range(S * k * M)]
    gens = [make_generator(seed, index[f // (k * M)], 1 + f % (k * M)) for f in range(S * k * M)]
    toks, fin = continue_rows(lm, lm.fork(child, M), budgets, gens, stops)
    # a stop-id candidate is one finished sequence: score it once (its m = 0 row), copy to its M slots
    scored = [f for f in range(S * k * M) if not (is_stop[f // M] and f % M)]
    rows = [states[f // (k * M)][1] + [int(flat[f // M])] + toks[f] for f in scored]
    done = [is_stop[f // M] or fin[f] for f in scored]
    got = reward([texts[f // (k * M)] for f in scored], tokenizer.batch_decode(rows, skip_special_tokens=True), done)
    r = dict(zip(scored, (float(x) for x in got)))
    rewards = [r.get(f, r.get(f - f % M)) for f in range(S * k * M)]
    return [
        StateCheck(
            index[s],
            list(states[s][1]),
            cand_ids[s].tolist(),
            values[s].tolist(),
            [rewards[(s * k + j) * M : (s * k + j + 1) * M] for j in range(k)],
        )
        for s in range(S)
    ]


def cd_ranking_check(
    model,
    tokenizer,
    scorer,
    prompts: list,
    reward,
    *,
    k: int = 5,
    rollouts: int = 4,
    max_new_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
) -> RankingCheck:
    """Kendall τ_b between V_θ([s, z]) and the MC return of z over the top-k candidates z of one sampled
    state s per prompt (module docstring), with its noise ceiling. ``scorer`` maps final hidden states
    [R, H] to values [R] (a PrefixScorer fitted on ``model``); ``reward(prompts, texts, finished)`` is a
    text reward; ``batch_size`` states (k·rollouts rows each) run together. Deterministic for a seed."""
    if rollouts < 1 or k < 1:
        raise ValueError(f"need k >= 1 and rollouts >= 1, got k={k}, rollouts={rollouts}")
    t0 = time.perf_counter()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    lm = LM(model, pad)
    was_training = model.training
    model.eval()
    try:
        states = sample_states(model, tokenizer, prompts, max_new_tokens, seed, batch_size, set(stop_ids(tokenizer)))
        texts = [prompt_text(p) for p in prompts]
        per_state: list[StateCheck] = []
        with torch.no_grad():
            for b in range(0, len(states), batch_size):
                idx = list(range(b, min(b + batch_size, len(states))))
                per_state += check_batch(
                    lm,
                    tokenizer,
                    scorer,
                    reward,
                    [states[i] for i in idx],
                    [texts[i] for i in idx],
                    idx,
                    k,
                    rollouts,
                    max_new_tokens,
                    seed,
                )
    finally:
        model.train(was_training)
    return ranking_stats(per_state, k, rollouts, time.perf_counter() - t0)


@dataclass(frozen=True)
class CDFitSettings:
    """How the scorer is fitted (train prompts) and checked (held-out prompts)."""

    samples_per_prompt: int = 4
    k: int = 5
    rollouts: int = 4
    max_new_tokens: int = 64
    seed: int = 0
    batch_size: int = 16


def fit_and_check(model, tokenizer, train_prompts: list, check_prompts: list, reward, s: CDFitSettings, scorer=None):
    """CD-FUDGE's scorer fitted on ``train_prompts`` (held out by prompt inside; skipped when ``scorer`` is given),
    then ``cd_ranking_check`` on ``check_prompts``. Returns (scorer, fit report, RankingCheck)."""
    rep = {"loaded": True}
    if scorer is None:
        scorer, rep = train_prefix_scorer(
            model,
            tokenizer,
            train_prompts,
            reward,
            samples_per_prompt=s.samples_per_prompt,
            max_new_tokens=s.max_new_tokens,
            seed=s.seed,
            batch_size=s.batch_size,
        )
    check = cd_ranking_check(
        model,
        tokenizer,
        scorer,
        check_prompts,
        reward,
        k=s.k,
        rollouts=s.rollouts,
        max_new_tokens=s.max_new_tokens,
        seed=s.seed,
        batch_size=s.batch_size,
    )
    return scorer, rep, check
