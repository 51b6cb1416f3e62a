"""`alignlab rl`: online RL against a reward (PPO, RLOO, GRPO) on accelerate; docs/rlhf.md.

One readable loop; the same code runs as 1 CPU process or under `accelerate launch`:
1. validate the config (a key the chosen algorithm does not read is an error), read the prompts, load the policy
   (LoRA by default: the reference is the base model with the adapter off, one copy of the weights), the reward
   (a trained reward model directory, the gold, or any reward ``alignlab score`` accepts) and, for PPO, the value
   model;
2. every step: sample ``group_size`` responses for ``prompts_per_step`` prompts (``alignlab.rollout.rl_rollout``),
   score them with the reward (text in: a reward model with another tokenizer re-tokenises), score them with the
   policy, the reference (and the value model) in the micro-batches the update will use, compute advantages and
   run the update (``alignlab.training.rl_step``, the one place the gradient is assembled);
3. log one metrics.jsonl row per step (reward, KL to the reference and to the initial policy, entropy, clip
   fractions, value loss, response length, EOS share, where the time went), checkpoint, resume exactly.
Checks that stop or warn: a non-finite reward or gradient stops the run naming the step; before the first
update the sampler's log-probs must match the trainer's (a temperature or weight mismatch stops the run); a
negative mean per-token KL is an alert in the log.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from alignlab.config import ConfigError, reject_unread, save_config
from alignlab.judge.rating import parse_judge_spec
from alignlab.losses.rl import adaptive_kl_coef
from alignlab.losses.rl_registry import RL_ALGOS, RL_KEYS
from alignlab.models.scorer import SequenceScorer
from alignlab.rollout.rl_rollout import BACKENDS, RolloutSettings, apply_rewards, encode_prompts, sample_rollouts
from alignlab.rollout.rl_setup import (
    RolloutMismatchError,
    check_sampler_agreement,
    load_policy,
    load_prompt_texts,
    load_value_model,
    prompts_for_step,
    reward_for,
)
from alignlab.training import rl_step
from alignlab.training.checkpoint import save_checkpoint
from alignlab.training.metrics import read_metrics
from alignlab.training.rl_batch import ValueScorer, token_values
from alignlab.training.run_state import end_run, start_run
from alignlab.training.trackers import (
    active_trackers,
    default_trackers,
    make_trackers,
    parse_report_to,
)

# The per-token KL is a sampled estimate: tiny negatives are noise; below this (nats per token) it is an alert.
NEGATIVE_KL_ALERT = 1e-3

__all__ = ["RLConfig", "main", "rl", "RolloutMismatchError"]


@dataclass
class RLConfig:
    # policy, prompts, reward
    model: str = "smollm2-135m-instruct"  # hub id, local path, or built-in alias
    prompts: str = "task:train"  # task:<split> (the embedded task's prompts) or a prompt file (.txt/.jsonl)
    limit: int | None = None  # use at most this many prompts
    reward: str = "gold"  # gold | gold-v1 | gold-v2 | a reward-model directory or hub id | judge:<model>[:template]
    track_gold: bool = True  # also log the gold reward of every rollout when `reward` is not the gold
    trust_remote_code: bool = False
    dtype: str = "float32"
    # algorithm (docs/rlhf.md: defaults are TRL's)
    algo: str = "rloo"  # ppo | rloo | grpo
    group_size: int | None = None  # samples per prompt; None: the algorithm's default (1, 2, 8)
    prompts_per_step: int = 8  # per process
    max_new_tokens: int = 64
    max_prompt_length: int = 256
    temperature: float | None = None  # None: 0.7 for ppo, 1.0 for rloo/grpo
    kl_coef: float | None = None  # None: the algorithm's default (0.05, 0.05, 0.0)
    kl_estimator: str | None = None  # k1 | k3; None: k1 (ppo, rloo), k3 (grpo)
    kl_target: float | None = None  # adaptive KL: target summed KL per response to the reference (nats); None: fixed
    kl_horizon: int = 10000  # adaptive KL: responses over which the coefficient changes by at most 20%
    cliprange: float = 0.2
    num_ppo_epochs: int | None = None  # None: 4 for ppo, 1 for rloo/grpo
    num_mini_batches: int = 1
    per_device_batch_size: int = 8  # rows per micro-batch
    # algorithm-specific (a key the chosen algorithm does not read must stay at its default)
    cliprange_value: float = 0.2  # ppo
    vf_coef: float = 0.1  # ppo
    gamma: float = 1.0  # ppo
    gae_lambda: float = 0.95  # ppo
    whiten_rewards: bool = False  # ppo
    value_model: str = ""  # ppo: "" = the reward model when it is one of the policy's architecture, else the policy
    loss_type: str = "dapo"  # grpo: grpo | dapo | dr_grpo | bnpo
    scale_rewards: str = "group"  # grpo: group | batch | none
    epsilon_high: float | None = None  # grpo: upper clip (None: = cliprange)
    normalize_advantages: bool = False  # rloo
    missing_eos_penalty: float | None = None  # subtracted from the score of a response without EOS
    # reference
    ref_sync_every: int = 0  # > 0: ref <- (1 - a) ref + a policy every N steps (TR-DPO style); 0: frozen
    ref_sync_alpha: float = 0.6
    # parameter-efficient fine-tuning
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_target: str = "all-linear"
    # optimisation
    learning_rate: float = 5e-5
    max_grad_norm: float = 1.0
    max_steps: int = 20  # rollout + update steps
    gradient_checkpointing: bool = False
    seed: int = 42
    rollout_backend: str = "hf"  # hf | vllm (an engine over the base model, weights synced every step; docs/rlhf.md)
    vllm_gpu_memory_utilization: float = 0.3  # vllm on a GPU: the engine's share of the GPU (the trainer shares it)
    # output
    output_dir: str = "runs/rl"
    save_steps: int = 0  # 0: only the final checkpoint
    save_total_limit: int = 1
    resume_from: str | None = None
    stop_after_steps: int | None = None
    report_to: list[str] = field(default_factory=default_trackers)
    cpu: bool = False

    def __post_init__(self) -> None:
        self.report_to = parse_report_to(self.report_to)

    def validate(self) -> None:
        if self.algo not in RL_ALGOS:
            raise ConfigError(f"algo: unknown {self.algo!r}; choose one of {', '.join(RL_ALGOS)}")
        spec = RL_ALGOS[self.algo]
        for key in sorted(set(RL_KEYS) - set(spec.reads)):
            if hasattr(self, key):
                readers = [n for n, s in RL_ALGOS.items() if key in s.reads]
                reject_unread(self, [key], f"algo={self.algo} does not read it; algorithms that do: {readers}")
        if not self.lora:
            reject_unread(self, ["lora_r", "lora_alpha", "lora_target"], "lora=false does not read the LoRA keys")
        if self.kl_estimator not in (None, "k1", "k3"):
            raise ConfigError(f"kl_estimator must be k1 or k3, got {self.kl_estimator!r}")
        if self.rollout_backend not in BACKENDS:
            raise ConfigError(f"rollout_backend: choose one of {', '.join(BACKENDS)}, got {self.rollout_backend!r}")
        if self.rollout_backend != "vllm":
            reject_unread(self, ["vllm_gpu_memory_utilization"], "rollout_backend is not vllm")
        elif importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "rollout_backend=vllm: vLLM is not installed here; `make vllm-env` builds .venv-vllm (docs/rlhf.md)"
            )
        if self.group_size is not None and self.group_size < (2 if self.algo in ("rloo", "grpo") else 1):
            raise ConfigError(f"group_size {self.group_size}: {self.algo} needs at least 2 samples per prompt")
        if self.ref_sync_every == 0:
            reject_unread(self, ["ref_sync_alpha"], "ref_sync_every=0 keeps the reference frozen")
        if self.ref_sync_every and self.resume_from:
            raise ConfigError("resume_from with ref_sync_every > 0: the synced reference is not checkpointed yet")
        if self.prompts_per_step < 1 or self.per_device_batch_size < 1 or self.max_steps < 1:
            raise ConfigError("prompts_per_step, per_device_batch_size and max_steps must be >= 1")
        if self.kl_target is None:
            reject_unread(self, ["kl_horizon"], "kl_target is not set: the KL coefficient is fixed")
        elif self.kl_target <= 0 or self.kl_horizon < 1 or self.settings().kl_coef <= 0:
            raise ConfigError("adaptive KL needs kl_target > 0, kl_horizon >= 1 and a KL coefficient > 0 to adapt")
        if self.reward.startswith("gold"):
            reject_unread(self, ["track_gold"], "the reward is the gold already")
        if self.reward.startswith("judge:"):  # d-RLAIF: a bad spec fails here, before any model loads
            parse_judge_spec(self.reward)
        active_trackers(self.report_to)

    def settings(self) -> rl_step.RLSettings:
        spec = RL_ALGOS[self.algo]
        return rl_step.RLSettings(
            algo=self.algo,
            kl_coef=spec.default_kl_coef if self.kl_coef is None else self.kl_coef,
            kl_estimator=self.kl_estimator or spec.kl_estimator,
            cliprange=self.cliprange,
            epsilon_high=self.epsilon_high,
            cliprange_value=self.cliprange_value,
            vf_coef=self.vf_coef,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            whiten_rewards=self.whiten_rewards,
            num_ppo_epochs=self.num_ppo_epochs or (4 if self.algo == "ppo" else 1),
            num_mini_batches=self.num_mini_batches,
            micro_batch_size=self.per_device_batch_size,
            loss_type=self.loss_type,
            scale_rewards=self.scale_rewards,
            normalize_advantages=self.normalize_advantages,
            max_new_tokens=self.max_new_tokens,
            max_grad_norm=self.max_grad_norm,
            seed=self.seed,
        )

    def rollout(self) -> RolloutSettings:
        spec = RL_ALGOS[self.algo]
        t = self.temperature if self.temperature is not None else (0.7 if self.algo == "ppo" else 1.0)
        k = self.group_size or spec.default_group_size
        return RolloutSettings(k, self.max_new_tokens, t, self.max_prompt_length, self.rollout_backend)


@dataclass
class RLResult:
    run_dir: Path
    steps: int
    metrics: list[dict]
    model: object = None


def rl(cfg: RLConfig, model=None, tokenizer=None, reward=None) -> RLResult:
    """Run the recipe; ``model``/``tokenizer``/``reward`` may be passed in (tests, demos)."""
    cfg.validate()
    run_dir = Path(cfg.output_dir)
    trackers = active_trackers(cfg.report_to)
    accelerator = Accelerator(cpu=cfg.cpu, log_with=make_trackers(trackers, run_dir) or None, project_dir=str(run_dir))
    set_seed(cfg.seed)
    is_main, world, rank = accelerator.is_main_process, accelerator.num_processes, accelerator.process_index
    prompts = load_prompt_texts(cfg.prompts, cfg.limit)  # bad prompts fail before any model loads
    s, ro = cfg.settings(), cfg.rollout()
    model, tokenizer, refs = load_policy(cfg, model, tokenizer, ro.temperature)
    encode_prompts(tokenizer, prompts, ro.max_prompt_length)  # a prompt that is too long: an error now, not at step N
    reward = reward or reward_for(cfg.reward)
    gold = reward_for("gold") if (cfg.track_gold and not cfg.reward.startswith("gold")) else None
    value = ValueScorer(load_value_model(cfg, model)) if s.algo == "ppo" else None
    if is_main:
        save_config(cfg, run_dir)
    policy = SequenceScorer(model, temperature=ro.temperature)
    params = [p for m in (policy, value) if m is not None for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    if value is not None:
        policy, value, optimizer = accelerator.prepare(policy, value, optimizer)
    else:
        policy, optimizer = accelerator.prepare(policy, optimizer)
    start, logger = start_run(accelerator, cfg, run_dir, trackers)
    if cfg.kl_target is not None and start > 0:  # the adapted coefficient continues from the resumed step
        s = replace(s, kl_coef=resumed_kl_coef(run_dir / "metrics.jsonl", start))
    last = min(cfg.max_steps, cfg.stop_after_steps) if cfg.stop_after_steps else cfg.max_steps
    if is_main:
        print(
            f"[alignlab] rl algo={cfg.algo}: {len(prompts)} prompts, {cfg.prompts_per_step} x {ro.group_size} "
            f"samples per step and process, {world} process(es) on {accelerator.device}, {cfg.max_steps} steps"
        )
    raw_policy = accelerator.unwrap_model(policy).model
    refs.to(accelerator.device)
    engine = _vllm_engine(cfg, ro, world)

    def ref_logp(rows):
        return refs.ref_logp(policy, raw_policy, rows)

    def init_logp(rows):
        return refs.init_logp(policy, raw_policy, rows)

    history: list[dict] = []
    bar = _progress(is_main, start, cfg.max_steps)
    for step in range(start, last):
        t0 = time.perf_counter()
        step_prompts = prompts_for_step(prompts, cfg.prompts_per_step, step, rank, world, cfg.seed)
        seed = cfg.seed * 1_000_003 + step * 1009 + rank
        # vllm: the trainer's weights into the engine before every rollout; its sampler is checked on the first two
        # steps (the second is the first after an update: the one a stale engine would fail)
        sync_s = engine.sync(raw_policy) if engine is not None else None
        check = step == start or (engine is not None and step == start + 1)
        batch = sample_rollouts(raw_policy, tokenizer, step_prompts, ro, seed, sampler_logps=check, engine=engine)
        t1 = time.perf_counter()
        counts = apply_rewards(batch, reward, cfg.missing_eos_penalty)
        gold_mean = (
            float(torch.tensor(gold(batch.prompts, batch.responses, batch.finished.tolist())).mean()) if gold else None
        )
        t2 = time.perf_counter()
        orders = rl_step.epoch_orders(replace(s, seed=cfg.seed + step), len(batch))
        vfn = (lambda rows: token_values(value, rows)) if value is not None else None
        rl_step.score_rollouts(s, batch, policy, ref_logp, orders[0], vfn, init_logp if refs.moving else None)
        agreement = check_sampler_agreement(batch, step) if check else None
        stats = rl_step.advantages(s, batch)
        t3 = time.perf_counter()
        upd = rl_step.update(s, accelerator, policy, optimizer, None, batch, orders, step, value)
        t4 = time.perf_counter()
        refs.maybe_sync(step, raw_policy)
        record = _record(step, batch, counts, stats, upd, gold_mean, (t0, t1, t2, t3, t4), accelerator)
        record["kl_coef"] = s.kl_coef  # the coefficient this step's rewards / loss used
        if sync_s is not None:  # one process (vllm): the sync is part of the step
            record["time/sync_s"] = sync_s
            record["time/step_s"] += sync_s
        if agreement is not None:
            record["check/sampler_logp_diff"] = agreement
        if cfg.kl_target is not None:  # every rank computes the same value from the rank-averaged KL
            n = len(batch) * world
            s = replace(s, kl_coef=adaptive_kl_coef(s.kl_coef, record["kl_ref_seq"], cfg.kl_target, n, cfg.kl_horizon))
            record["kl_coef_next"] = s.kl_coef
        history.append(record)
        logger.log(record)
        if record["kl_ref_per_token"] < -NEGATIVE_KL_ALERT and is_main:
            print(
                f"[alignlab] alert: mean per-token KL to the reference is negative at step {step + 1} "
                f"({record['kl_ref_per_token']:.4g}): sampling and scoring may disagree (docs/rlhf.md)"
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{record['kl_init_seq']:.3f}")
        if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < last:
            save_checkpoint(accelerator, run_dir, step + 1, cfg.save_total_limit)
    if bar is not None:
        bar.close()
    if engine is not None:
        engine.close()
    save_checkpoint(accelerator, run_dir, last, cfg.save_total_limit)
    if is_main and last == cfg.max_steps:
        raw_policy.save_pretrained(run_dir / "final", safe_serialization=True)
        tokenizer.save_pretrained(run_dir / "final")
        _write_report(cfg, run_dir, history)
    policy = value = optimizer = None  # the DDP wrappers must go before the process group (end_run says why)
    end_run(accelerator)
    return RLResult(run_dir, last, history, raw_policy)


def _vllm_engine(cfg: RLConfig, ro: RolloutSettings, world: int):
    """rollout_backend=vllm: the engine over the policy's base model (its weights are synced before each step)."""
    if ro.backend != "vllm":
        return None
    if world > 1:  # pitfalls R5: an engine beside several trainer ranks needs a process-group layout, not built yet
        raise ConfigError("rollout_backend=vllm runs with one process; use rollout_backend=hf under accelerate launch")
    from alignlab.models.loading import resolve_model_path
    from alignlab.rollout.vllm_backend import VLLMRollout

    return VLLMRollout(
        resolve_model_path(cfg.model),
        dtype=cfg.dtype,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        max_model_len=ro.max_prompt_length + ro.max_new_tokens,
        seed=cfg.seed,
    )


