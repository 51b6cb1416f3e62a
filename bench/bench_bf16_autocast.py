"""bf16 autocast vs fp32 for alignlab's DPO step on this CPU: speed of one forward+backward, and the DPO loss.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_bf16_autocast.py [--reps 3] [--threads 1] [--json out.json]

* Speed: one micro-batch of 4 HH pairs (max_length 256, the throughput benchmark's first batch shape) through
  ``SequenceScorer`` (packed, the default) + DPO loss + backward, SmolLM2-135M-Instruct with fp32 weights, either
  plain fp32 or under ``torch.autocast("cpu", bfloat16)`` (fp32 master weights; the log-softmax and the log-prob
  sums stay fp32, L2.5). fp32 and bf16 repetitions are interleaved; the median is reported.
* Loss: the TRL-parity recipe (tests/test_trl_parity.py: the first 8 HH pairs whose prompt fits max_length 64, one
  batch, one plain SGD step, lr 2e-3, loss dpo): reference precompute, step and the loss after the step, each in the
  run's precision. The issue's bar: |loss_bf16 - loss_fp32| <= 1e-3 (pairs tokenized by alignlab here, not TRL).
* The CPU flags that decide whether bf16 can be fast (avx512_bf16, amx_bf16) are printed with the result.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"


def cpu_flags() -> dict[str, bool]:
    flags: list[str] = []
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pass
    return {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from alignlab.data.collate import collate_pairs
    from alignlab.data.formats import load_preference_records
    from alignlab.data.tokenize import PairTokenizer, tokenize_pairs
    from alignlab.models.loading import load_model_and_tokenizer
    from alignlab.models.scorer import SequenceScorer

    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32")
    scorer = SequenceScorer(model)
    records, _ = load_preference_records(str(DATA), limit=60)

    def precision(bf16: bool):
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def dpo(out, ref, n):
        h = (out.sum[:n] - ref[:n]) - (out.sum[n:] - ref[n:])
        return -F.logsigmoid(0.1 * h).mean()

    # speed: one training micro-batch
    pairs, _ = tokenize_pairs(records[:4], tok, 256, 255)
    b = collate_pairs(pairs, list(range(len(pairs))), tok.pad_token_id, pack=scorer.pack_spec)
    ref = torch.zeros(2 * len(pairs))
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for rep in range(args.reps + 1):  # the first round is a warm-up
        for name in ("fp32", "bf16"):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            with precision(name == "bf16"):
                out = scorer(b.input_ids, b.attention_mask, b.completion_mask, packed=b.packed)
                loss = dpo(out, ref, len(pairs))
            loss.backward()
            dt = time.perf_counter() - t
            print(f"round {rep} {name}: {dt:.1f} s{' (warm-up)' if not rep else ''}", file=sys.stderr, flush=True)
            if rep:
                times[name].append(dt)

    # loss: the TRL-parity recipe
    pt = PairTokenizer(tok)
    kept = [r for r in records if len(pt.prompt_ids(r.prompt)) < 64][:8]  # the records TRL keeps at max_length 64
    ppairs, _ = tokenize_pairs(kept, tok, 64, 63)
    pb = collate_pairs(ppairs, list(range(len(ppairs))), tok.pad_token_id, pack=scorer.pack_spec)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses = {}
    for name in ("fp32", "bf16"):
        model.load_state_dict(start)
        model.zero_grad(set_to_none=True)
        with precision(name == "bf16"):
            with torch.no_grad():
                ref = scorer(pb.input_ids, pb.attention_mask, pb.completion_mask, packed=pb.packed).sum.float()
            loss0 = dpo(scorer(pb.input_ids, pb.attention_mask, pb.completion_mask, packed=pb.packed), ref, 8)
        loss0.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 2e-3 * p.grad
            with precision(name == "bf16"):
                out = scorer(pb.input_ids, pb.attention_mask, pb.completion_mask, packed=pb.packed)
                losses[name] = (loss0.item(), dpo(out, ref, 8).item())
    res = {
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": args.threads,
        "fwd_bwd_s": {k: statistics.median(v) for k, v in times.items()},
        "fwd_bwd_s_all": times,
        "bf16_over_fp32_time": statistics.median(times["bf16"]) / statistics.median(times["fp32"]),
        "parity_loss_step0": {k: v[0] for k, v in losses.items()},
        "parity_loss_after_sgd_step": {k: v[1] for k, v in losses.items()},
        "parity_loss_abs_diff_after_step": abs(losses["bf16"][1] - losses["fp32"][1]),
        "positions": b.packed.positions if b.packed is not None else b.input_ids.numel(),
    }
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
