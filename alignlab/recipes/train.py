"""`alignlab train`: offline preference optimisation (DPO family, SimPO) on accelerate.

One readable loop. The same code runs as 1 CPU process, N processes (`accelerate launch`) or on GPUs:
- reference log-probs are computed once (cached on disk) before training; with LoRA the reference is the
  base model with no adapter (one copy of the weights, pitfalls R9);
- gradient accumulation is explicit: each micro-batch's summed per-pair loss is divided by the number of
  pairs in the whole effective batch (x world, since DDP averages ranks), so the step's gradient does not
  depend on how the batch is split (pitfalls R7). accelerate's own loss scaling is not used;
- a non-finite gradient norm (identical on every rank after the all-reduce) stops the run before the
  optimizer step, naming the step and the batch, so the last checkpoint stays intact.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from alignlab.config import save_config
from alignlab.data.collate import collate_pairs
from alignlab.data.formats import load_preference_records
from alignlab.data.tokenize import TokenizedPair, tokenize_pairs
from alignlab.losses import REFERENCE_FREE, TOKEN_LEVEL
from alignlab.losses.objective import preference_objective
from alignlab.losses.types import PairLogps, TokenTerms
from alignlab.models.loading import load_model_and_tokenizer, model_fingerprint
from alignlab.models.lora import apply_lora
from alignlab.models.scorer import SequenceScorer
from alignlab.training.checkpoint import find_resume_dir, load_checkpoint, save_checkpoint
from alignlab.training.metrics import MetricsLogger, step_metrics
from alignlab.precompute.reference import reference_key, reference_logps
from alignlab.training.schedule import BatchPlan
from alignlab.precompute.token_rewards import token_rewards_for_training
from alignlab.recipes.train_config import TrainConfig


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient is NaN/inf; names the step and the batch."""


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    steps: int
    metrics: list[dict]
    ref_cache_hit: bool
    model: object = None  # the trained model (PeftModel with LoRA), unwrapped from accelerate
    treg_cache_hit: bool = False  # T-REG token rewards loaded from the cache (token-level losses only)


def _build_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def _pair_logps(out, n: int, ref: torch.Tensor | None) -> PairLogps:
    s, c = out.sum, out.count
    return PairLogps(s[:n], s[n:], c[:n], c[n:], None if ref is None else ref[:n], None if ref is None else ref[n:])


def prepare_data(cfg: TrainConfig, tokenizer) -> tuple[list[TokenizedPair], dict]:
    records, load_report = load_preference_records(cfg.data, split=cfg.split, limit=cfg.limit, on_bad=cfg.on_bad)
    pairs, tok_report = tokenize_pairs(records, tokenizer, cfg.max_length, cfg.max_prompt_length)
    info = {"load": {"read": load_report.read, "kept": load_report.kept, "skipped": load_report.skipped,
                     "skipped_examples": load_report.examples},
            "tokenize": tok_report.as_metrics() | {"dropped_sources": tok_report.dropped_sources[:20]}}
    return pairs, info


