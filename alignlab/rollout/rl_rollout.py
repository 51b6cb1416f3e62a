"""Rollouts for online RL: sample ``group_size`` responses per prompt and score them with a text-in reward.

Backend ``hf``: Hugging Face ``generate`` on the training policy itself (weights are always in sync), plain
temperature sampling (top-k and top-p off, a fresh ``GenerationConfig`` so a checkpoint's own generation defaults
cannot change the distribution). The sampler's log-probs of the sampled tokens are kept (``sampler_logp``, from
the processed scores ``generate`` returns) so that the trainer can check, before its first update, that it
scores the very distribution that sampled (same temperature, same weights; docs/rlhf.md "Step-0 invariants").

Backend ``vllm``: a ``VLLMRollout`` engine (``alignlab.rollout.vllm_backend``, passed as ``engine``) over the base
model, whose weights the recipe syncs from the trainer before every step's rollouts; the same sampling (plain
temperature, one seeded request per row) and the sampler's log-probs after temperature, so the same check guards the
sync.

Response rule (docs/rlhf.md): a response is the sampled tokens up to and including the first stop token (EOS or
end-of-turn); ``finished`` says whether one came. A response that hit ``max_new_tokens`` keeps all its tokens and
``finished=False``; with ``missing_eos_penalty`` its score is lowered by it (TRL's rule). An empty response (the
first token is a stop token) is kept: the reward scores the empty string. Both are counted in the step metrics.
Rewards never see token ids: each reward re-tokenises the decoded text with its own tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignlab.data.collate import left_pad
from alignlab.data.tokenize import PairTokenizer, stop_ids
from alignlab.data.types import Text
from alignlab.decoding import prompt_text
from alignlab.training.rl_batch import RolloutBatch


@dataclass(frozen=True)
class RolloutSettings:
    group_size: int
    max_new_tokens: int = 64
    temperature: float = 1.0
    max_prompt_length: int = 256
    backend: str = "hf"


BACKENDS = ("hf", "vllm")


class PromptTooLongError(ValueError):
    """A prompt longer than max_prompt_length (never silently cut)."""


def encode_prompts(tokenizer, prompts: list[Text], max_prompt_length: int) -> list[list[int]]:
    """Chat-templated prompt ids (the same rendering as training and evaluation)."""
    pt = PairTokenizer(tokenizer)
    out = []
    for i, p in enumerate(prompts):
        ids = pt.prompt_ids(p)
        if len(ids) > max_prompt_length:
            raise PromptTooLongError(
                f"prompt {i} has {len(ids)} tokens, more than max_prompt_length={max_prompt_length}"
            )
        out.append(ids)
    return out


def response_mask_of(tokens: torch.Tensor, stops: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, T], finished [B]): True up to and including the first stop token of each row."""
    is_stop = torch.isin(tokens, torch.tensor(stops, device=tokens.device))
    seen_before = (is_stop.long().cumsum(-1) - is_stop.long()) > 0  # a stop strictly earlier in the row
    return ~seen_before, is_stop.any(-1)


@torch.no_grad()
def sample_rollouts(
    model, tokenizer, prompts: list[Text], s: RolloutSettings, seed: int, sampler_logps: bool = True, engine=None
) -> RolloutBatch:
    """``group_size`` samples of every prompt, prompt-major; scores are left empty (``apply_rewards``).

    sampler_logps: keep the sampler's own log-probs (needs every step's [rows, vocab] scores: the recipe asks only
    on the steps it checks them). engine: the ``VLLMRollout`` of ``rollout_backend=vllm`` (its weights synced by
    the caller); ``model`` is then not used for sampling."""
    if s.backend not in BACKENDS:
        raise ValueError(f"rollout_backend {s.backend!r}: choose one of {', '.join(BACKENDS)}")
    stops = stop_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = encode_prompts(tokenizer, prompts, s.max_prompt_length)
    rows = [r for r in ids for _ in range(s.group_size)]
    prompt_ids, prompt_mask = left_pad(rows, pad_id)
    if s.backend == "vllm":
        if engine is None:
            raise ValueError("rollout_backend=vllm: sample_rollouts needs the engine (alignlab.rollout.vllm_backend)")
        tokens, raw_logp = _vllm_sample(engine, rows, s, stops, pad_id, seed, sampler_logps)
    else:
        tokens, raw_logp = _hf_sample(model, prompt_ids, prompt_mask, s, stops, pad_id, seed, sampler_logps)
    P = prompt_ids.shape[1]
    mask, finished = response_mask_of(tokens, stops)
    tokens = torch.where(mask, tokens, torch.full_like(tokens, pad_id))
    sampler_logp = torch.where(mask, raw_logp, torch.zeros(())) if raw_logp is not None else None
    texts = [prompt_text(p) for p in prompts for _ in range(s.group_size)]
    responses = [_decode(tokenizer, t, m, stops) for t, m in zip(tokens, mask)]
    return RolloutBatch(
        input_ids=torch.cat([prompt_ids, tokens], 1),
        attention_mask=torch.cat([prompt_mask, mask.long()], 1),
        response_mask=mask,
        prompt_len=P,
        prompts=texts,
        responses=responses,
        finished=finished,
        scores=torch.zeros(len(rows)),
        group_size=s.group_size,
        sampler_logp=sampler_logp,
    )


