"""What ``alignlab rl`` sets up before its loop: prompts, the policy and its reference, the value model, the reward,
and the checks that run on the first rollout batch (docs/rlhf.md). ``cfg`` is an ``RLConfig``."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import torch

from alignlab.data.formats import load_prompts
from alignlab.data.types import Text
from alignlab.losses.rl import ema_sync_, sync_due
from alignlab.models.loading import load_model_and_tokenizer, resolve_model_path
from alignlab.models.lora import apply_lora, reference_mode
from alignlab.models.reward_model import apply_reward_lora, load_reward_backbone
from alignlab.models.scorer import SequenceScorer
from alignlab.rewards import load_reward
from alignlab.task.prompts import balanced, load_task_prompts
from alignlab.training.rl_batch import RolloutBatch, response_logps

# Before the first update the trainer re-scores the sampled tokens; the sampler's own log-probs must agree with it
# (fp32 KV-cached sampling vs one full forward differ by ~1e-6 per token). A mismatch in temperature, weights or
# positions shows up as 1e-2 and more.
AGREEMENT_TOL = 1e-3


class RolloutMismatchError(RuntimeError):
    """The sampler's and the trainer's log-probs of the same tokens disagree (temperature, weights, positions)."""


def load_prompt_texts(spec: str, limit: int | None = None) -> list[Text]:
    """``task:<split>``: the embedded task's prompts of that split, categories interleaved; else a prompt file."""
    if spec.startswith("task:"):
        prompts = [p.instruction for p in balanced(load_task_prompts(spec[len("task:") :]))]
        return prompts[:limit] if limit is not None else prompts
    out = [p for p, _ in load_prompts(spec, limit=limit)]
    if not out:
        raise ValueError(f"{spec}: no prompts")
    return out


def prompts_for_step(prompts: list[Text], n: int, step: int, rank: int, world: int, seed: int) -> list[Text]:
    """The ``n`` prompts of this rank at ``step``: a seeded shuffle per pass over the prompts, consumed in order
    (global batch = n x world), so the sequence of prompts depends only on (seed, step) and resumes exactly."""
    out = []
    for j in range(n):
        i = step * n * world + rank * n + j
        epoch, pos = divmod(i, len(prompts))
        order = list(range(len(prompts)))
        random.Random(seed * 7919 + epoch).shuffle(order)
        out.append(prompts[order[pos]])
    return out


def _frozen_copy(model):
    out = copy.deepcopy(model).eval()
    out.requires_grad_(False)
    return out


class References:
    """The reference policy and the initial policy of a run, scored at the sampling temperature.

    With LoRA the initial policy is the base model with the adapter off (no copy); so is the reference while it is
    frozen. A moving reference (``ref_sync_every`` > 0) or full fine-tuning keep a frozen full copy for the
    reference, and full fine-tuning with a moving reference a second one for the initial policy."""

    def __init__(self, cfg, base_model, temperature: float):
        self.temperature, self.every, self.alpha = temperature, cfg.ref_sync_every, cfg.ref_sync_alpha
        moving = cfg.ref_sync_every > 0
        self.ref = _frozen_copy(base_model) if (moving or not cfg.lora) else None
        self.init = _frozen_copy(base_model) if (moving and not cfg.lora) else None
        self.lora = cfg.lora

    def to(self, device) -> "References":
        for m in (self.ref, self.init):
            if m is not None:
                m.to(device)
        return self

    def _logp(self, model, policy_scorer, raw_policy, rows):
        if model is not None:
            return response_logps(SequenceScorer(model, temperature=self.temperature), rows)
        with reference_mode(raw_policy):  # the adapter off: the base model, scored by the policy's own scorer
            return response_logps(policy_scorer, rows)

    def ref_logp(self, policy_scorer, raw_policy, rows) -> torch.Tensor:
        return self._logp(self.ref, policy_scorer, raw_policy, rows)

    @property
    def moving(self) -> bool:
        return self.every > 0

    def init_logp(self, policy_scorer, raw_policy, rows) -> torch.Tensor:
        """Only needed while the reference moves (otherwise the reference is the initial policy)."""
        return self._logp(self.init, policy_scorer, raw_policy, rows)

    def maybe_sync(self, step: int, raw_policy) -> bool:
        """ref <- (1 - alpha) ref + alpha policy (LoRA merged) after every ``ref_sync_every``-th step."""
        if not (self.moving and sync_due(step + 1, self.every)):
            return False
        ref = dict(self.ref.named_parameters())
        pol = merged_policy_params(raw_policy)
        names = [n for n in pol if n in ref]
        ema_sync_([ref[n] for n in names], [pol[n] for n in names], self.alpha)
        return True


