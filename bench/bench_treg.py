"""T-REG cost on SmolLM2-135M-Instruct (CPU by default): token-reward precompute work and training-step overhead.

1. Precompute: counts the scorer's forward calls and rows (a hook on the decoder) for N pairs: the claim is at most
   two rows per response (better + worse context), both contexts of a response in the same forward batch.
2. Step time: forward + backward of one effective batch (accumulate_gradients, LoRA as in `alignlab train`) for
   dpo and dpo_treg on the same batch, interleaved repetitions, median ratio. Budget: dpo_treg <= 1.10 x dpo.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_treg.py [--pairs 16] [--batch 8] [--reps 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from accelerate import Accelerator  # noqa: E402

from alignlab.data.formats import load_preference_records  # noqa: E402
from alignlab.data.tokenize import tokenize_pairs  # noqa: E402
from alignlab.models.loading import load_model_and_tokenizer  # noqa: E402
from alignlab.models.lora import apply_lora  # noqa: E402
from alignlab.models.scorer import SequenceScorer  # noqa: E402
from alignlab.precompute.reference import compute_logps  # noqa: E402
from alignlab.precompute.token_rewards import compute_token_rewards  # noqa: E402
from alignlab.recipes.train import TrainConfig  # noqa: E402
from alignlab.training.schedule import BatchPlan  # noqa: E402
from alignlab.training.step import accumulate_gradients  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"


def main() -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="pairs per training step; responses per precompute forward")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    records, _ = load_preference_records(str(DATA), limit=args.pairs)
    pairs, _ = tokenize_pairs(records, tok, args.max_length, args.max_length // 2)
    n_resp = 2 * len(pairs)
    n_tok = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)

    # 1. precompute: forward calls and rows seen by the model
    calls, rows = [], []

    def count(module, a, kw, out) -> None:  # must return None (a forward hook's return value replaces the output)
        calls.append(1)
        rows.append(kw["input_ids"].shape[0] if "input_ids" in kw else a[0].shape[0])

    hook = model.get_decoder().register_forward_hook(count, with_kwargs=True)
    t0 = time.perf_counter()
    res = compute_token_rewards(model, tok, pairs, "revision", batch_size=args.batch, max_length=2 * args.max_length)
    t_treg = time.perf_counter() - t0
    n_calls, n_rows = len(calls), sum(rows)
    calls.clear(), rows.clear()
    t0 = time.perf_counter()
    ref = compute_logps(SequenceScorer(model), pairs, list(range(len(pairs))), tok.pad_token_id, args.batch, "cpu")
    t_ref = time.perf_counter() - t0
    ref_calls, ref_rows = len(calls), sum(rows)
    hook.remove()
    assert n_rows <= 2 * n_resp and n_calls == math.ceil(n_resp / args.batch) == res.forward_calls
    rewards = res.rewards

    # 2. step time: same batch, LoRA policy, dpo vs dpo_treg, interleaved
    policy = apply_lora(model, r=16, alpha=32)
    policy.train()
    scorer = SequenceScorer(policy)
    acc = Accelerator(cpu=True)
    idx = list(range(min(args.batch, len(pairs))))
    sub = [pairs[i] for i in idx]
    plan = BatchPlan(len(sub), len(sub), 1, 1, 0, [len(p.prompt_ids) + len(p.chosen_ids) for p in sub])
    sub_ref, sub_rw = ref[idx], [rewards[i] for i in idx]
    cfgs = {
        "dpo": TrainConfig(loss="dpo", per_device_batch_size=len(sub)),
        "dpo_treg": TrainConfig(loss="dpo_treg", per_device_batch_size=len(sub)),
    }
    times: dict[str, list[float]] = {k: [] for k in cfgs}

    def step(name):
        policy.zero_grad(set_to_none=True)
        t = time.perf_counter()
        accumulate_gradients(
            cfgs[name].step_settings(),
            acc,
            scorer,
            plan,
            sub,
            sub_ref,
            tok.pad_token_id,
            0,
            sub_rw if name == "dpo_treg" else None,
        )
        return time.perf_counter() - t

    step("dpo"), step("dpo_treg")  # warm-up
    for r in range(args.reps):
        for name in ("dpo", "dpo_treg") if r % 2 == 0 else ("dpo_treg", "dpo"):
            times[name].append(step(name))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / a for a, b in zip(times["dpo"], times["dpo_treg"])]
    out = {
        "model": "smollm2-135m-instruct (fp32, CPU, torch threads %d)" % torch.get_num_threads(),
        "data": f"{DATA.name}: {len(pairs)} pairs, {n_resp} responses, {n_tok} response tokens, "
        f"max_length {args.max_length}",
        "precompute": {
            "forward_calls": n_calls,
            "rows": n_rows,
            "responses": n_resp,
            "rows_per_response": n_rows / n_resp,
            "seconds": round(t_treg, 2),
            "reference_logps": {"forward_calls": ref_calls, "rows": ref_rows, "seconds": round(t_ref, 2)},
        },
        "step": {
            "pairs": len(sub),
            "lora_r": 16,
            "reps": args.reps,
            "dpo_median_s": round(med["dpo"], 4),
            "dpo_treg_median_s": round(med["dpo_treg"], 4),
            "ratio_of_medians": round(med["dpo_treg"] / med["dpo"], 4),
            "median_paired_ratio": round(statistics.median(ratios), 4),
            "dpo_all_s": [round(x, 4) for x in times["dpo"]],
            "dpo_treg_all_s": [round(x, 4) for x in times["dpo_treg"]],
        },
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    ok = out["step"]["ratio_of_medians"] <= 1.10
    print(
        f"precompute: {n_rows} rows / {n_resp} responses = {n_rows / n_resp:.1f} per response in {n_calls} "
        "forward calls; "
        f"step ratio dpo_treg/dpo = {out['step']['ratio_of_medians']:.3f} "
        f"({'within' if ok else 'OVER'} the 1.10 budget)"
    )
    return out


if __name__ == "__main__":
    main()