def _hf_sample(model, prompt_ids, prompt_mask, s: RolloutSettings, stops, pad_id, seed, sampler_logps):
    """HF ``generate`` on the policy: (response tokens [B, T], the sampler's log-probs [B, T] or None)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen_cfg = GenerationConfig(
        do_sample=True,
        temperature=s.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=s.max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id,
        use_cache=True,
        output_scores=sampler_logps,
        return_dict_in_generate=True,
    )
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=prompt_ids.to(device),
        attention_mask=prompt_mask.to(device),
        generation_config=gen_cfg,
    )
    if was_training:
        model.train()
    tokens = out.sequences[:, prompt_ids.shape[1] :].cpu()
    if not sampler_logps:
        return tokens, None
    # each step's processed scores are logits / temperature: one [rows, vocab] at a time
    cols = [
        torch.log_softmax(sc.float(), -1).gather(-1, tokens[:, t : t + 1].to(sc.device)).cpu()
        for t, sc in enumerate(out.scores)
    ]
    return tokens, torch.cat(cols, 1)


def _vllm_sample(engine, rows, s: RolloutSettings, stops, pad_id, seed, sampler_logps):
    """vLLM: one seeded request per row, right-padded to the longest response (the rows that stopped early end on a
    stop token, so the padding falls outside the response mask)."""
    toks, lps = engine.sample(rows, s.temperature, s.max_new_tokens, stops, seed, logprobs=sampler_logps)
    T = max(1, max(len(t) for t in toks))
    tokens = torch.full((len(toks), T), pad_id, dtype=torch.long)
    logp = torch.zeros(len(toks), T) if sampler_logps else None
    for i, t in enumerate(toks):
        tokens[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        if logp is not None:
            logp[i, : len(t)] = torch.tensor(lps[i], dtype=torch.float32)
    return tokens, logp


def _decode(tokenizer, tokens: torch.Tensor, mask: torch.Tensor, stops: list[int]) -> str:
    kept = [t for t in tokens[mask].tolist() if t not in stops]
    return tokenizer.decode(kept, skip_special_tokens=True).strip()


def apply_rewards(batch: RolloutBatch, reward, missing_eos_penalty: float | None = None) -> dict[str, float]:
    """Score every response with ``reward`` (text in, one float each) into ``batch.scores``; returns counts.

    A non-finite reward is an error naming the prompts (never trained on)."""
    raw = torch.tensor(reward(batch.prompts, batch.responses, batch.finished.tolist()), dtype=torch.float32)
    bad = (~torch.isfinite(raw)).nonzero().flatten().tolist()
    if bad:
        raise FloatingPointError(
            f"reward {getattr(reward, 'name', reward)!r} returned a non-finite value for {len(bad)} response(s), "
            f"e.g. prompt {batch.prompts[bad[0]][:80]!r}"
        )
    scores = raw.clone()
    unfinished = ~batch.finished
    if missing_eos_penalty is not None:
        scores[unfinished] -= missing_eos_penalty
    batch.scores = scores
    empty = sum(1 for r in batch.responses if not r)
    return {
        "reward_raw": float(raw.mean()),
        "eos_share": float(batch.finished.float().mean()),
        "empty_share": empty / len(batch),
        "response_length": float(batch.response_lengths.float().mean()),
    }
