"""Linear Alignment decoding loop (docs/conventions.md D5): one model, two contexts of the same prompt --
without and with a principle in the system prompt -- advanced with the same chosen token.

Contexts: both are built from ONE template rendering (a placeholder in the system message, split there),
and the shared pieces are tokenised separately from the principle, so the two id sequences differ only by
the principle's tokens (no BPE merge across the insertion point can change a neighbouring token).
Batched mode stacks the 2B rows into one forward per step (explicit positions and masks per row, each row
its own cache slice); ``batched=False`` runs two forwards (for the cost comparison and the equivalence test).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.tokenize import PairTokenizer, as_messages
from alignlab.data.types import Text
from alignlab.decoding.linear import la_step
from alignlab.decoding.lm import LM
from alignlab.decoding.loops import Ctx, Prepared, charge, finish_output, make_generator, prefill
from alignlab.decoding.types import Cost, DecodeOutput, LAParams

_MARK = "\ue000"  # private-use code point: never produced by a template or a user


@dataclass
class LAContexts:
    plain: list[int]  # ids without the principle (== the normal prompt ids when the template has a default)
    principle: list[int]  # ids with the principle appended to the system prompt
    split_tokenized: bool  # True: only the principle's tokens differ between the two


def _render(tok, messages: list[dict]) -> str:
    return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def la_contexts(tokenizer, prompt: Text, principle: str, system_prompt: str | None = None) -> LAContexts:
    """Build the two contexts of one prompt (see module docstring)."""
    pt = PairTokenizer(tokenizer)
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    bos = [pt.bos_id] if pt.auto_bos else []
    msgs = as_messages(prompt)
    if not principle.strip():  # no principle: both contexts are the plain prompt (LA == plain decoding)
        plain = pt.prompt_ids(prompt)
        return LAContexts(plain, list(plain), True)
    if not pt.use_chat_template:
        plain = pt.prompt_ids(prompt)
        head = enc(principle.strip() + "\n\n")
        return LAContexts(plain, bos + head + plain[len(bos) :], True)
    if msgs and msgs[0].get("role") == "system":
        base, rest = msgs[0]["content"], msgs[1:]
    elif system_prompt is not None:
        base, rest = system_prompt, msgs
    else:
        base, rest = None, msgs
    marked = _render(tokenizer, [{"role": "system", "content": (base or "") + _MARK}] + rest)
    if _MARK not in marked:
        raise ValueError("the chat template drops the system message; Linear Alignment needs a system prompt")
    pre, post = marked.split(_MARK, 1)
    if base is None:
        # Recover the template's default system prompt: the plain rendering minus the marked one's frame.
        plain_txt = _render(tokenizer, rest)
        if plain_txt.startswith(pre) and plain_txt.endswith(post) and len(plain_txt) >= len(pre) + len(post):
            base = plain_txt[len(pre) : len(plain_txt) - len(post)]
        else:  # the template has no default system turn: the plain context has none either
            plain = bos + enc(plain_txt)
            return LAContexts(plain, bos + enc(pre + principle + post), False)
    sep = " " if base and not base.endswith((" ", "\n")) else ""
    a, c = enc(pre + base), enc(post)
    whole = enc(pre + base + post)
    if a + c == whole:
        return LAContexts(bos + whole, bos + a + enc(sep + principle) + c, True)
    return LAContexts(bos + whole, bos + enc(pre + base + sep + principle + post), False)


def run_la(lm: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost]) -> list[DecodeOutput]:
    p = ctx.params
    assert isinstance(p, LAParams)
    A = len(batch)
    cx = [la_contexts(ctx.tokenizer, b.prompt, p.principle, p.system_prompt) for b in batch]
    if p.batched:
        # One state of 2A rows: [plain_0..plain_{A-1}, principle_0..principle_{A-1}].
        st = prefill(lm, batch, costs, [c.plain for c in cx] + [c.principle for c in cx], list(range(A)) * 2)
        states = [st]
    else:
        states = [
            prefill(lm, batch, costs, [c.plain for c in cx]),
            prefill(lm, batch, costs, [c.principle for c in cx]),
        ]
    gens = [make_generator(p.seed, b.index, 0) for b in batch] if not p.greedy else None
    out: list[list[int]] = [[] for _ in range(A)]
    fin = [False] * A
    kl = [0.0] * A
    active = list(range(A))
    for t in range(p.max_new_tokens):
        a = len(active)
        if p.batched:
            z0, zp = states[0].logits[:a], states[0].logits[a:]
        else:
            z0, zp = states[0].logits, states[1].logits
        tok, step_kl = la_step(z0, zp, p.ratio, p.temperature, p.top_p, p.greedy, gens and [gens[o] for o in active])
        tok = tok.cpu()
        stop = ctx.is_stop(tok)
        for i, o in enumerate(active):
            out[o].append(int(tok[i]))
            fin[o] = bool(stop[i])
            kl[o] += float(step_kl[i])
        if t == p.max_new_tokens - 1 or bool(stop.all()):
            break
        if bool(stop.any()):
            keep = (~stop).nonzero().view(-1)
            idx = torch.cat([keep, keep + a]) if p.batched else keep
            states = [lm.select(s, idx) for s in states]
            active = [active[i] for i in keep.tolist()]
            tok = tok[keep]
        if p.batched:
            states = [lm.step(states[0], torch.cat([tok, tok]))]
            charge(costs, active * 2, policy_steps=1)
        else:
            states = [lm.step(s, tok) for s in states]
            charge(costs, active, policy_steps=1)
            charge(costs, active, policy_steps=1)
    return [
        finish_output(
            b,
            out[i],
            fin[i],
            ctx,
            costs[i],
            kl=kl[i],
            kl_kind="Σ_t KL(q_LA‖π_0 at T)",
            extra={
                "ratio": p.ratio,
                "temperature": p.temperature,
                "top_p": p.top_p,
                "principle_tokens": len(cx[i].principle) - len(cx[i].plain),
                "split_tokenized": cx[i].split_tokenized,
            },
        )
        for i, b in enumerate(batch)
    ]
