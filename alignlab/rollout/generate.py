"""Batched sampling with HF `generate` (KV cache on, left padding, stop at EOS/end-of-turn).

The one generation path used by pair building, evaluation and (later) RLHF rollouts (docs/conventions.md R2.1).
Each returned Generation carries the exact prompt and completion ids, so scores can be computed on the
ids that were sampled (never on re-tokenized text).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.collate import left_pad
from alignlab.data.tokenize import PairTokenizer
from alignlab.data.types import Text


@dataclass
class Generation:
    """One sampled completion. completion_ids ends with EOS iff finished (the budget was not hit)."""

    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    finished: bool


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 1.0
    num_samples: int = 1
    batch_size: int = 16
    seed: int = 0


def stop_ids(tokenizer) -> list[int]:
    """EOS plus any end-of-turn tokens the vocabulary has (R3.5)."""
    ids = {tokenizer.eos_token_id}
    for t in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[Text], params: SamplingParams, pair_tokenizer: PairTokenizer | None = None,
             max_prompt_length: int = 512, progress: str | None = None) -> list[Generation]:
    """Sample ``num_samples`` completions per prompt; output order: prompt-major, sample-minor.

    Rows are length-sorted before batching (less padding); each batch reseeds torch with
    (seed, first row) so results do not depend on the batch size used for other prompts.
    """
    pt = pair_tokenizer or PairTokenizer(tokenizer)
    stops = stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids = []
    for i, p in enumerate(prompts):
        ids = pt.prompt_ids(p)
        if not ids:
            raise ValueError(f"prompt {i} is empty after rendering")
        if len(ids) > max_prompt_length:
            raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_prompt_length={max_prompt_length}")
        prompt_ids.append(ids)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(params.num_samples)]
    order = sorted(range(len(jobs)), key=lambda k: (-len(prompt_ids[jobs[k][0]]), k))
    out: list[Generation | None] = [None] * len(jobs)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    starts = range(0, len(order), params.batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", dynamic_ncols=True)
    for start in starts:
        ks = order[start : start + params.batch_size]
        ids, attn = left_pad([prompt_ids[jobs[k][0]] for k in ks], pad_id)
        torch.manual_seed(params.seed * 1000003 + ks[0])
        sample = params.temperature > 0
        kw = dict(do_sample=sample, temperature=params.temperature, top_p=params.top_p, top_k=0) if sample else \
            dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                             max_new_tokens=params.max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
                             use_cache=True, **kw)
        new = gen[:, ids.shape[1]:].cpu().tolist()
        for k, row in zip(ks, new):
            comp, finished = [], False
            for t in row:
                comp.append(t)
                if t in stops:
                    finished = True
                    break
            text = tokenizer.decode(comp, skip_special_tokens=True)  # R11: never feed special tokens to rewards
            out[k] = Generation(jobs[k][0], prompt_ids[jobs[k][0]], comp, text, finished)
    model.train(was_training)
    return out  # type: ignore[return-value]
