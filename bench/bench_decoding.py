"""Decoding-time alignment benchmark on SmolLM2-135M-Instruct (CPU by default).

    OMP_NUM_THREADS=1 python bench/bench_decoding.py [--threads 1] [--out runs/bench_decoding.json] [--quick]

All ratios come from one run, with the compared configurations interleaved (A, B, A, B, ...) and the
minimum over repeats taken, because a shared machine's load drifts over minutes.

1. Linear Alignment vs greedy: per-token latency, 4 task prompts decoded together, fixed 64 new tokens
   (stop_at_eos=False, so both decode exactly the same number of steps); LA batched (one forward of 2B
   rows per step) and LA with two separate forwards.
2. ARGS (k = 10, gold reward) vs greedy: per-token latency, same prompts, 32 tokens.
3. Transfer Q* direct (k = 10, one greedy rollout of 20 tokens per candidate, gold reward, rollout model =
   a separate copy of the model): alignlab (forked prefix caches, all rollouts of all prompts batched)
   vs the paper repository's approach (tests/naive_tq.py: one prompt at a time,
   the k sequences [x, y, z] re-encoded to start every step's rollouts), on HH-RLHF harmless-base test
   prompts (the paper's data; ../shared/data). Outputs are checked to be token-identical.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the naive TQ* reference lives with the tests

from naive_tq import naive_tq_direct  # noqa: E402

from alignlab.data.formats import load_preference_records  # noqa: E402
from alignlab.decoding import decode  # noqa: E402
from alignlab.models.loading import load_model_and_tokenizer  # noqa: E402
from alignlab.rewards import load_reward  # noqa: E402
from alignlab.task.prompts import load_task_prompts  # noqa: E402

HH = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def interleaved(configs: dict, repeats: int) -> dict:
    """{name: fn} -> {name: {"wall": min wall, "cpu": min cpu, "walls": [...], "out": last output}}."""
    res = {k: {"walls": [], "cpus": []} for k in configs}
    for _ in range(repeats):
        for k, fn in configs.items():
            out, w, c = timed(fn)
            res[k]["walls"].append(w)
            res[k]["cpus"].append(c)
            res[k]["out"] = out
    for r in res.values():
        r["wall"], r["cpu"] = min(r["walls"]), min(r["cpus"])
    return res


def tokens(outs) -> int:
    return sum(len(o.completion_ids) for o in outs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_decoding.json"))
    ap.add_argument("--quick", action="store_true", help="fewer tokens/repeats (a smoke run, not for reporting)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    gold = load_reward("gold")
    gold(["warm up"], ["the embedder"])
    task = [p.instruction for p in load_task_prompts("test")[:4]]
    report: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch threads {args.threads}, "
        f"load avg {os.getloadavg()[0]:.1f} at start",
        "torch": torch.__version__,
    }

    # 1. Linear Alignment vs greedy ------------------------------------------------------------------
    # Per-token latency = time per output token after the first (TPOT): (wall(T tokens) - wall(1 token)) / (T-1),
    # both runs interleaved; the prefill (time to first token) is reported separately -- LA prefills two
    # contexts, one of them longer by the principle.
    T = 16 if q else 64
    la = {}
    for B in (4, 1):
        ps = task[:B]
        cfgs = {}
        for name, extra in (
            ("greedy", dict(method="greedy")),
            ("la_batched", dict(method="linear", batched=True)),
            ("la_two_pass", dict(method="linear", batched=False)),
        ):
            for n in (1, T):
                cfgs[f"{name}@{n}"] = lambda ex=extra, n=n: decode(
                    model,
                    tok,
                    ps,
                    ex["method"],
                    max_new_tokens=n,
                    stop_at_eos=False,
                    batch_size=4,
                    **{k: v for k, v in ex.items() if k != "method"},
                )
        r = interleaved(cfgs, 1 if q else 3)
        tpot = {
            k: 1000 * (r[f"{k}@{T}"]["wall"] - r[f"{k}@1"]["wall"]) / (T - 1)
            for k in ("greedy", "la_batched", "la_two_pass")
        }
        ttft = {k: 1000 * r[f"{k}@1"]["wall"] for k in tpot}
        total = {k: 1000 * r[f"{k}@{T}"]["wall"] / T for k in tpot}
        la[f"batch{B}"] = {
            "tpot_ms": tpot,
            "ttft_ms": ttft,
            "wall_per_token_ms_incl_prefill": total,
            "ratio_tpot_la_batched": tpot["la_batched"] / tpot["greedy"],
            "ratio_tpot_la_two_pass": tpot["la_two_pass"] / tpot["greedy"],
            "ratio_incl_prefill_la_batched": total["la_batched"] / total["greedy"],
            "principle_tokens": r[f"la_batched@{T}"]["out"][0].extra["principle_tokens"],
        }
        print(f"[LA batch {B}] {json.dumps(la[f'batch{B}'])}", flush=True)
    report["linear_alignment"] = {"prompts": "first 4 task eval prompts", "new_tokens": T, **la}

    # 2. ARGS k=10 vs greedy ---------------------------------------------------------------------------
    T2 = 8 if q else 32
    kw2 = dict(max_new_tokens=T2, stop_at_eos=False, batch_size=4)
    r = interleaved(
        {
            "greedy": lambda: decode(model, tok, task, "greedy", **kw2),
            "args_k10": lambda: decode(model, tok, task, "args", reward=gold, k=10, **kw2),
        },
        1,
    )
    rt = {k: 1000 * v["wall"] / T2 for k, v in r.items()}
    report["args"] = {
        "prompts": 4,
        "new_tokens": T2,
        "k": 10,
        "reward": "gold-v1 (MiniLM)",
        "ms_per_token": rt,
        "ratio": rt["args_k10"] / rt["greedy"],
        "reward_calls_per_token": r["args_k10"]["out"][0].cost.per_token()["reward_calls"],
    }
    print(f"[ARGS] {json.dumps(report['args'])}", flush=True)

    # 3. TQ* direct: cached + batched vs re-encoding the prefix per rollout ------------------------------
    recs = load_preference_records(str(HH), limit=8)
    recs = recs[0] if isinstance(recs, tuple) else recs
    hh = [r.prompt for r in recs][: 2 if q else 4]
    T3 = 1 if q else 3
    rollout = copy.deepcopy(model)  # the general case: a separate aligned model (here: same weights)
    kw3 = dict(k=10, horizon=20, max_new_tokens=T3, stop_at_eos=False)
    r = interleaved(
        {
            "alignlab_batched": lambda: decode(
                model, tok, hh, "tq-direct", reward=gold, rollout_model=rollout, batch_size=len(hh), **kw3
            ),
            "alignlab_batch1": lambda: decode(
                model, tok, hh, "tq-direct", reward=gold, rollout_model=rollout, batch_size=1, **kw3
            ),
            "naive_reencode": lambda: naive_tq_direct(
                model, tok, hh, gold, rollout_model=rollout, k=10, horizon=20, max_new_tokens=T3, stop_at_eos=False
            ),
        },
        1,
    )
    same = [o.completion_ids for o in r["alignlab_batched"]["out"]] == r["naive_reencode"]["out"]
    n_tok = len(hh) * T3
    st = {k: v["wall"] / n_tok for k, v in r.items()}
    lens = [len(o.prompt_ids) for o in r["alignlab_batched"]["out"]]
    report["tq_direct"] = {
        "prompts": f"first {len(hh)} HH-RLHF harmless-base test prompts (SmolLM2 chat template)",
        "prompt_tokens": lens,
        "new_tokens_per_prompt": T3,
        "k": 10,
        "horizon": 20,
        "rollouts": 1,
        "s_per_token": st,
        "speedup_batched": st["naive_reencode"] / st["alignlab_batched"],
        "speedup_batch1": st["naive_reencode"] / st["alignlab_batch1"],
        "cpu_speedup_batched": r["naive_reencode"]["cpu"] / r["alignlab_batched"]["cpu"],
        "token_identical": same,
        "cost_per_token_alignlab": r["alignlab_batched"]["out"][0].cost.per_token(),
    }
    print(f"[TQ*] {json.dumps(report['tq_direct'])}", flush=True)
    report["load_avg_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
