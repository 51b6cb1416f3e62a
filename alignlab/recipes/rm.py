"""`alignlab rm`: a Bradley–Terry reward model on preference pairs (docs/reward_models.md), on accelerate.

One readable loop, like `alignlab train`; the same code runs as 1 CPU process, N processes or on GPUs:
1. validate the config (a key that is not read is an error) and read the data: an empty file or fewer usable pairs
   than one global batch stops here, before any model loads;
2. load the backbone as a 1-label sequence-classification model (new ``score`` head), tokenize the pairs with the
   training conventions (chat-templated prompt, completion ids ending with one EOS);
3. wrap in LoRA (adapters on the backbone, the head trained in full), prepare with accelerate, resume if asked;
4. each step: ``alignlab.training.rm_step.rm_train_step`` (chosen and rejected rows of every pair in one forward,
   Bradley–Terry loss, with the data's per-pair soft labels ``p_chosen`` and margins ``margin`` when it carries
   them), metrics, held-out evaluation at step 0, every ``eval_steps`` and at the end (with the
   length-only baseline at step 0), checkpoints; then the merged model in ``output_dir/final`` as a plain
   transformers sequence-classification checkpoint, optionally normalised (``normalize_on``), and report.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from alignlab.config import ConfigError, reject_unread, save_config
from alignlab.data.formats import load_scored_rows
from alignlab.models.loading import DTYPES
from alignlab.models.reward_card import write_reward_card
from alignlab.models.reward_model import (
    RewardScorer,
    apply_reward_lora,
    load_reward_backbone,
    mark_reward_config,
    merged_reward_model,
    save_reward_model,
)
from alignlab.rewards import HFRewardModel
from alignlab.training.checkpoint import save_checkpoint
from alignlab.training.evaluate import eval_due
from alignlab.training.inputs import prepare_data, prepare_eval_data, read_eval_records, read_records
from alignlab.training.metrics import read_metrics
from alignlab.training.rm_step import (
    LENGTH_BASELINE,
    SHORTER_BASELINE,
    evaluate_rewards,
    length_baselines,
    rm_train_step,
)
from alignlab.training.run_state import end_run, start_run
from alignlab.training.schedule import BatchPlan
from alignlab.training.step import NonFiniteLossError
from alignlab.training.trackers import (
    active_trackers,
    default_trackers,
    make_trackers,
    parse_report_to,
)

__all__ = ["NonFiniteLossError", "RMConfig", "RMResult", "main", "train_rm"]
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target", "lora_top_layers")
LORA_LR, FULL_LR = 1e-4, 1e-5  # learning_rate=None: the LoRA adapters + new head, or every weight


@dataclass
class RMConfig:
    # model and data
    model: str = "smollm2-135m-instruct"  # causal-LM backbone: hub id, local path, or built-in alias
    data: str = ""  # preference JSONL(.gz) (TRL or HH format; path[a:b] for a row range), or hf:org/name[:config]
    split: str = "train"
    limit: int | None = None  # use at most this many pairs
    on_bad: str = "error"  # malformed rows: "error" (default) or "skip" (counted)
    max_length: int = 1024  # prompt + completion tokens
    max_prompt_length: int = 512  # prompts keep their last tokens
    trust_remote_code: bool = False
    dtype: str = "float32"
    # objective (per-pair soft labels p_chosen and margins come from the data's optional fields, docs/data.md)
    center_coef: float = 0.0  # + c * (r_c + r_r)^2 per pair (reward centering; 0.01 recommended, 0 = off)
    # parameter-efficient fine-tuning (the score head is always trained in full)
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"  # or comma list, e.g. q_proj,v_proj
    lora_top_layers: int = 0  # > 0: adapters only in the last N blocks
    # optimisation
    learning_rate: float | None = None  # None: 1e-4 with LoRA, 1e-5 for full fine-tuning
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # any transformers.get_scheduler name
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int = -1  # > 0 overrides epochs
    per_device_batch_size: int = 4  # pairs per micro-batch (2x rows per forward)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    seed: int = 42
    # held-out evaluation
    eval_data: str = ""  # preference data like `data`, evaluated at step 0, every eval_steps and at the end
    eval_split: str = "test"  # split of an hf: / dataset-directory eval_data
    eval_steps: int = 0  # evaluate every N optimizer steps (0: only at step 0 and at the end)
    eval_batch_size: int | None = None  # pairs per evaluation forward; None = per_device_batch_size
    # normalisation stored with the final model: reward = (raw - offset) / scale
    normalize_on: str = ""  # prompt/response JSONL (e.g. the initial policy's samples): offset = their mean reward
    normalize_scale: bool = True  # with normalize_on: scale = their reward std (false: scale 1, shift only)
    # output
    output_dir: str = "runs/rm"
    logging_steps: int = 1
    save_steps: int = 0  # 0: only the final checkpoint
    save_total_limit: int = 1
    resume_from: str | None = None  # "latest" or a checkpoint directory
    stop_after_steps: int | None = None  # stop (as if killed) after this step; the schedule is unchanged
    report_to: list[str] = field(default_factory=default_trackers)  # comma list of tensorboard, wandb, mlflow; none
    cpu: bool = False  # force CPU even when a GPU is visible

    def __post_init__(self) -> None:
        self.report_to = parse_report_to(self.report_to)

    def validate(self) -> None:
        if not self.lora:
            reject_unread(self, LORA_KEYS, "lora=false does not read the LoRA keys")
        if self.max_steps > 0:
            reject_unread(self, ["epochs"], f"max_steps={self.max_steps} replaces epochs")
        if not self.eval_data:
            reject_unread(self, ["eval_split", "eval_steps", "eval_batch_size"], "no eval_data, nothing is evaluated")
        if not self.normalize_on:
            reject_unread(self, ["normalize_scale"], "no normalize_on, the reward is not normalised")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("max_prompt_length must be smaller than max_length")
        if self.per_device_batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("per_device_batch_size and grad_accum must be >= 1")
        if self.on_bad not in ("error", "skip"):
            raise ConfigError("on_bad must be 'error' or 'skip'")
        if not (0.0 <= self.center_coef < float("inf")):
            raise ConfigError(f"center_coef must be a finite number >= 0, got {self.center_coef}")
        if self.learning_rate is not None and not self.learning_rate >= 0:
            raise ConfigError(f"learning_rate must be >= 0, got {self.learning_rate}")
        if self.eval_steps < 0 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise ConfigError("eval_steps must be >= 0 and eval_batch_size >= 1")
        active_trackers(self.report_to)  # an unknown tracker or a missing package: error now, before any data

    @property
    def global_batch(self) -> int:
        return self.per_device_batch_size * self.grad_accum

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return LORA_LR if self.lora else FULL_LR


@dataclass
class RMResult:
    run_dir: Path
    final_dir: Path
    steps: int
    metrics: list[dict]  # this run's training rows, as in metrics.jsonl
    evals: list[dict] = field(default_factory=list)  # this run's eval rows
    model: object = None  # the trained model (merged, when the final model was saved)
    offset: float = 0.0
    scale: float = 1.0


def _wrap(cfg: RMConfig, model):
    if cfg.lora:
        targets = cfg.lora_target if cfg.lora_target == "all-linear" else cfg.lora_target.split(",")
        model = apply_reward_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets, cfg.lora_top_layers)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


def _normalisation(cfg: RMConfig, model, tokenizer, run_dir: Path) -> tuple[float, float]:
    """(offset, scale) from the trained RM's raw rewards on ``normalize_on`` (mean; std, Bessel-corrected), scored
    exactly as evaluation will score them (HFRewardModel); written to normalization.json. (0, 1) without it."""
    if not cfg.normalize_on:
        return 0.0, 1.0
    rows = load_scored_rows(cfg.normalize_on)
    scorer = HFRewardModel(model, tokenizer, name="rm", max_length=cfg.max_length, normalize=False)
    raw = torch.tensor(scorer([r.prompt for r in rows], [r.response for r in rows]), dtype=torch.float64)
    mean = raw.mean().item()
    std = raw.std().item() if len(raw) > 1 else 0.0
    scale = std if cfg.normalize_scale and std > 0 else 1.0
    info = {"normalize_on": cfg.normalize_on, "n": len(raw), "mean": mean, "std": std, "offset": mean, "scale": scale}
    (run_dir / "normalization.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"[alignlab] reward normalisation on {len(raw)} rows: offset {mean:.6g}, scale {scale:.6g}")
    return mean, scale


def train_rm(cfg: RMConfig) -> RMResult:
    """Run the recipe (see the module docstring); returns what it did."""
    cfg.validate()
    if not cfg.data:
        raise ConfigError("rm needs data=PATH.jsonl | hf:org/name")
    run_dir = Path(cfg.output_dir)
    trackers = active_trackers(cfg.report_to)
    accelerator = Accelerator(cpu=cfg.cpu, log_with=make_trackers(trackers, run_dir) or None, project_dir=str(run_dir))
    set_seed(cfg.seed)  # before the model: the new score head's initialisation
    is_main, world = accelerator.is_main_process, accelerator.num_processes
    records, report = read_records(cfg, world)  # bad data: fails before the model
    eval_records = read_eval_records(cfg, world) if cfg.eval_data else None
    model, tokenizer = load_reward_backbone(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    pairs, data_info = prepare_data(cfg, tokenizer, records, report, world)
    eval_pairs = None
    if eval_records is not None:
        eval_pairs, data_info["eval"] = prepare_eval_data(cfg, tokenizer, *eval_records, world)
    if is_main:
        save_config(cfg, run_dir)
        (run_dir / "data_report.json").write_text(json.dumps(data_info, indent=2))
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = _wrap(cfg, model.to(accelerator.device))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.resolved_learning_rate, weight_decay=cfg.weight_decay
    )
    lengths = [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    plan = BatchPlan(len(pairs), cfg.per_device_batch_size, cfg.grad_accum, world, cfg.seed, lengths)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * plan.steps_per_epoch
    from transformers import get_scheduler

    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    scorer, optimizer, scheduler = accelerator.prepare(RewardScorer(model), optimizer, scheduler)

    start_step, logger = start_run(accelerator, cfg, run_dir, trackers)
    if is_main:
        print(
            f"[alignlab] rm: {len(pairs)} pairs, {world} process(es) on {accelerator.device}, global batch "
            f"{plan.global_size} pairs, {plan.steps_per_epoch} steps/epoch, {total_steps} steps"
            + (f"; {len(eval_pairs)} eval pairs" if eval_pairs is not None else "")
            + (f"; per-pair {' and '.join(report.label_fields)} from the data" if report.label_fields else "")
        )
    eval_bs = cfg.eval_batch_size or cfg.per_device_batch_size
    evals: list[dict] = []

    def log_eval(step: int, extra: dict | None = None) -> None:  # collective: every rank scores its shard
        row = evaluate_rewards(accelerator, scorer, eval_pairs, pad_id, eos_id, eval_bs, cfg.center_coef)
        evals.append({"step": step} | row | (extra or {}))
        logger.log(evals[-1])

    if eval_pairs is not None and start_step == 0:
        log_eval(0, length_baselines(eval_pairs))
    history: list[dict] = []
    last_step = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps
    for step in range(start_step, last_step):
        t0 = time.perf_counter()
        out = rm_train_step(
            accelerator,
            scorer,
            optimizer,
            scheduler,
            plan,
            pairs,
            pad_id,
            eos_id,
            step,
            cfg.center_coef,
            cfg.max_grad_norm,
        )
        record = {"step": step + 1} | out.metrics()
        record |= {"grad_norm": out.grad_norm, "learning_rate": scheduler.get_last_lr()[0]}
        record["time/step_s"] = time.perf_counter() - t0
        history.append(record)
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == last_step:
            logger.log(record)
        if is_main:
            print(f"[alignlab] step {step + 1}/{total_steps} loss {record['loss']:.4f} acc {record['accuracy']:.3f}")
        if eval_pairs is not None and eval_due(step + 1, cfg.eval_steps, total_steps):
            log_eval(step + 1)
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < last_step:
            save_checkpoint(accelerator, run_dir, step + 1, cfg.save_total_limit)
    save_checkpoint(accelerator, run_dir, last_step, cfg.save_total_limit)
    final_dir, offset, scale = run_dir / "final", 0.0, 1.0
    trained = accelerator.unwrap_model(scorer).model
    if is_main and last_step == total_steps:
        trained = merged_reward_model(trained)  # LoRA folded in: the model the checkpoint holds
        mark_reward_config(trained, tokenizer)  # its input format, so normalisation scores it as evaluation will
        offset, scale = _normalisation(cfg, trained, tokenizer, run_dir)
        save_reward_model(trained, tokenizer, final_dir, offset, scale)
    if is_main:
        _write_report(cfg, run_dir, evals if start_step == 0 else read_metrics(run_dir / "metrics.jsonl", "eval"))
        if last_step == total_steps:
            write_reward_card(run_dir, offset, scale)  # after report.md: the card quotes it
    scorer = optimizer = scheduler = None  # the DDP wrapper must go before the process group (end_run says why)
    end_run(accelerator)
    trained.eval()
    return RMResult(run_dir, final_dir, last_step, history, evals, trained, offset, scale)


def _write_report(cfg: RMConfig, run_dir: Path, evals: list[dict]) -> None:
    """report.md: the training curve's ends and the held-out accuracy beside the length-only baseline."""
    rows = read_metrics(run_dir / "metrics.jsonl")
    lines = [f"# alignlab rm: {cfg.model}", ""]
    if rows:
        a, b = rows[0], rows[-1]
        lines += [
            f"Training: {b['step']} steps; loss {a['loss']:.4f} -> {b['loss']:.4f}, accuracy {a['accuracy']:.3f} -> "
            f"{b['accuracy']:.3f}, margin {a['margin']:.4f} -> {b['margin']:.4f} (first and last logged step).",
            "",
        ]
    if evals:
        lines += ["## Held-out evaluation (eval_data)", "", "| step | eval_loss | eval_accuracy | eval_margin | ties |"]
        lines += ["|---|---|---|---|---|"]
        lines += [
            f"| {r['step']} | {r['eval_loss']:.4f} | {r['eval_accuracy']:.3f} | {r['eval_margin']:.4f} | "
            f"{r['eval_ties']:.3f} |"
            for r in evals
        ]
        base = next((r for r in evals if LENGTH_BASELINE in r), None)
        final = evals[-1]
        lines += ["", f"Final eval accuracy {final['eval_accuracy']:.3f} (step {final['step']})"]
        if base is not None:
            lines[-1] += (
                f" vs the length-only baseline {base[LENGTH_BASELINE]:.3f} (the longer response wins; "
                f"{base[SHORTER_BASELINE]:.3f} for the shorter; ties count as wrong)."
            )
        per_source = {k[len("eval_accuracy/") :]: v for k, v in final.items() if k.startswith("eval_accuracy/")}
        if per_source:
            lines += ["", "Per source: " + ", ".join(f"{s} {v:.3f}" for s, v in per_source.items())]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")


def main(cfg: RMConfig) -> RMResult:
    res = train_rm(cfg)
    print(f"done: {res.steps} steps; run directory {res.run_dir}")
    return res
