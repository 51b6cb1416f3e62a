"""`alignlab generate`: decoding-time alignment over a prompt file or the embedded task's prompts.

    alignlab generate method=tq-direct rollout_model=runs/dpo/final k=10 prompts=my_prompts.jsonl
    alignlab generate method=linear ratio=3 principle="Be concise." limit=20

Writes one JSON line per prompt (prompt, text, finished, reward of the final response, KL figure, cost with
tokens / model calls / reward calls / wall time, and per-token costs) and prints a summary. Method
parameters left unset (null) take the method's defaults (alignlab.decoding.types; docs/decoding.md).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import save_config
from alignlab.decoding.types import METHOD_PARAMS, METHODS, Cost

# Keys that map 1:1 onto method parameters; None = the method's default.
_METHOD_KEYS = ("n", "return_all", "k", "w", "greedy", "temperature", "top_k", "top_p", "horizon", "rollouts",
                "rollout_temperature", "rollout_top_p", "beta", "mode", "block_size", "num_blocks",
                "block_temperature", "principle", "system_prompt", "ratio", "batched")


@dataclass
class GenerateConfig:
    method: str = "greedy"  # greedy | sample | best-of-n | args | cd | tq-direct | tq-indirect | linear
    model: str = "smollm2-135m-instruct"  # proposal / reference policy: alias, local dir or hub id
    prompts: str = "task:eval"  # .jsonl (prompt / instruction / messages) or .txt file, hf:..., task:eval, task:train
    limit: int = 0  # first N prompts (0 = all)
    output: str = "runs/generate/outputs.jsonl"  # JSONL, one line per prompt; config.yaml is written beside it
    reward: str = "gold"  # gold | none | dir or hub id of a sequence-classification reward model | registered name
    baseline_reward: str = ""  # tq-indirect: the reward the rollout model was aligned to (same forms as reward)
    rollout_model: str = ""  # tq-*: the aligned baseline model (same tokenizer); "base" = the proposal model
    scorer: str = ""  # cd: a saved prefix-scorer dir; empty = train one now on the task's train prompts
    scorer_out: str = ""  # cd: save the trained prefix scorer here
    cd_train_prompts: int = 64  # cd training: task train prompts
    cd_samples: int = 4  # cd training: samples per prompt
    cd_max_new_tokens: int = 32  # cd training: rollout length
    dtype: str = "float32"  # model dtype; score arithmetic is fp32 regardless
    device: str = ""  # e.g. cuda; empty = cpu
    threads: int = 0  # torch CPU threads; 0 = torch default
    save_steps: bool = False  # include per-step diagnostics (candidates, Q̂, scores) in the JSONL
    max_new_tokens: int = 128  # response budget
    batch_size: int = 8  # prompts decoded together
    seed: int = 0
    stop_at_eos: bool = True
    n: int | None = None  # best-of-n: samples per prompt (16)
    return_all: bool | None = None  # best-of-n: keep every sample (false)
    k: int | None = None  # args / cd / tq: candidates per step (10)
    w: float | None = None  # args / cd / tq: guidance weight 1/alpha (1.0)
    greedy: bool | None = None  # args / cd / tq / linear: argmax selection (true)
    temperature: float | None = None  # sample / best-of-n (1.0); selection temperature when greedy=false (0.7 / LA 0.5)
    top_k: int | None = None  # sample / best-of-n (0 = off)
    top_p: float | None = None  # sample / best-of-n (1.0); linear: nucleus of the principle distribution (0.8)
    horizon: int | None = None  # tq: rollout tokens (20 direct, 5 indirect)
    rollouts: int | None = None  # tq: rollouts per candidate (1 direct, 4 indirect)
    rollout_temperature: float | None = None  # tq: 0 = greedy rollouts (direct), 1.0 (indirect)
    rollout_top_p: float | None = None  # tq (1.0)
    beta: float | None = None  # tq-indirect: KL strength the baseline was aligned with (1.0)
    mode: str | None = None  # cd: tokenwise | blockwise
    block_size: int | None = None  # cd blockwise: tokens per block (8)
    num_blocks: int | None = None  # cd blockwise: sampled blocks K (4)
    block_temperature: float | None = None  # cd blockwise (1.0)
    principle: str | None = None  # linear: text appended to the system prompt
    system_prompt: str | None = None  # linear: base system prompt (default: the template's)
    ratio: float | None = None  # linear: extrapolation ratio (3.0; 0 = principle prompting, -1 = plain)
    batched: bool | None = None  # linear: both contexts in one forward (true)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        self.method_params()  # unknown / inapplicable keys fail before any model is loaded

    def method_params(self) -> dict:
        from alignlab.decoding.types import make_params

        valid = {f for f in METHOD_PARAMS[self.method].__dataclass_fields__}
        kw = dict(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, seed=self.seed,
                  stop_at_eos=self.stop_at_eos)
        for key in _METHOD_KEYS:
            v = getattr(self, key)
            if v is None:
                continue
            if key not in valid:
                raise ValueError(f"{key}={v!r} does not apply to method {self.method!r}")
            kw[key] = v
        make_params(self.method, **kw)
        return kw


def _load_prompts(spec: str, limit: int) -> tuple[list, list[str]]:
    if spec.startswith("task:"):
        from alignlab.task.prompts import load_task_prompts

        rows = load_task_prompts(spec.split(":", 1)[1] or None)
        rows = rows[:limit] if limit else rows
        return [r.instruction for r in rows], [r.id for r in rows]
    from alignlab.data.formats import load_prompts

    rows = load_prompts(spec, limit=limit or None)
    return [p for p, _ in rows], [s for _, s in rows]


def main(cfg: GenerateConfig) -> dict:
    from alignlab.decoding import decode
    from alignlab.models.loading import load_model_and_tokenizer
    from alignlab.rewards import load_reward

    t_start = time.perf_counter()
    out_path = Path(cfg.output)
    save_config(cfg, out_path.parent)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    params = cfg.method_params()
    prompts, sources = _load_prompts(cfg.prompts, cfg.limit)
    device = cfg.device or None
    model, tok = load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, device=device)
    reward = load_reward(cfg.reward)
    kw: dict = {}
    if cfg.method.startswith("tq"):
        if not cfg.rollout_model:
            raise ValueError(f"{cfg.method} needs rollout_model=PATH (the aligned baseline) or rollout_model=base")
        if cfg.rollout_model == "base":
            kw["rollout_model"] = model
        else:
            kw["rollout_model"], kw["rollout_tokenizer"] = load_model_and_tokenizer(cfg.rollout_model, dtype=cfg.dtype,
                                                                                    device=device)
    if cfg.method == "tq-indirect":
        if not cfg.baseline_reward:
            raise ValueError("tq-indirect needs baseline_reward=... (the reward the rollout model was aligned to)")
        kw["baseline_reward"] = load_reward(cfg.baseline_reward)
    scorer_report = None
    if cfg.method == "cd":
        kw["scorer"], scorer_report = _scorer(cfg, model, tok, reward)
    t0 = time.perf_counter()
    outs = decode(model, tok, prompts, cfg.method, reward=reward, score_outputs=reward is not None, **kw, **params)
    decode_s = time.perf_counter() - t0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w") as fh:
        for o, p, s in zip(outs, prompts, sources):
            row = {"prompt": p, "source": s, **o.to_json()}
            if cfg.save_steps and o.steps is not None:
                row["steps"] = [vars(st) for st in o.steps]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = _summary(cfg, outs, decode_s, time.perf_counter() - t_start, scorer_report)
    print(json.dumps(summary, indent=2))
    print(f"outputs: {out_path}")
    return summary


def _scorer(cfg: GenerateConfig, model, tok, reward):
    from alignlab.decoding.cd import PrefixScorer, train_prefix_scorer
    from alignlab.task.prompts import load_task_prompts

    if cfg.scorer:
        return PrefixScorer.load(cfg.scorer), {"loaded": cfg.scorer}
    if reward is None:
        raise ValueError("cd needs scorer=DIR or a reward to train a prefix scorer with")
    train = [p.instruction for p in load_task_prompts("train")[: cfg.cd_train_prompts]]
    scorer, report = train_prefix_scorer(model, tok, train, reward, samples_per_prompt=cfg.cd_samples,
                                         max_new_tokens=cfg.cd_max_new_tokens, seed=cfg.seed, batch_size=cfg.batch_size)
    print(f"[generate] prefix scorer: {json.dumps(report)}")
    if cfg.scorer_out:
        scorer.save(cfg.scorer_out)
    return scorer, report


def _summary(cfg, outs, decode_s, total_s, scorer_report) -> dict:
    n = len(outs)
    tot = Cost()
    for o in outs:
        tot.add(o.cost)
    rewards = [o.reward for o in outs if o.reward is not None]
    s = {"method": cfg.method, "prompts": n, "new_tokens": tot.new_tokens,
         "finished": sum(o.finished for o in outs) / max(n, 1),
         "mean_reward": sum(rewards) / len(rewards) if rewards else None, "reward": cfg.reward,
         "per_token": tot.per_token(),
         "decode_seconds": decode_s, "total_seconds": total_s}
    if scorer_report:
        s["scorer"] = scorer_report
    return s
