"""Candidate-scoring decoders (docs/conventions.md D2-D4): ARGS, Transfer Q* (direct / indirect) and
tokenwise controlled decoding share one loop; only the estimate Q̂(s, z) of each top-k candidate differs.

    ARGS        Q̂ = r([x, y, z])                               (the reward on the partial sequence)
    TQ*         Q̂ = mean / SNIS over M rollouts τ ~ ρ_BL(·|[x, y, z]) of r([x, y, z, τ]), |τ| <= H
    CD          Q̂ = V_θ([x, y, z])                             (a learned prefix scorer)

ARGS is literally TQ* with H = 0: the same code path (D8.6).

Efficiency (R2.4, D7): per step, the k candidates are fed in ONE batched call on a fork of the prefix
cache (never re-encoding the prefix); all k·M rollouts of all prompts of the batch advance together, one
forward per rollout token; one reward call scores every rollout of the step. When the rollout model is
the proposal model itself (or for CD), the chosen candidate's forked row *is* the next policy state, so the
policy step costs nothing extra.
"""

from __future__ import annotations

import torch

from alignlab.decoding.lm import LM, LMState
from alignlab.decoding.loops import Ctx, Prepared, advance, charge, finish_output, make_generator, prefill
from alignlab.decoding.scores import (
    direct_q,
    draw,
    filter_logits,
    guided_scores,
    indirect_q,
    select,
    step_kl,
    topk_candidates,
)
from alignlab.decoding.types import CDParams, Cost, DecodeOutput, GuidedParams, StepInfo, TQIndirectParams, TQParams


