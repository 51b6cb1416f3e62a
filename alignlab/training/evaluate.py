"""Held-out evaluation during training: the training objective over a fixed preference set, without gradients.

Each rank scores a round-robin shard of the eval pairs in length order (the shards and the order of the reference
precompute, alignlab.precompute.reference: with eval_batch_size = ref_batch_size the batches are the same ones),
sums every per-pair metric (alignlab.training.metrics.pair_values) in float64 with the pair count, and one
all-reduce (sum) joins the ranks, so N processes give the numbers of one. The model runs unwrapped from DDP (no
collective per forward: shards may hold different numbers of batches), in eval mode, and goes back to the mode it
was in. Rows are logged as ``eval_<TRL name>`` at step 0 (before training), every ``eval_steps`` optimizer steps
and at the end; the step-0 row also carries the length-only baselines ``eval_baseline/*``. The lowest
``eval_loss`` is recorded in ``best.json`` and report.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.data.collate import collate_pairs
from alignlab.data.tokenize import TokenizedPair
from alignlab.training.checkpoint import checkpoint_at
from alignlab.training.metrics import EVAL_PREFIX, pair_values
from alignlab.training.step import PairStats, StepSettings, pair_objective


@dataclass
class EvalSet:
    """The held-out pairs and what the loss needs precomputed for them, both indexed like ``pairs``:
    ref_table [N, 2] summed reference log-probs (None for reference-free losses); token_rewards per-pair
    (chosen, rejected) r̂ lists (token-level losses only)."""

    pairs: list[TokenizedPair]
    ref_table: torch.Tensor | None
    token_rewards: list | None
    batch_size: int


def eval_due(step: int, every: int, total: int) -> bool:
    """Evaluate after ``step`` optimizer steps? At 0 (before training), every ``every`` steps (0: never between)
    and at the end (``total``)."""
    return step == 0 or step == total or (every > 0 and step % every == 0)


def shard_batches(pairs: list[TokenizedPair], rank: int, world: int, batch_size: int) -> list[list[int]]:
    """This rank's eval batches: pairs rank, rank + world, ... longest first (the reference precompute's order)."""
    mine = sorted(
        range(rank, len(pairs), world),
        key=lambda i: -len(pairs[i].prompt_ids) - max(len(pairs[i].chosen_ids), len(pairs[i].rejected_ids)),
    )
    return [mine[s : s + batch_size] for s in range(0, len(mine), batch_size)]


def shard_sums(settings: StepSettings, scorer, es: EvalSet, pad_id: int, rank: int, world: int, device):
    """(names, [len(names) + 1] float64 sums of every per-pair metric over this rank's shard, then the pair
    count). ``scorer``: a SequenceScorer (not DDP-wrapped); call under no_grad."""
    token_rewards = es.token_rewards if settings.spec.token_level else None
    parts, pack = [], getattr(scorer, "pack_spec", None)  # the layout of the reference precompute and of training
    for idx in shard_batches(es.pairs, rank, world, es.batch_size):
        batch = collate_pairs([es.pairs[i] for i in idx], idx, pad_id, es.ref_table, token_rewards, pack).to(device)
        obj, pl = pair_objective(settings, scorer, batch)
        parts.append(PairStats.of(obj, pl))
    values = pair_values(PairStats.cat(parts))
    sums = [v.detach().double().sum().cpu() for v in values.values()]
    return list(values), torch.stack(sums + [torch.tensor(float(len(values["loss"])), dtype=torch.float64)])


@torch.no_grad()
def evaluate(settings: StepSettings, accelerator, scorer, es: EvalSet, pad_id: int) -> dict[str, float]:
    """Collective (every rank calls it): the eval metrics ``eval_<name>`` over the whole eval set, and
    ``eval_runtime`` (seconds). ``scorer``: the prepared (possibly DDP-wrapped) SequenceScorer of training."""
    t0 = time.perf_counter()
    was_training = scorer.training
    scorer.eval()
    try:
        rank, world = accelerator.process_index, accelerator.num_processes
        names, sums = shard_sums(
            settings, accelerator.unwrap_model(scorer), es, pad_id, rank, world, accelerator.device
        )
    finally:
        scorer.train(was_training)
    if world > 1:
        sums = accelerator.reduce(sums.to(accelerator.device), reduction="sum").cpu()
    n = sums[-1]
    metrics = {EVAL_PREFIX + k: (s / n).item() for k, s in zip(names, sums[:-1])}
    return metrics | {EVAL_PREFIX + "runtime": time.perf_counter() - t0}


def length_baselines(pairs: list[TokenizedPair]) -> dict[str, float]:
    """Share of pairs whose chosen response is the longer / the shorter one in completion tokens (ties count 1/2
    each): the accuracy a length-only judge would reach, to read ``eval_rewards/accuracies`` against."""
    signs = [(len(p.chosen_ids) > len(p.rejected_ids)) - (len(p.chosen_ids) < len(p.rejected_ids)) for p in pairs]
    n, ties = max(len(signs), 1), signs.count(0) / 2
    return {
        f"{EVAL_PREFIX}baseline/longer_wins": (signs.count(1) + ties) / n,
        f"{EVAL_PREFIX}baseline/shorter_wins": (signs.count(-1) + ties) / n,
    }


def best_eval(rows: list[dict]) -> dict | None:
    """The eval row with the lowest ``eval_loss`` (the earliest on a tie) as {"best_step", "best_eval_loss"}."""
    rows = [r for r in rows if f"{EVAL_PREFIX}loss" in r]
    if not rows:
        return None
    best = min(rows, key=lambda r: (r[f"{EVAL_PREFIX}loss"], r["step"]))
    return {"best_step": best["step"], "best_eval_loss": best[f"{EVAL_PREFIX}loss"]}


def write_best(run_dir: Path, rows: list[dict]) -> dict | None:
    """``run_dir/best.json``: the best step, its eval_loss and the checkpoint saved at that step (its path, or
    None when no checkpoint was saved there or it was pruned by save_total_limit)."""
    best = best_eval(rows)
    if best is None:
        return None
    ckpt = checkpoint_at(Path(run_dir), best["best_step"])
    best["checkpoint"] = str(ckpt) if ckpt is not None else None
    (Path(run_dir) / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    return best


def eval_report(best: dict | None, rows: list[dict]) -> str:
    """report.md's held-out section: the eval curve (loss, accuracy, margin) and the best step."""
    if best is None:
        return ""
    k = EVAL_PREFIX
    lines = [
        "## Held-out evaluation (eval_data)",
        "",
        "| step | eval_loss | eval_rewards/accuracies | eval_rewards/margins |",
    ]
    lines.append("|---|---|---|---|")
    lines += [
        f"| {r['step']} | {r[k + 'loss']:.4f} | {r[k + 'rewards/accuracies']:.3f} | {r[k + 'rewards/margins']:.4f} |"
        for r in rows
        if k + "loss" in r
    ]
    base = next((r for r in rows if k + "baseline/longer_wins" in r), None)
    if base is not None:
        lines += [
            "",
            f"Length-only baselines: the longer response wins {base[k + 'baseline/longer_wins']:.3f}, the shorter "
            f"{base[k + 'baseline/shorter_wins']:.3f} (ties count 1/2).",
        ]
    where = best["checkpoint"] or (
        "none saved at that step, or pruned (save_steps a multiple of eval_steps and save_total_limit=0 keep it)"
    )
    lines += ["", f"Best: step {best['best_step']}, eval_loss {best['best_eval_loss']:.6g}; checkpoint: {where}", ""]
    return "\n".join(lines)
