"""Shared decoding-loop machinery and the plain loops: greedy, sampling and best-of-N.

A batch holds the prompts decoded together; each prompt owns one or more rows (best-of-N samples,
candidates, rollouts). Rows that hit a stop id are dropped from the cached state at once (``LM.select``),
so finished rows are never extended and never cost another forward pass (docs/conventions.md R11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from alignlab.data.types import Text
from alignlab.decoding.lm import LM, LMState
from alignlab.decoding.scores import bon_kl_bound, draw, filter_logits, topk_candidates
from alignlab.decoding.types import BestOfNParams, CommonParams, Cost, DecodeOutput, SampleParams


@dataclass
class Prepared:
    """One prompt ready to decode: ``ids`` = rendered prompt ids (chat template), ``text`` = the prompt as
    rewards see it (plain text, never template markup)."""

    index: int
    prompt: Text
    text: str
    ids: list[int]


@dataclass
class Ctx:
    """Everything a loop needs besides the policy state: the method's name and parameters and the inputs it
    may need (alignlab.decoding.registry.DecodingSpec.needs); each loop checks the ones it uses."""

    tokenizer: object
    stops: list[int]
    params: CommonParams
    method: str
    reward: Callable | None = None
    baseline_reward: Callable | None = None
    rollout: LM | None = None  # TQ*: the rollout model ρ_BL (the policy LM itself when they are one model)
    scorer: Callable | None = None  # cd: the prefix scorer V_θ

    def __post_init__(self):
        self.stop_t = torch.tensor(sorted(set(self.stops)) or [-1], dtype=torch.long)

    def is_stop(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.isin(tokens.cpu(), self.stop_t)

    def texts(self, rows: list[list[int]]) -> list[str]:
        # R11: special tokens (EOS, pad, end-of-turn) never reach a reward model or the output text.
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)


def make_generator(seed: int, prompt_index: int, stream: int) -> torch.Generator:
    """Independent, reproducible random stream per (prompt, row kind): results do not depend on batching."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + prompt_index * 10_007 + stream) % (2**63 - 1))
    return g


def charge(costs: list[Cost], owners: list[int], tokens_per_row: int = 1, **counters: int) -> None:
    """Book one batched forward call: each owner prompt gets one call and its rows' tokens."""
    for o in set(owners):
        costs[o].lm_calls += 1
    for o in owners:
        costs[o].lm_tokens += tokens_per_row
        for name, v in counters.items():
            setattr(costs[o], name, getattr(costs[o], name) + v)


def prefill(
    lm: LM,
    batch: list[Prepared],
    costs: list[Cost],
    rows: list[list[int]] | None = None,
    owners: list[int] | None = None,
    want_hidden: bool = False,
) -> LMState:
    rows = rows if rows is not None else [p.ids for p in batch]
    owners = owners if owners is not None else list(range(len(batch)))
    for o in set(owners):
        costs[o].lm_calls += 1
    for o, r in zip(owners, rows):
        costs[o].lm_tokens += len(r)
    return lm.prefill(rows, want_hidden)


