"""Reference implementations WITHOUT the efficiency work, for equivalence tests and the benchmark.

- ``naive_greedy``: re-encodes the whole sequence at every step (no KV cache).
- ``naive_tq_direct``: Transfer Q* direct the way the paper repository does it (Transfer-Q@32d0ffe
  direct.py): one prompt at a time; the policy step uses a cache, but every step builds the k full
  sequences [x, y, z] and re-encodes them to start the rollouts (``LLM.generate(flat_trme, ...)``), i.e. the
  prefix is prefilled k times per generated token. Unlike the reference code it stops at EOS, gives an EOS
  candidate rollout length 0 and never passes special tokens to the reward (so its outputs must equal
  alignlab's ``decode(method="tq-direct")`` token for token in fp32).
"""

from __future__ import annotations

import torch

from alignlab.data.tokenize import PairTokenizer, stop_ids
from alignlab.decoding.lm import LM
from alignlab.decoding.scores import direct_q, guided_scores, topk_candidates


def _pad(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def naive_greedy(model, tokenizer, prompts: list, max_new_tokens: int) -> list[list[int]]:
    lm, pt, stops = LM(model, _pad(tokenizer)), PairTokenizer(tokenizer), set(stop_ids(tokenizer))
    outs = []
    for p in prompts:
        ids, y = pt.prompt_ids(p), []
        for _ in range(max_new_tokens):
            tok = int(lm.prefill([ids + y]).logits[0].argmax())
            y.append(tok)
            if tok in stops:
                break
        outs.append(y)
    return outs


@torch.no_grad()
def naive_tq_direct(
    model,
    tokenizer,
    prompts: list,
    reward,
    rollout_model=None,
    k: int = 10,
    horizon: int = 20,
    w: float = 1.0,
    max_new_tokens: int = 128,
    stop_at_eos: bool = True,
) -> list[list[int]]:
    """Greedy TQ* direct with M = 1 greedy rollouts, prefix re-encoded for every rollout batch."""
    from alignlab.decoding.api import prompt_text

    pad = _pad(tokenizer)
    policy = LM(model, pad)
    ro = LM(rollout_model if rollout_model is not None else model, pad)
    pt = PairTokenizer(tokenizer)
    stops = set(stop_ids(tokenizer)) if stop_at_eos else set()
    outs = []
    for p in prompts:
        ids, y = pt.prompt_ids(p), []
        st = policy.prefill([ids])
        for t in range(max_new_tokens):
            logp, cand = topk_candidates(st.logits, k)
            cand = cand[0].tolist()
            rows = [y + [c] for c in cand]
            fin = [c in stops for c in cand]
            live = [i for i in range(k) if not fin[i]]
            if live and horizon > 0:
                rst = ro.prefill([ids + rows[i] for i in live])  # the re-encoding this benchmark measures
                for h in range(horizon):
                    tok = rst.logits.argmax(-1).cpu()
                    for j, i in enumerate(live):
                        rows[i].append(int(tok[j]))
                        fin[i] = int(tok[j]) in stops
                    keep = [j for j, i in enumerate(live) if not fin[i]]
                    if h == horizon - 1 or not keep:
                        break
                    if len(keep) < len(live):
                        rst = ro.select(rst, keep)
                    live = [live[j] for j in keep]
                    rst = ro.step(rst, tok[keep])
            texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
            r = torch.tensor([float(v) for v in reward([prompt_text(p)] * k, texts, fin)]).view(1, k, 1)
            j = int(guided_scores(logp.cpu(), direct_q(r), w).argmax(-1))
            y.append(cand[j])
            if cand[j] in stops or t == max_new_tokens - 1:
                break
            st = policy.step(st, torch.tensor([cand[j]]))
        outs.append(y)
    return outs
