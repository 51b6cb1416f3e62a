"""Worker for tests/test_rl_distributed.py, run as one plain process (`python tests/rl_dist_worker.py ...`) or as
2 gloo CPU ranks under `accelerate launch --multi_gpu --num_processes 2 ...` (tests/launch.py).

``--mode update``: for every case of ``--cases``, ONE ``rl_step.update`` of a fresh LoRA policy (and, for PPO, a
LoRA value model) on the fixed rollout batch ``--batch`` (written by the test: 8 rows, 4 prompts x 2 samples).
With W processes rank r takes rows r*8/W .. (r+1)*8/W - 1: whole groups, so group statistics stay exact. Each rank
scores its rows (old, reference, values), perturbs the old log-probs with the batch's stored noise (ratios != 1,
so clipping is exercised), computes advantages on its rows and runs the update. Every rank writes
``params_rank<r>.pt`` ({case: {name: tensor}} after the update) and rank 0 also ``result.json`` (world, per-case
update statistics) and ``init.pt`` (the trainable parameters before the update).

``--mode rl``: `alignlab rl` itself (``recipes.rl.rl``) for ``--steps`` steps with a toy reward; rank 0 writes
``result.json`` (world, the returned metric rows). Every rank writes ``done_rank<r>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

# case name -> (algo, extra RLSettings, optimizer); kl_estimator follows the algorithm's default
CASES = {
    "rloo": ("rloo", {}, "sgd"),
    "rloo_norm": ("rloo", {"normalize_advantages": True}, "sgd"),
    "grpo_dapo": ("grpo", {"loss_type": "dapo"}, "sgd"),
    "grpo_grpo": ("grpo", {"loss_type": "grpo"}, "sgd"),
    "grpo_batch": ("grpo", {"loss_type": "dapo", "scale_rewards": "batch"}, "sgd"),
    "grpo_dapo_adamw": ("grpo", {"loss_type": "dapo"}, "adamw"),
    "ppo": ("ppo", {}, "sgd"),
    "ppo_whiten": ("ppo", {"whiten_rewards": True}, "sgd"),
}
LR = {"sgd": 1.0, "adamw": 1e-3}
NOISE = {"rloo": 0.1, "grpo": 0.3, "ppo": 0.3}  # RLOO's ratio is per sequence: a smaller per-token perturbation


def length_reward(prompt: str, response: str) -> float:
    return len(response) / 10.0  # varies with every sample of the tiny random model (a letter count is mostly 0)


def load_batch(path: str, rank: int, world: int):
    """The rank's rows of the saved batch (whole groups) and their noise."""
    from alignlab.training.rl_batch import RolloutBatch

    d = torch.load(path, weights_only=True)
    noise = d.pop("noise")
    full = RolloutBatch(**d)
    n = len(full) // world
    if n * world != len(full) or n % full.group_size:
        raise ValueError(f"{len(full)} rows do not split into {world} ranks of whole groups of {full.group_size}")
    idx = list(range(rank * n, (rank + 1) * n))
    return full.rows(idx), noise[idx]


def run_case(name: str, acc, args) -> tuple[dict, dict, dict]:
    """(trainable parameters before, after, update statistics) of one update."""
    from alignlab.models.loading import load_model_and_tokenizer
    from alignlab.models.lora import apply_lora
    from alignlab.models.scorer import SequenceScorer
    from alignlab.recipes.rl import RLConfig
    from alignlab.rollout.rl_setup import load_value_model
    from alignlab.training import rl_step
    from alignlab.training.rl_batch import ValueScorer, response_logps, token_values

    algo, extra, opt_name = CASES[name]
    rank, world = acc.process_index, acc.num_processes
    model, _ = load_model_and_tokenizer(args.model)
    torch.manual_seed(0)  # the LoRA A init: identical in every process and run
    policy = apply_lora(model, r=4, alpha=8)
    policy.train()
    s = rl_step.RLSettings(algo=algo, kl_coef=0.05, kl_estimator="k3" if algo == "grpo" else "k1")
    s = replace(s, micro_batch_size=2, num_ppo_epochs=2, max_grad_norm=0.0, **extra)
    value = None
    if algo == "ppo":
        vcfg = RLConfig(model=args.model, value_model=args.model, algo="ppo", reward="gold", lora_r=4, lora_alpha=8)
        value = ValueScorer(load_value_model(vcfg))
    scorer = SequenceScorer(policy)
    named = {f"policy.{n}": p for n, p in policy.named_parameters() if p.requires_grad}
    if value is not None:
        named |= {f"value.{n}": p for n, p in value.named_parameters() if p.requires_grad}
    params = list(named.values())
    opt = torch.optim.SGD(params, lr=LR[opt_name]) if opt_name == "sgd" else torch.optim.AdamW(params, lr=LR[opt_name])
    if value is not None:
        scorer, value, opt = acc.prepare(scorer, value, opt)
    else:
        scorer, opt = acc.prepare(scorer, opt)
    before = {n: p.detach().clone() for n, p in named.items()}

    batch, noise = load_batch(args.batch, rank, world)
    orders = rl_step.epoch_orders(s, len(batch))

    def ref(rows):
        with policy.disable_adapter():
            return response_logps(scorer, rows)

    vfn = (lambda rows: token_values(value, rows)) if value is not None else None
    rl_step.score_rollouts(s, batch, scorer, ref, orders[0], vfn)
    batch.old_logp = (batch.old_logp + NOISE[algo] * noise) * batch.response_mask
    adv_stats = rl_step.advantages(s, batch)
    stats = rl_step.update(s, acc, scorer, opt, None, batch, orders, 0, value)
    after = {n: p.detach().clone() for n, p in named.items()}
    return before, after, adv_stats | stats


def mode_update(args) -> None:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    rank, world = acc.process_index, acc.num_processes
    out = Path(args.out)
    init, params, stats = {}, {}, {}
    for name in args.cases.split(","):
        init[name], params[name], stats[name] = run_case(name, acc, args)
    torch.save(params, out / f"params_rank{rank}.pt")
    if rank == 0:
        torch.save(init, out / "init.pt")
        (out / "result.json").write_text(json.dumps({"world": world, "stats": stats}))
    acc.wait_for_everyone()


def mode_rl(args) -> None:
    from accelerate import PartialState

    from alignlab.recipes.rl import RLConfig, rl
    from alignlab.rewards import FunctionReward

    out = Path(args.out)
    cfg = RLConfig(
        model=args.model,
        prompts="task:train",
        limit=8,
        reward="custom",
        track_gold=False,
        algo=args.algo,
        prompts_per_step=2,
        max_steps=args.steps,
        max_new_tokens=8,
        max_prompt_length=1024,
        per_device_batch_size=2,
        lora_r=4,
        lora_alpha=8,
        output_dir=str(out / "run"),
        report_to=[],
        cpu=True,
    )
    res = rl(cfg, reward=FunctionReward(length_reward, name="length"))
    state = PartialState()
    rank, world = state.process_index, state.num_processes
    if rank == 0:
        (out / "result.json").write_text(json.dumps({"world": world, "steps": res.steps, "metrics": res.metrics}))
    (out / f"done_rank{rank}.json").write_text(json.dumps({"rank": rank, "world": world, "steps": res.steps}))
    print(f"[rl_dist_worker] rank {rank}/{world} done after {res.steps} steps", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["update", "rl"], required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", default="")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--algo", default="rloo")
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    mode_update(args) if args.mode == "update" else mode_rl(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
