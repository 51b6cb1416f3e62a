"""``decode``: the one entry point of decoding-time alignment (docs/conventions.md D0).

    outs = decode(model, tokenizer, prompts, method="tq-direct", reward=GoldReward(), rollout_model=dpo, k=10)

``model`` is the proposal / reference policy π_ref; prompts are strings or message lists (rendered with the
tokenizer's chat template, exactly like training and evaluation). Rewards are text-in (alignlab.rewards):
responses are decoded without special tokens and each reward model tokenises them itself.
"""

from __future__ import annotations

import time

import torch

from alignlab.data.tokenize import PairTokenizer, stop_ids
from alignlab.data.types import Text
from alignlab.decoding.la import la_contexts
from alignlab.decoding.lm import LM
from alignlab.decoding.loops import Ctx, Prepared
from alignlab.decoding.registry import get_spec
from alignlab.decoding.types import Cost, DecodeOutput, LAParams, TQParams


def prompt_text(prompt: Text) -> str:
    """The prompt as a reward sees it: the string, or the non-system turns of a message list."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(m["content"] for m in prompt if m.get("role") != "system")


def context_length(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def prepare_prompts(tokenizer, prompts: list[Text], params, model=None, extra_tokens: int = 0) -> list[Prepared]:
    """Render and validate; every problem is an error naming the prompt (nothing is silently cut)."""
    if not prompts:
        raise ValueError("no prompts given")
    pt = PairTokenizer(tokenizer)
    ctx_len = context_length(model) if model is not None else None
    out = []
    for i, p in enumerate(prompts):
        text = prompt_text(p)
        if not text.strip():
            raise ValueError(f"prompt {i} is empty")
        ids = pt.prompt_ids(p)
        if isinstance(params, LAParams):  # the principle context is the longer one
            ids_check = la_contexts(tokenizer, p, params.principle, params.system_prompt).principle
        else:
            ids_check = ids
        if len(ids_check) > params.max_prompt_length:
            raise ValueError(
                f"prompt {i} has {len(ids_check)} tokens, more than max_prompt_length={params.max_prompt_length}"
            )
        need = len(ids_check) + params.max_new_tokens + extra_tokens
        if ctx_len is not None and need > ctx_len:
            raise ValueError(
                f"prompt {i}: {len(ids_check)} prompt tokens + {params.max_new_tokens} new tokens"
                f"{f' + {extra_tokens} rollout tokens' if extra_tokens else ''} exceed the model's "
                f"context of {ctx_len} tokens"
            )
        out.append(Prepared(i, p, text, ids))
    return out


def _check_same_vocab(tok_a, tok_b) -> None:
    if tok_a is not None and tok_b is not None and tok_a.get_vocab() != tok_b.get_vocab():
        raise ValueError(
            "the rollout model must share the proposal model's tokenizer (token ids are passed "
            "between them); got tokenizers with different vocabularies"
        )


def decode(
    model,
    tokenizer,
    prompts: list[Text],
    method: str = "greedy",
    reward=None,
    *,
    rollout_model=None,
    rollout_tokenizer=None,
    baseline_reward=None,
    scorer=None,
    score_outputs: bool = False,
    **params,
) -> list[DecodeOutput]:
    """Decode ``prompts`` with ``method``; returns one DecodeOutput per prompt, in input order.

    method: greedy | sample | best-of-n | args | cd | tq-direct | tq-indirect | linear
        (alignlab.decoding.registry.DECODING: parameters, needs and cost of each)
    reward: text reward ``reward(prompts, responses, finished) -> list[float]`` (best-of-n, args, tq-*).
    rollout_model: TQ* continuation model ρ_BL (same tokenizer as ``model``); pass ``model`` itself for
        the training-free CD baseline (rollouts from π_ref).
    baseline_reward: tq-indirect only, the reward ρ_BL was aligned to (r_BL).
    scorer: cd only, a PrefixScorer trained on ``model``'s hidden states.
    score_outputs: also score every final response with ``reward`` (evaluation; not counted in the cost).
    params: the method's parameters (alignlab.decoding.types); unknown keys are an error.
    Inputs the method does not need (e.g. rollout_model for args) are ignored.
    """
    spec = get_spec(method)
    p = spec.make_params(**params)
    extra = p.horizon if isinstance(p, TQParams) else 0
    batch_all = prepare_prompts(tokenizer, prompts, p, model, extra)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    policy = LM(model, pad_id)
    if "rollout_model" not in spec.needs:
        rollout_model = None
    rollout = None
    if rollout_model is not None:
        _check_same_vocab(tokenizer, rollout_tokenizer)
        rollout = policy if rollout_model is model else LM(rollout_model, pad_id)
    stops = (stop_ids(tokenizer) if p.stop_at_eos else []) + list(p.stop_ids)
    ctx = Ctx(
        tokenizer, stops, p, method, reward=reward, baseline_reward=baseline_reward, rollout=rollout, scorer=scorer
    )
    models = [m for m in (model, rollout_model) if m is not None]
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    results: list[DecodeOutput | None] = [None] * len(batch_all)
    # Longest prompts first: less padding inside each batch. Results do not depend on the grouping
    # (explicit positions/masks; one random stream per prompt).
    order = sorted(range(len(batch_all)), key=lambda i: (-len(batch_all[i].ids), i))
    try:
        with torch.no_grad():
            for s in range(0, len(order), p.batch_size):
                batch = [batch_all[i] for i in order[s : s + p.batch_size]]
                costs = [Cost() for _ in batch]
                t0 = time.perf_counter()
                outs = spec.run(policy, batch, ctx, costs)
                share = (time.perf_counter() - t0) / len(batch)
                for o in outs:
                    o.cost.wall_s = share
                    results[o.prompt_index] = o
    finally:
        for m, tr in zip(models, was_training):
            m.train(tr)
    final = [r for r in results if r is not None]
    if score_outputs and reward is not None:
        todo = [o for o in final if o.reward is None]
        if todo:
            vals = reward(
                [batch_all[o.prompt_index].text for o in todo], [o.text for o in todo], [o.finished for o in todo]
            )
            for o, v in zip(todo, vals):
                o.reward = float(v)
    return final