def run_rollouts(
    lm: LM,
    cst: LMState,
    cand_done: torch.Tensor,
    owners: list[int],
    M: int,
    H: int,
    temperature: float,
    top_p: float,
    ctx: Ctx,
    costs: list[Cost],
    gens: list[torch.Generator] | None,
) -> tuple[list[list[int]], list[bool]]:
    """Continue every candidate row of ``cst`` (already fed its candidate) with M rollouts of <= H tokens.

    Rows are candidate-major, rollout-minor: row f = c·M + m. A candidate that is itself a stop id gets
    rollout length 0 and counts as finished (D8.12). ``owners[c]`` = prompt slot of candidate row c.
    Returns (rollout tokens per row, finished per row).
    """
    R = cst.rows * M
    toks: list[list[int]] = [[] for _ in range(R)]
    fin = cand_done.repeat_interleave(M).tolist()
    row_owner = [owners[f // M] for f in range(R)]
    for o in owners:
        costs[o].rollouts += M
    active = [f for f in range(R) if not fin[f]]
    if H == 0 or not active:
        return toks, fin
    st = lm.fork(cst, M)
    if len(active) < R:
        st = lm.select(st, active)
    for h in range(H):
        if temperature > 0:
            tok = draw(filter_logits(st.logits, temperature, 0, top_p), [gens[f] for f in active])
        else:
            tok = st.logits.argmax(-1)
        tok = tok.cpu()
        stop = ctx.is_stop(tok)
        for i, f in enumerate(active):
            toks[f].append(int(tok[i]))
            fin[f] = bool(stop[i])
            costs[row_owner[f]].rollout_tokens += 1
        if h == H - 1 or bool(stop.all()):
            break
        st, active = advance(lm, st, tok, stop, active)
        charge(costs, [row_owner[f] for f in active])
    return toks, fin


def run_guided(policy: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost]) -> list[DecodeOutput]:
    """The estimate follows the parameter class: ARGSParams (reward of the partial sequence), TQParams /
    TQIndirectParams (rollouts of ``ctx.rollout``), CDParams (tokenwise; ``ctx.scorer``, checked by cd.run_cd)."""
    p, method, rollout, scorer = ctx.params, ctx.method, ctx.rollout, ctx.scorer
    assert isinstance(p, GuidedParams)
    k, A = p.k, len(batch)
    H = p.horizon if isinstance(p, TQParams) else 0
    M = p.rollouts if H > 0 else 1
    use_scorer, indirect = isinstance(p, CDParams), isinstance(p, TQIndirectParams)
    if not use_scorer and ctx.reward is None:
        raise ValueError(f"{method} needs a reward")
    if indirect and ctx.baseline_reward is None:
        raise ValueError("tq-indirect needs baseline_reward (the reward the rollout model was aligned to)")
    if H > 0 and rollout is None:
        raise ValueError(
            f"{method} needs a rollout model (the aligned baseline; pass the proposal model itself "
            "for the training-free CD baseline)"
        )
    shared = H > 0 and rollout.model is policy.model  # rollouts from π_ref: one cache serves both roles
    st = prefill(policy, batch, costs)
    ro = None
    if H > 0:
        ro = st if shared else prefill(rollout, batch, costs)
    sel_gens = [make_generator(p.seed, b.index, 0) for b in batch] if not p.greedy else None
    ro_gens = (
        [[make_generator(p.seed, b.index, 1 + f) for f in range(k * M)] for b in batch]
        if H > 0 and isinstance(p, TQParams) and p.rollout_temperature > 0
        else None
    )
    out: list[list[int]] = [[] for _ in range(A)]
    fin = [False] * A
    steps: list[list[StepInfo]] = [[] for _ in range(A)]
    kl_sum = [0.0] * A
    active = list(range(A))
    for t in range(p.max_new_tokens):
        a = len(active)
        cand_logp, cand_ids = topk_candidates(st.logits, k)  # [a, k]
        cand_ids = cand_ids.cpu()
        flat = cand_ids.reshape(-1)
        cand_owner = [active[i] for i in range(a) for _ in range(k)]
        child = cst = None
        ess = None
        if use_scorer:
            child = policy.step(policy.fork(st, k), flat, want_hidden=True)
            charge(costs, cand_owner, scorer_calls=1)
            with torch.no_grad():
                q = scorer(child.hidden).float().view(a, k).cpu()
        else:
            cand_done = torch.isin(flat, ctx.stop_t)
            if H > 0:
                cst = rollout.step(rollout.fork(ro, k), flat)
                charge(costs, cand_owner)
                gens = [ro_gens[o][f] for o in active for f in range(k * M)] if ro_gens is not None else None
                rtoks, rfin = run_rollouts(
                    rollout,
                    cst,
                    cand_done,
                    cand_owner,
                    M,
                    H,
                    getattr(p, "rollout_temperature", 0.0),
                    getattr(p, "rollout_top_p", 1.0),
                    ctx,
                    costs,
                    gens,
                )
                if shared:
                    child = cst
            else:
                rtoks, rfin = [[] for _ in range(a * k)], cand_done.tolist()
            rows = [out[active[c // (k * M)]] + [int(flat[c // M])] + rtoks[c] for c in range(a * k * M)]
            prompts = [batch[active[c // (k * M)]].text for c in range(a * k * M)]
            texts = ctx.texts(rows)
            r = torch.tensor([float(x) for x in ctx.reward(prompts, texts, rfin)]).view(a, k, M)
            for o in active:
                costs[o].reward_calls += k * M
            if indirect:
                rb = torch.tensor([float(x) for x in ctx.baseline_reward(prompts, texts, rfin)]).view(a, k, M)
                for o in active:
                    costs[o].reward_calls += k * M
                q, ess = indirect_q(r, rb, p.beta)
            else:
                q = direct_q(r)
        scores = guided_scores(cand_logp.cpu(), q, p.w)
        j = select(scores, p.greedy, p.temperature, sel_gens and [sel_gens[o] for o in active]).cpu()
        chosen = cand_ids.gather(-1, j.view(-1, 1)).view(-1)
        kls = step_kl(scores, cand_logp.cpu())
        stop = ctx.is_stop(chosen)
        for i, o in enumerate(active):
            out[o].append(int(chosen[i]))
            fin[o] = bool(stop[i])
            kl_sum[o] += float(kls[i])
            if p.diagnostics:
                steps[o].append(
                    StepInfo(
                        cand_ids[i].tolist(),
                        cand_logp[i].tolist(),
                        q[i].tolist(),
                        scores[i].tolist(),
                        int(j[i]),
                        float(kls[i]),
                        ess[i].tolist() if ess is not None else None,
                    )
                )
        keep = (~stop).nonzero().view(-1)
        if t == p.max_new_tokens - 1 or keep.numel() == 0:
            break
        pick = keep * k + j[keep]  # row of the chosen candidate in the forked states
        active = [active[i] for i in keep.tolist()]
        if child is not None:
            st = policy.select(child, pick)  # the chosen candidate was already fed: no extra policy step
        else:
            st = policy.step(policy.select(st, keep) if keep.numel() < a else st, chosen[keep])
            charge(costs, active, policy_steps=1)
        if H > 0:
            ro = st if shared else rollout.select(cst, pick)
    outs = []
    for i, b in enumerate(batch):
        extra = {"k": k, "w": p.w}
        if H > 0:
            extra.update(horizon=H, rollouts=M)
        if use_scorer:
            extra["mode"] = "tokenwise"
        outs.append(
            finish_output(
                b,
                out[i],
                fin[i],
                ctx,
                costs[i],
                kl=kl_sum[i],
                kl_kind="Σ_t KL(π_alg‖top-k π_ref)",
                steps=steps[i] if p.diagnostics else None,
                extra=extra,
            )
        )
    return outs