def load_policy(cfg, model=None, tokenizer=None, temperature: float = 1.0):
    """(policy, tokenizer, References): LoRA on the policy unless ``lora=false`` (docs/rlhf.md)."""
    if model is None:
        model, tokenizer = load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    refs = References(cfg, model, temperature)
    if cfg.lora:
        targets = cfg.lora_target if cfg.lora_target == "all-linear" else cfg.lora_target.split(",")
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0, target_modules=targets)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = True
    model.train()
    return model, tokenizer, refs


def value_model_path(cfg) -> str:
    """``value_model`` if set; else the reward model when it is a directory of the policy's architecture (the
    value head starts from the RM, the usual choice); else the policy itself (a new head)."""
    if cfg.value_model:
        return cfg.value_model
    rm = Path(cfg.reward)
    if (rm / "config.json").exists():
        rm_type = json.loads((rm / "config.json").read_text()).get("model_type")
        pol = Path(resolve_model_path(cfg.model)) / "config.json"
        if pol.exists() and json.loads(pol.read_text()).get("model_type") == rm_type:
            return str(rm)
    return cfg.model


def load_value_model(cfg, policy=None):
    """The PPO value model: a one-label sequence-classification model (see ``value_model_path``), LoRA on its
    backbone when the policy has LoRA, its head trained in full; read per position (``ValueScorer``)."""
    torch.manual_seed(cfg.seed)  # a new head's init
    model, _ = load_reward_backbone(value_model_path(cfg), dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.lora:
        targets = cfg.lora_target if cfg.lora_target == "all-linear" else cfg.lora_target.split(",")
        model = apply_reward_lora(model, cfg.lora_r, cfg.lora_alpha, 0.0, targets)
    model.train()
    return model


def reward_for(spec: str):
    """A text-in reward: gold / gold-vN, a reward-model directory or hub id (its stored normalisation applied), or
    ``judge:<model or endpoint>[:template]``: the judge's 1-10 rating mapped to [-1, 1] (d-RLAIF, docs/rlaif.md)."""
    if spec.startswith("judge:"):
        from alignlab.judge.rating import judge_reward

        return judge_reward(spec)
    reward = load_reward(spec)
    if reward is None:
        raise ValueError("reward: none given (gold, gold-v2, or a reward-model directory)")
    return reward


def check_sampler_agreement(batch: RolloutBatch, step: int, tol: float = AGREEMENT_TOL) -> float:
    """Mean |sampler log-prob - trainer log-prob| over response tokens; above ``tol`` stop (docs/rlhf.md)."""
    if batch.sampler_logp is None:
        return float("nan")
    mask = batch.response_mask
    diff = float(((batch.sampler_logp - batch.old_logp).abs() * mask).sum() / mask.sum().clamp(min=1))
    if diff > tol:
        raise RolloutMismatchError(
            f"step {step + 1}: the sampler's log-probs differ from the trainer's by {diff:.3g} per token on "
            f"average (tolerance {tol:g}); they must score the same distribution: same temperature, same weights "
            "(sync them after every update), same positions (docs/rlhf.md)"
        )
    return diff


@torch.no_grad()
def merged_policy_params(model) -> dict[str, torch.Tensor]:
    """The policy's effective weights by the base model's parameter names: LoRA layers merged (W + ΔW), so a
    full reference copy can be moved towards them (``ema_sync_``)."""
    get = getattr(model, "get_base_model", None)
    if not callable(get):
        return {n: p.detach() for n, p in model.named_parameters()}
    from peft.tuners.lora import LoraLayer

    base, out = get(), {}
    for name, mod in base.named_modules():
        if isinstance(mod, LoraLayer):
            w = mod.base_layer.weight.detach()
            for a in mod.active_adapters:
                if a in mod.lora_A:
                    w = w + mod.get_delta_weight(a)
            out[f"{name}.weight"] = w
    for n, p in base.named_parameters():
        if "lora_" not in n and ".base_layer." not in n:
            out[n] = p.detach()
    return out