def sampler(temperature: float, top_k: int, top_p: float) -> Callable:
    """choose(logits [R, V], generators) -> token ids [R]. With top_k the draw runs over the top-k list in
    rank order: exactly what stochastic ARGS / TQ* do with w = 0 (D8.2)."""

    def choose(logits: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        if top_k:
            logp, ids = topk_candidates(logits, top_k)
            z = filter_logits(logp, temperature, 0, top_p)
            return ids.gather(-1, draw(z, gens).unsqueeze(-1).to(ids.device)).squeeze(-1)
        z = filter_logits(torch.log_softmax(logits.float(), -1), temperature, 0, top_p)
        return draw(z, gens)

    return choose


def greedy_choice(logits: torch.Tensor, gens) -> torch.Tensor:
    return logits.argmax(-1)


def plain_loop(
    lm: LM,
    st: LMState,
    choose: Callable,
    ctx: Ctx,
    owners: list[int],
    costs: list[Cost],
    gens: list[torch.Generator] | None,
    max_new: int,
) -> tuple[list[list[int]], list[bool]]:
    """Decode every row until a stop id or ``max_new`` tokens; returns (tokens per row, finished per row)."""
    R = st.rows
    out: list[list[int]] = [[] for _ in range(R)]
    fin = [False] * R
    active = list(range(R))
    for t in range(max_new):
        tok = choose(st.logits, [gens[r] for r in active] if gens is not None else None).cpu()
        stop = ctx.is_stop(tok)
        for i, r in enumerate(active):
            out[r].append(int(tok[i]))
            fin[r] = bool(stop[i])
        if t == max_new - 1 or bool(stop.all()):
            break
        st, active = advance(lm, st, tok, stop, active)
        charge(costs, [owners[r] for r in active], policy_steps=1)
    return out, fin


def advance(lm: LM, st: LMState, tok: torch.Tensor, stop: torch.Tensor, active: list[int]) -> tuple[LMState, list[int]]:
    """Drop the rows that just stopped (their cache rows too: finished rows cost nothing more), then feed the
    chosen tokens of the rest. ``active`` maps state rows to the caller's row ids."""
    if bool(stop.any()):
        keep = (~stop).nonzero().view(-1)
        st = lm.select(st, keep)
        active = [active[i] for i in keep.tolist()]
        tok = tok[keep]
    return lm.step(st, tok), active


def finish_output(p: Prepared, ids: list[int], finished: bool, ctx: Ctx, cost: Cost, **kw) -> DecodeOutput:
    """The DecodeOutput of one prompt (method ``ctx.method``): sets ``cost.new_tokens`` and decodes the text."""
    cost.new_tokens = len(ids)
    return DecodeOutput(p.index, ctx.method, p.ids, ids, ctx.texts([ids])[0], finished, cost, **kw)


def run_plain(lm: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost]) -> list[DecodeOutput]:
    """Greedy (argmax; GreedyParams) or sampling from π_ref (temperature / top-k / top-p; SampleParams)."""
    p = ctx.params
    st = prefill(lm, batch, costs)
    if not isinstance(p, SampleParams):
        choose, gens, kl = greedy_choice, None, None
    else:
        choose = sampler(p.temperature, p.top_k, p.top_p)
        gens = [make_generator(p.seed, b.index, 0) for b in batch]
        # Sampling π_ref itself (T=1, no truncation) has KL 0 by definition; truncated/tempered: unknown here.
        kl = 0.0 if (p.temperature == 1.0 and p.top_k == 0 and p.top_p == 1.0) else None
    for c in costs:
        c.generations += 1
    out, fin = plain_loop(lm, st, choose, ctx, list(range(len(batch))), costs, gens, p.max_new_tokens)
    return [
        finish_output(b, out[i], fin[i], ctx, costs[i], kl=kl, kl_kind="exact (π_ref)" if kl is not None else "")
        for i, b in enumerate(batch)
    ]


def run_bon(lm: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost]) -> list[DecodeOutput]:
    """Best-of-N: N samples per prompt from one shared prefill (the prompt cache is forked, never re-encoded),
    one batched reward call over all B·N responses, argmax per prompt (lowest index on ties)."""
    p = ctx.params
    assert isinstance(p, BestOfNParams)
    if ctx.reward is None:
        raise ValueError("best-of-n needs a reward")
    N = p.n
    st = lm.fork(prefill(lm, batch, costs), N)
    owners = [i for i in range(len(batch)) for _ in range(N)]
    gens = [make_generator(p.seed, b.index, j) for b in batch for j in range(N)]
    out, fin = plain_loop(lm, st, sampler(p.temperature, p.top_k, p.top_p), ctx, owners, costs, gens, p.max_new_tokens)
    texts = ctx.texts(out)
    r = [float(x) for x in ctx.reward([batch[o].text for o in owners], texts, fin)]
    results = []
    for i, b in enumerate(batch):
        rs = r[i * N : (i + 1) * N]
        j = max(range(N), key=lambda m: (rs[m], -m))  # highest reward, lowest index on ties
        costs[i].reward_calls += N
        costs[i].generations += N
        extra = {"n": N, "chosen_sample": j, "kl_bound": bon_kl_bound(N)}
        if p.return_all:
            extra["samples"] = [
                {
                    "text": texts[i * N + m],
                    "reward": rs[m],
                    "finished": fin[i * N + m],
                    "completion_ids": out[i * N + m],
                }
                for m in range(N)
            ]
        results.append(
            finish_output(
                b,
                out[i * N + j],
                fin[i * N + j],
                ctx,
                costs[i],
                reward=rs[j],
                kl=bon_kl_bound(N),
                kl_kind="bound log N − (N−1)/N",
                extra=extra,
            )
        )
    return results
