"""`alignlab train`: offline preference optimisation (DPO family, SimPO, T-REG) on accelerate.

One readable loop; the same code runs as 1 CPU process, N processes (`accelerate launch`) or on GPUs:
1. validate the config (a key the chosen loss does not read is an error) and read the data: an empty file or
   fewer usable pairs than one global batch stops here, before any model loads;
2. load the model, tokenize, and precompute what the loss needs once, cached on disk: reference log-probs
   (with LoRA the reference is the base model before the adapter exists: one copy of the weights,
   docs/conventions.md R9) and, for T-REG, the token rewards;
3. wrap in LoRA, prepare with accelerate, resume if asked;
4. for each step: ``alignlab.training.step.train_step`` (the one place the gradient is assembled), metrics,
   held-out evaluation (``eval_data``: ``alignlab.training.evaluate``, its reference log-probs precomputed and
   cached like the training pairs'), checkpoints; then the final model in ``output_dir/final``, ``best.json``
   (the lowest eval_loss) and report.md.
Metrics go to metrics.jsonl always and to the trackers of ``report_to`` (``alignlab.training.trackers``).
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
from alignlab.data.tokenize import TokenizedPair
from alignlab.eval.diagnose import diagnose
from alignlab.eval.treg_diagnostics import format_diagnostics, token_reward_diagnostics
from alignlab.losses import LOSS_KEYS, LOSSES, get_loss
from alignlab.losses.treg import DEFAULT_ALPHA, WEIGHTINGS
from alignlab.models.export import write_final_card
from alignlab.models.loading import load_model_and_tokenizer, model_fingerprint
from alignlab.models.lora import apply_lora
from alignlab.models.scorer import PACKING, SequenceScorer
from alignlab.precompute.reference import forward_layout, reference_key, reference_logps
from alignlab.precompute.token_rewards import resolve_template, token_rewards_for_training
from alignlab.training import step as step_lib
from alignlab.training.checkpoint import save_checkpoint
from alignlab.training.evaluate import EvalSet, eval_due, eval_report, evaluate, length_baselines, write_best
from alignlab.training.inputs import prepare_data, prepare_eval_data, read_eval_records, read_records
from alignlab.training.metrics import read_metrics, step_metrics
from alignlab.training.run_state import end_run, start_run
from alignlab.training.schedule import BatchPlan
from alignlab.training.trackers import (
    active_trackers,
    default_trackers,
    make_trackers,
    parse_report_to,
)

NonFiniteLossError = step_lib.NonFiniteLossError
LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target", "lora_top_layers")


@dataclass
class TrainConfig:
    # model and data
    model: str = "smollm2-135m-instruct"  # hub id, local path, or built-in alias
    data: str = ""  # preference JSONL(.gz) (TRL or HH format), or hf:org/name[:config]
    split: str = "train"
    limit: int | None = None  # use at most this many pairs
    on_bad: str = "error"  # malformed rows: "error" (default) or "skip" (counted)
    max_length: int = 1024  # prompt + completion tokens
    max_prompt_length: int = 512  # prompts keep their last tokens
    trust_remote_code: bool = False
    dtype: str = "float32"
    # objective
    loss: str = "dpo"  # a name of alignlab.losses.LOSSES (alignlab train --help lists them)
    beta: float | None = None  # None: the loss's default (0.1; 2.0 for simpo, simpo_treg)
    label_smoothing: float = 0.0  # cdpo / simpo epsilon
    beta_convention: str = "azar"  # ipo: azar | gpo
    ipo_reduction: str = "mean"  # ipo: mean (TRL parity) | sum (Eq. 17 as written, OpenRLHF)
    length_alpha: float | None = None  # rdpo: required
    gamma_beta_ratio: float = 0.25  # simpo gamma / beta
    sft_weight: float = 0.0  # + token-mean NLL on chosen
    reference_free: bool = False
    # T-REG (loss=dpo_treg | simpo_treg; docs/treg.md)
    alpha: float = DEFAULT_ALPHA  # T-REG regulariser weight (paper grid 0.1/0.25/0.5); 0 = plain DPO/SimPO
    treg_template: str = "revision"  # contrastive prompts: revision | generation | a .json/.yaml with better/worse
    treg_scorer: str | None = None  # model scoring the token rewards (same tokenizer); None = the reference
    treg_weighting: str = "dpo"  # sequence weight: dpo (sigma(r_l - r_w), detached) | static (0.5, ablation)
    treg_tau: float = 1.0  # contrast temperature: r̂ = sigma(Δ/tau) - 0.5; 1 = the paper, < 1 sharpens (docs/treg.md)
    # parameter-efficient fine-tuning
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"  # or comma list, e.g. q_proj,v_proj
    lora_top_layers: int = 0  # > 0: adapters only in the last N blocks (backward stops there: cheaper steps)
    # optimisation
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # any transformers.get_scheduler name
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int = -1  # > 0 overrides epochs
    per_device_batch_size: int = 4  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    packing: str = "shared_prompt"  # shared_prompt | dense | off: prompt once per pair (conventions L2.10)
    seed: int = 42
    # reference
    ref_batch_size: int = 8  # pairs per forward of the reference / token-reward precompute
    # held-out evaluation (docs/metrics.md)
    eval_data: str = ""  # preference data like `data`, evaluated during training (eval_* metrics); empty = none
    eval_split: str = "test"  # split of an hf: / dataset-directory eval_data
    eval_steps: int = 0  # evaluate every N optimizer steps; always at step 0 and at the end (0: only those)
    eval_batch_size: int | None = None  # pairs per evaluation forward; None = per_device_batch_size
    # output
    output_dir: str = "runs/train"
    logging_steps: int = 1
    save_steps: int = 0  # 0: only the final checkpoint
    save_total_limit: int = 1
    resume_from: str | None = None  # "latest" or a checkpoint directory
    stop_after_steps: int | None = None  # stop (as if killed) after this step; the schedule is unchanged
    report_to: list[str] = field(default_factory=default_trackers)  # comma list of tensorboard, wandb, mlflow; none
    cpu: bool = False  # force CPU even when a GPU is visible

    def __post_init__(self) -> None:
        self.report_to = parse_report_to(self.report_to)  # "tensorboard,wandb" or a YAML list

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"loss: unknown {self.loss!r}; choose one of {', '.join(LOSSES)}")
        spec = get_loss(self.loss)
        for key in sorted(set(LOSS_KEYS) - set(spec.reads)):
            readers = [n for n, s in LOSSES.items() if key in s.reads]
            reject_unread(
                self,
                [key],
                f"loss={self.loss} does not read it (it reads beta, sft_weight, "
                f"{', '.join(spec.reads)}); losses that read {key}: {', '.join(readers)}",
            )
        if not self.lora:
            reject_unread(self, LORA_KEYS, "lora=false does not read the LoRA keys")
        if self.max_steps > 0:
            reject_unread(self, ["epochs"], f"max_steps={self.max_steps} replaces epochs")
        if (spec.reference_free or self.reference_free) and not spec.token_level:
            reject_unread(self, ["ref_batch_size"], "nothing is precomputed without a reference or T-REG")
        if self.loss == "rdpo" and self.length_alpha is None:
            raise ConfigError("loss=rdpo requires length_alpha (no default; docs/losses.md)")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("max_prompt_length must be smaller than max_length")
        if self.per_device_batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("per_device_batch_size and grad_accum must be >= 1")
        if self.on_bad not in ("error", "skip"):
            raise ConfigError("on_bad must be 'error' or 'skip'")
        if self.packing not in PACKING:
            raise ConfigError(f"packing must be one of {', '.join(PACKING)}, got {self.packing!r}")
        if not (0.0 <= self.alpha < float("inf")):
            raise ConfigError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.treg_weighting not in WEIGHTINGS:
            raise ConfigError(f"treg_weighting must be one of {WEIGHTINGS}, got {self.treg_weighting!r}")
        if spec.token_level:
            if not self.treg_tau > 0:
                raise ConfigError(f"treg_tau must be > 0, got {self.treg_tau}")
            resolve_template(self.treg_template)  # unknown name, missing {prompt}, unequal placeholders: error now
        if not self.eval_data:
            reject_unread(self, ["eval_split", "eval_steps", "eval_batch_size"], "no eval_data, nothing is evaluated")
        if self.eval_steps < 0 or (self.eval_batch_size is not None and self.eval_batch_size < 1):
            raise ConfigError("eval_steps must be >= 0 and eval_batch_size >= 1")
        active_trackers(self.report_to)  # an unknown tracker or a missing package: error now, before any data

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else get_loss(self.loss).default_beta

    def loss_params(self) -> dict:
        """beta and the keys the chosen loss reads, by config name (what preference_objective takes)."""
        return {"beta": self.resolved_beta} | {k: getattr(self, k) for k in get_loss(self.loss).reads}

    def step_settings(self) -> step_lib.StepSettings:
        return step_lib.StepSettings(
            get_loss(self.loss), self.loss_params(), self.reference_free, self.sft_weight, self.max_grad_norm
        )

    @property
    def global_batch(self) -> int:
        return self.per_device_batch_size * self.grad_accum


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path
    steps: int
    metrics: list[dict]
    ref_cache_hit: bool
    model: object = None  # the trained model (PeftModel with LoRA), unwrapped from accelerate
    treg_cache_hit: bool = False  # T-REG token rewards loaded from the cache (token-level losses only)
    evals: list[dict] = field(default_factory=list)  # this run's eval rows (eval_data), as in metrics.jsonl


def _build_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


@dataclass
class Tables:
    """What the loss needs precomputed for one set of pairs, indexed like it: reference log-probs [N, 2] and, for
    T-REG, per-pair token rewards; each with whether it came from the cache."""

    ref: torch.Tensor | None = None
    ref_hit: bool = False
    tokens: list | None = None
    treg_hit: bool = False


def _tables(cfg: TrainConfig, accelerator, model, tokenizer, pairs, pad_id, model_fp, what: str) -> Tables:
    """The reference log-probs (and T-REG token rewards) of ``pairs``: loaded from the cache or computed once."""
    spec, out = get_loss(cfg.loss), Tables()
    if spec.token_level:
        treg = token_rewards_for_training(cfg, accelerator, model, tokenizer, pairs, model_fp)
        out.tokens, out.treg_hit = treg.rewards, treg.cache_hit
    if not (cfg.reference_free or spec.reference_free):
        scorer = SequenceScorer(model, packing=cfg.packing)
        key = reference_key(pairs, model_fp, cfg.dtype, forward_layout(scorer))
        out.ref, out.ref_hit, path = reference_logps(accelerator, scorer, pairs, pad_id, key, cfg.ref_batch_size)
        if accelerator.is_main_process:
            print(f"[alignlab] {what}reference log-probs: {'cache hit' if out.ref_hit else 'computed'} ({path})")
    return out


def _precompute(cfg: TrainConfig, accelerator, model, tokenizer, pairs, pad_id, eval_pairs=None):
    """Reference log-probs and T-REG token rewards of the training pairs and of the held-out pairs, before any
    adapter exists: with a fresh LoRA adapter the model *is* the disabled-adapter reference, and the reference
    weights are never needed again. Returns (training Tables, eval Tables or None)."""
    spec = get_loss(cfg.loss)
    needs_ref = not (cfg.reference_free or spec.reference_free)
    scores_here = needs_ref or (spec.token_level and not cfg.treg_scorer)
    model_fp = model_fingerprint(model) if scores_here else None  # hashes every weight: once
    train_tables = _tables(cfg, accelerator, model, tokenizer, pairs, pad_id, model_fp, "")
    if spec.token_level and accelerator.is_main_process:  # does this set of token rewards carry signal? (treg.md)
        diag = token_reward_diagnostics(train_tables.tokens)
        (Path(cfg.output_dir) / "treg_diagnostics.json").write_text(json.dumps(diag, indent=2))
        print(f"[alignlab] {format_diagnostics(diag)}")
    if eval_pairs is None:
        return train_tables, None
    return train_tables, _tables(cfg, accelerator, model, tokenizer, eval_pairs, pad_id, model_fp, "eval_data ")


def _wrap(cfg: TrainConfig, model):
    if cfg.lora:
        targets = cfg.lora_target if cfg.lora_target == "all-linear" else cfg.lora_target.split(",")
        model = apply_lora(
            model,
            r=cfg.lora_r,
            alpha=cfg.lora_alpha,
            dropout=cfg.lora_dropout,
            target_modules=targets,
            top_layers=cfg.lora_top_layers,
        )
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


def train(cfg: TrainConfig, model=None, tokenizer=None, pairs: list[TokenizedPair] | None = None) -> TrainResult:
    """Run the recipe. ``model``/``tokenizer``/``pairs`` may be passed in (tests, demo) instead of loaded; the
    held-out pairs are always read from ``cfg.eval_data``."""
    cfg.validate()
    run_dir = Path(cfg.output_dir)
    trackers = active_trackers(cfg.report_to)
    accelerator = Accelerator(cpu=cfg.cpu, log_with=make_trackers(trackers, run_dir) or None, project_dir=str(run_dir))
    set_seed(cfg.seed)
    is_main, world = accelerator.is_main_process, accelerator.num_processes
    records, report = read_records(cfg, world) if pairs is None else (None, None)  # bad data: fails before the model
    eval_records = read_eval_records(cfg, world) if cfg.eval_data else None  # so does bad eval data
    if model is None:
        model, tokenizer = load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    data_info, eval_pairs = {}, None
    if pairs is None:
        pairs, data_info = prepare_data(cfg, tokenizer, records, report, world)
    if eval_records is not None:
        eval_pairs, data_info["eval"] = prepare_eval_data(cfg, tokenizer, *eval_records, world)
    if is_main:
        save_config(cfg, run_dir)
        (run_dir / "data_report.json").write_text(json.dumps(data_info, indent=2))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.to(accelerator.device)
    tables, eval_tables = _precompute(cfg, accelerator, model, tokenizer, pairs, pad_id, eval_pairs)
    eval_bs = cfg.eval_batch_size or cfg.per_device_batch_size
    eval_set = EvalSet(eval_pairs, eval_tables.ref, eval_tables.tokens, eval_bs) if eval_pairs is not None else None

    model = _wrap(cfg, model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    plan = BatchPlan(
        len(pairs),
        cfg.per_device_batch_size,
        cfg.grad_accum,
        world,
        cfg.seed,
        [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs],
    )
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * plan.steps_per_epoch
    scheduler = _build_scheduler(cfg, optimizer, total_steps)
    scorer = SequenceScorer(model, packing=cfg.packing)
    if is_main:
        scorer.pack_spec  # noqa: B018 - decided once (packing_support), then logged
        print(f"[alignlab] forward: {scorer.packing_note}")
    scorer, optimizer, scheduler = accelerator.prepare(scorer, optimizer, scheduler)

    start_step, logger = start_run(accelerator, cfg, run_dir, trackers)
    if is_main:
        print(
            f"[alignlab] {len(pairs)} pairs, {world} process(es) on {accelerator.device}, "
            f"global batch {plan.global_size}, {plan.steps_per_epoch} steps/epoch "
            f"({plan.dropped_per_epoch} pairs/epoch left over), {total_steps} steps"
            + (f"; {len(eval_pairs)} eval pairs" if eval_pairs is not None else "")
        )
    settings = cfg.step_settings()
    evals: list[dict] = []

    def log_eval(step: int, extra: dict | None = None) -> None:  # collective: every rank evaluates its shard
        evals.append({"step": step} | evaluate(settings, accelerator, scorer, eval_set, pad_id) | (extra or {}))
        logger.log(evals[-1])

    if eval_set is not None and start_step == 0:
        log_eval(0, length_baselines(eval_pairs))
    history: list[dict] = []
    last_step = min(total_steps, cfg.stop_after_steps) if cfg.stop_after_steps else total_steps
    bar = _progress(is_main, start_step, total_steps)
    for step in range(start_step, last_step):
        t0 = time.perf_counter()
        out = step_lib.train_step(
            settings,
            accelerator,
            scorer,
            optimizer,
            scheduler,
            plan,
            pairs,
            tables.ref,
            pad_id,
            step,
            token_rewards=tables.tokens,
        )
        lr = scheduler.get_last_lr()[0]
        record = step_metrics(out.stats, out.grad_norm, step + 1, lr, time.perf_counter() - t0, out.forward)
        history.append(record)
        if (step + 1) % cfg.logging_steps == 0 or step + 1 == last_step:
            logger.log(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
        if eval_set is not None and eval_due(step + 1, cfg.eval_steps, total_steps):
            log_eval(step + 1)
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < last_step:
            save_checkpoint(accelerator, run_dir, step + 1, cfg.save_total_limit)
    if bar is not None:
        bar.close()
    save_checkpoint(accelerator, run_dir, last_step, cfg.save_total_limit)
    final_dir = run_dir / "final"
    if is_main and last_step == total_steps:
        accelerator.unwrap_model(scorer).model.save_pretrained(final_dir, safe_serialization=True)
        tokenizer.save_pretrained(final_dir)
    if is_main:
        _write_report(cfg, run_dir, bool(history), eval_set is not None)
        if last_step == total_steps:
            write_final_card(run_dir)  # after report.md: the card quotes it
    trained = accelerator.unwrap_model(scorer).model
    scorer = optimizer = scheduler = None  # the DDP wrapper must go before the process group (end_run says why)
    end_run(accelerator)
    trained.eval()
    return TrainResult(run_dir, final_dir, last_step, history, tables.ref_hit, trained, tables.treg_hit, evals)


def _write_report(cfg: TrainConfig, run_dir: Path, trained: bool, evaluated: bool) -> None:
    """report.md (the reward curves' verdict, and the held-out evaluation) and best.json (the lowest eval_loss)."""
    best, rows = None, []
    if evaluated:
        rows = read_metrics(run_dir / "metrics.jsonl", rows="eval")
        best = write_best(run_dir, rows)
    if trained:
        text = f"# alignlab train: loss={cfg.loss}\n\n```\n{diagnose(str(run_dir))}\n```\n"
        (run_dir / "report.md").write_text(text + ("\n" + eval_report(best, rows) if best else ""))


def _progress(is_main: bool, start: int, total: int):
    if not is_main:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


def main(cfg: TrainConfig) -> TrainResult:
    if not cfg.data:
        raise ConfigError("train needs data=PATH.jsonl | hf:org/name")
    res = train(cfg)
    print(f"done: {res.steps} steps; run directory {res.run_dir}")
    return res