def resumed_kl_coef(metrics_path: Path, start: int) -> float:
    """The adaptive KL coefficient after step ``start`` (``kl_coef_next`` of its metrics row; the last such row, since
    an interrupted run may have logged steps past its last checkpoint, which the resumed run logs again)."""
    rows = [r for r in read_metrics(metrics_path) if r.get("step") == start and "kl_coef_next" in r]
    if not rows:
        raise ConfigError(f"{metrics_path}: no kl_coef_next at step {start}; cannot resume the adaptive KL coefficient")
    return float(rows[-1]["kl_coef_next"])


def _record(step, batch, counts, stats, upd, gold_mean, t, accelerator) -> dict:
    """The step's metrics.jsonl row: rewards over every process's responses; the other values are each rank's
    batch statistics averaged over ranks (the step-0 deviation: the largest)."""
    scores = accelerator.gather(batch.scores.to(accelerator.device)).float()
    mask = batch.response_mask
    local = {
        **counts,
        **stats,
        "entropy": float(-(batch.old_logp * mask).sum() / mask.sum().clamp(min=1)),  # E[-log π(y)], y sampled
        **{k: v for k, v in upd.items() if v is not None and k != "check/first_ratio_max_dev"},
        "time/rollout_s": t[1] - t[0],
        "time/reward_s": t[2] - t[1],
        "time/score_s": t[3] - t[2],
        "time/update_s": t[4] - t[3],
        "time/step_s": t[4] - t[0],
        "rollout_tokens_per_s": float(mask.sum()) / max(t[1] - t[0], 1e-9),
    }
    if gold_mean is not None:
        local["gold"] = gold_mean
    keys = sorted(local)
    vals = accelerator.reduce(torch.tensor([float(local[k]) for k in keys], device=accelerator.device), "mean")
    row = {"step": step + 1, "reward": float(scores.mean())}
    row["reward_std"] = float(scores.std()) if scores.numel() > 1 else 0.0
    row |= {k: float(v) for k, v in zip(keys, vals.cpu())}
    if upd.get("check/first_ratio_max_dev") is not None:
        dev = torch.tensor([upd["check/first_ratio_max_dev"]], device=accelerator.device)
        row["check/first_ratio_max_dev"] = float(accelerator.gather(dev).max())
    return row


def _write_report(cfg: RLConfig, run_dir: Path, history: list[dict]) -> None:
    if not history:
        return
    first, lastr = history[0], history[-1]
    keys = ["reward", "gold", "kl_init_seq", "kl_ref_per_token", "entropy", "response_length", "eos_share"]
    lines = [
        f"# alignlab rl: algo={cfg.algo}, reward={cfg.reward}",
        "",
        "| metric | first step | last step |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {first[k]:.4g} | {lastr[k]:.4g} |" for k in keys if k in first]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"first": first, "last": lastr}, indent=2))


def _progress(is_main: bool, start: int, total: int):
    if not is_main:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="rl", dynamic_ncols=True)


def main(cfg: RLConfig) -> RLResult:
    res = rl(cfg)
    print(f"done: {res.steps} steps; run directory {res.run_dir}")
    return res
