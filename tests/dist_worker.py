"""Worker for tests/test_distributed.py: one `alignlab train` run, launched either as a plain single process
(`python tests/dist_worker.py ...`) or under `accelerate launch --multi_gpu --num_processes 2 ...`.

Every rank writes `<out>/done_rank<r>.json` after train() returns (proves no rank hung). Rank 0 also writes
`<out>/result.json` (world size, per-step metrics, reference-cache hit) and `<out>/params.pt` (the final
trained parameters, CPU fp32). `--fail-rank R --fail-step S` raises on rank R when step index S starts
(i.e. after S completed optimizer steps), to check that one failing rank ends the whole launch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-device", type=int, default=2)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=3)  # <= 0: one epoch
    ap.add_argument("--lora", type=int, default=0)
    ap.add_argument("--loss", default="dpo")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fail-rank", type=int, default=-1)
    ap.add_argument("--fail-step", type=int, default=-1)
    ap.add_argument("--eval-data", default="")  # held-out pairs: eval rows go into result.json's "eval"
    ap.add_argument("--eval-steps", type=int, default=0)
    args = ap.parse_args(argv)

    import alignlab.recipes.train as T
    import alignlab.training.step as S
    from alignlab.recipes.train import TrainConfig

    if args.fail_rank >= 0:
        orig = S.train_step

        def failing(settings, accelerator, *rest, **kw):  # kw: token_rewards (T-REG), passed by keyword
            step = rest[-1]
            if accelerator.process_index == args.fail_rank and step == args.fail_step:
                raise RuntimeError(f"forced failure on rank {accelerator.process_index} at step index {step}")
            return orig(settings, accelerator, *rest, **kw)

        S.train_step = failing

    out = Path(args.out)
    lora = dict(lora=True, lora_r=4, lora_alpha=8) if args.lora else dict(lora=False)  # LoRA keys only with LoRA
    held_out = dict(eval_data=args.eval_data, eval_steps=args.eval_steps) if args.eval_data else {}
    cfg = TrainConfig(
        model=args.model,
        data=args.data,
        output_dir=str(out / "run"),
        **lora,
        **held_out,
        loss=args.loss,
        report_to="none",
        cpu=True,
        gradient_checkpointing=False,
        per_device_batch_size=args.per_device,
        grad_accum=args.accum,
        max_steps=args.max_steps if args.max_steps > 0 else -1,
        epochs=1,
        learning_rate=args.lr,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        max_length=128,
        max_prompt_length=64,
        ref_batch_size=3,
        seed=11,
    )
    res = T.train(cfg)
    from accelerate import PartialState

    from alignlab.training.metrics import read_metrics

    state = PartialState()
    rank, world = state.process_index, state.num_processes
    if rank == 0:
        params = {n: p.detach().float().cpu().clone() for n, p in res.model.named_parameters()}
        torch.save(params, out / "params.pt")
        (out / "result.json").write_text(
            json.dumps(
                {
                    "world": world,
                    "steps": res.steps,
                    "metrics": res.metrics,
                    "ref_cache_hit": res.ref_cache_hit,
                    "eval": read_metrics(out / "run" / "metrics.jsonl", rows="eval"),
                }
            )
        )
    (out / f"done_rank{rank}.json").write_text(json.dumps({"rank": rank, "world": world, "steps": res.steps}))
    print(f"[dist_worker] rank {rank}/{world} done after {res.steps} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