def train(cfg: TrainConfig, model=None, tokenizer=None, pairs: list[TokenizedPair] | None = None) -> TrainResult:
    """Run the recipe. ``model``/``tokenizer``/``pairs`` may be passed in (tests, demo) instead of loaded."""
    cfg.validate()
    run_dir = Path(cfg.output_dir)
    accelerator = Accelerator(cpu=cfg.cpu, log_with=None if cfg.report_to == "none" else cfg.report_to,
                              project_dir=str(run_dir))
    set_seed(cfg.seed)
    is_main = accelerator.is_main_process
    if model is None:
        model, tokenizer = load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    data_info = {}
    if pairs is None:
        pairs, data_info = prepare_data(cfg, tokenizer)
    if is_main:
        save_config(cfg, run_dir)
        (run_dir / "data_report.json").write_text(json.dumps(data_info, indent=2))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # Reference log-probs before any adapter exists: with a fresh LoRA adapter this *is* the
    # disabled-adapter reference, and the reference weights are never needed again during training.
    needs_ref = not (cfg.reference_free or cfg.loss in REFERENCE_FREE)
    ref_table, ref_hit = None, False
    model.to(accelerator.device)
    # T-REG token rewards (token-level losses only): scored once by the frozen reference (this model, before any
    # adapter) or cfg.treg_scorer, cached like the reference log-probs; bad templates/tokenizers fail here.
    token_table, treg_hit = None, False
    scores_here = needs_ref or (cfg.loss in TOKEN_LEVEL and not cfg.treg_scorer)
    model_fp = model_fingerprint(model) if scores_here else None  # hashes every weight: once
    if cfg.loss in TOKEN_LEVEL:
        treg = token_rewards_for_training(cfg, accelerator, model, tokenizer, pairs, model_fp)
        token_table, treg_hit = treg.rewards, treg.cache_hit
    if needs_ref:
        key = reference_key(pairs, model_fp, cfg.dtype)
        ref_table, ref_hit, ref_path = reference_logps(accelerator, SequenceScorer(model), pairs, pad_id, key,
                                                       cfg.ref_batch_size)
        if is_main:
            print(f"[alignlab] reference log-probs: {'cache hit' if ref_hit else 'computed'} ({ref_path})")

    if cfg.lora:
        targets = cfg.lora_target if cfg.lora_target == "all-linear" else cfg.lora_target.split(",")
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, target_modules=targets,
                           top_layers=cfg.lora_top_layers)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    plan = BatchPlan(len(pairs), cfg.per_device_batch_size, cfg.grad_accum, accelerator.num_processes, cfg.seed,
                     [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs])
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * plan.steps_per_epoch
    scheduler = _build_scheduler(cfg, optimizer, total_steps)
    scorer = SequenceScorer(model)
    scorer, optimizer, scheduler = accelerator.prepare(scorer, optimizer, scheduler)

    start_step = 0
    resume_dir = find_resume_dir(cfg.resume_from, run_dir)
    if resume_dir is not None:
        start_step = load_checkpoint(accelerator, resume_dir)
        if is_main:
            print(f"[alignlab] resumed from {resume_dir} at step {start_step}")
    if cfg.report_to != "none":
        accelerator.init_trackers("tb")
    logger = MetricsLogger(run_dir / "metrics.jsonl", accelerator, append=start_step > 0)
    if is_main:
        print(f"[alignlab] {len(pairs)} pairs, {accelerator.num_processes} process(es) on {accelerator.device}, global batch {plan.global_size}, {plan.steps_per_epoch} steps/epoch "
              f"({plan.dropped_per_epoch} pairs/epoch left over), {total_steps} steps")
    history: list[dict] = []
    last_step = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps
    bar = _progress(is_main, start_step, total_steps)
    for step in range(start_step, last_step):
        t0 = time.perf_counter()
        rows = _train_step(cfg, accelerator, scorer, optimizer, scheduler, plan, pairs, ref_table, pad_id, step,
                           token_rewards=token_table)
        rows["time/step_s"] = time.perf_counter() - t0
        record = step_metrics(rows, step + 1, scheduler.get_last_lr()[0], cfg.resolved_beta)
        history.append(record)
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == last_step:
            logger.log(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < last_step:
            save_checkpoint(accelerator, run_dir, step + 1, cfg.save_total_limit)
    if bar is not None:
        bar.close()
    save_checkpoint(accelerator, run_dir, last_step, cfg.save_total_limit)
    final_dir = run_dir / "final"
    if is_main and last_step == total_steps:
        unwrapped = accelerator.unwrap_model(scorer).model
        unwrapped.save_pretrained(final_dir, safe_serialization=True)
        tokenizer.save_pretrained(final_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    trained = accelerator.unwrap_model(scorer).model
    trained.eval()
    return TrainResult(run_dir, final_dir, last_step, history, ref_hit, trained, treg_hit)


def _progress(is_main: bool, start: int, total: int):
    if not is_main:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


def accumulate_gradients(cfg, accelerator, scorer, plan, pairs, ref_table, pad_id, step,
                         token_rewards=None) -> tuple[dict, list]:
    """Forward/backward over this rank's micro-batches of one step (no optimizer step).

    Each micro-batch contributes sum(per-pair losses) * world / n_pairs_global (+ the SFT term over the
    global chosen-token count), so the accumulated gradient is the effective-batch mean however the batch
    is split over micro-batches and ranks (DDP averages over ranks, hence * world). Returns the per-pair
    tensors for metrics and the sources of any micro-batch whose loss was not finite.
    Token-level losses (T-REG) also need ``token_rewards`` (per-pair (chosen, rejected) r̂ lists of the whole
    dataset); only they ask the scorer for per-token log-probs, so other losses run unchanged.
    """
    micro = plan.micro_batches(step, accelerator.process_index)
    global_idx = plan.global_batch(step)
    n_global = len(global_idx)
    chosen_tokens = sum(len(pairs[i].chosen_ids) for i in global_idx)  # R7: counted before any backward
    world = accelerator.num_processes
    loss_params = cfg.loss_params()
    keep: dict[str, list[torch.Tensor]] = {k: [] for k in ("loss", "rc", "rr", "lc", "lr", "nc", "nr", "klc", "klr")}
    bad_local = []
    token_level = cfg.loss in TOKEN_LEVEL
    if token_level and token_rewards is None:
        raise ValueError(f"loss {cfg.loss!r} needs token rewards (recipes.token_rewards)")
    for j, idx in enumerate(micro):
        batch = collate_pairs([pairs[i] for i in idx], idx, pad_id, ref_table,
                              token_rewards if token_level else None).to(accelerator.device)
        sync = j == len(micro) - 1
        ctx = contextlib.nullcontext() if sync else accelerator.no_sync(scorer)
        with ctx:
            out = scorer(batch.input_ids, batch.attention_mask, batch.completion_mask, return_tokens=token_level)
            pl = _pair_logps(out, batch.n_pairs, batch.ref_logps)
            tokens = TokenTerms(out.token, batch.completion_mask[:, 1:], batch.token_rewards) if token_level else None
            obj = preference_objective(pl, cfg.loss, loss_params, cfg.reference_free, tokens)
            loss = obj.losses.sum() * world / n_global
            if cfg.sft_weight > 0:
                loss = loss + cfg.sft_weight * obj.sft_nll_sum * world / chosen_tokens
            if not torch.isfinite(loss):
                bad_local.append([pairs[i].source for i in idx])
            accelerator.backward(loss)
        keep["loss"].append(obj.losses.detach())
        keep["rc"].append(obj.chosen_rewards)
        keep["rr"].append(obj.rejected_rewards)
        keep["lc"].append(pl.chosen.detach())
        keep["lr"].append(pl.rejected.detach())
        keep["nc"].append(pl.chosen_len.float())
        keep["nr"].append(pl.rejected_len.float())
        for k, v in obj.extras.items():  # treg/* per-pair metrics
            keep.setdefault(k, []).append(v)
        if pl.ref_chosen is not None:
            keep["klc"].append((pl.ref_chosen - pl.chosen).detach())
            keep["klr"].append((pl.ref_rejected - pl.rejected).detach())
    return keep, bad_local


def _train_step(cfg, accelerator, scorer, optimizer, scheduler, plan, pairs, ref_table, pad_id, step,
                token_rewards=None) -> dict:
    """One optimizer step; returns gathered per-pair tensors for metrics."""
    keep, bad_local = accumulate_gradients(cfg, accelerator, scorer, plan, pairs, ref_table, pad_id, step,
                                           token_rewards=token_rewards)
    grad_norm = accelerator.clip_grad_norm_(scorer.parameters(), cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf)
    if not torch.isfinite(torch.as_tensor(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        global_idx = plan.global_batch(step)
        raise NonFiniteLossError(
            f"non-finite loss/gradient at step {step + 1} (global batch of {len(global_idx)} pairs, dataset indices "
            f"{global_idx[:16]}{'...' if len(global_idx) > 16 else ''}); offending micro-batches on rank "
            f"{accelerator.process_index}: {bad_local[:2]}. The last checkpoint is intact.")
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    rows = {k: accelerator.gather(torch.cat(v)).cpu() for k, v in keep.items() if v}
    rows["grad_norm"] = float(grad_norm)
    return rows
