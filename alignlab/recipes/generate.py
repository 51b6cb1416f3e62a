"""`alignlab generate`: decoding-time alignment over a prompt file or the embedded task's prompts.

    alignlab generate method=tq-direct rollout_model=runs/dpo/final k=10 prompts=my_prompts.jsonl
    alignlab generate method=linear ratio=3 principle="Be concise." limit=20

Writes a run directory (``output_dir``): config.yaml (the resolved config), outputs.jsonl (one line per
prompt: prompt, text, finished, reward of the final response, KL figure, cost with tokens / model calls /
reward calls / wall time, and per-token costs), summary.json (the printed summary) and report.md (the
summary as a table). Method parameters left unset (null) take the method's defaults (alignlab.decoding.types;
docs/decoding.md). A key the chosen method does not read, set away from its default, is an error
(``GenerateConfig.validate``, before any model loads): which keys a method reads follows from its registry
entry (alignlab.decoding.registry.DECODING).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import save_config
from alignlab.decoding.registry import DECODING, METHODS, DecodingSpec
from alignlab.decoding.types import Cost

# Keys every method reads.
COMMON_KEYS = (
    "method",
    "model",
    "prompts",
    "limit",
    "output_dir",
    "reward",
    "dtype",
    "device",
    "threads",
    "max_new_tokens",
    "batch_size",
    "seed",
    "stop_at_eos",
)
# Keys that map 1:1 onto method parameters (read by the methods whose parameter class has the field);
# None = the method's default.
PARAM_KEYS = (
    "n",
    "return_all",
    "k",
    "w",
    "greedy",
    "temperature",
    "top_k",
    "top_p",
    "horizon",
    "rollouts",
    "rollout_temperature",
    "rollout_top_p",
    "beta",
    "mode",
    "block_size",
    "num_blocks",
    "block_temperature",
    "principle",
    "system_prompt",
    "ratio",
    "batched",
)
# Keys that serve one of a method's needs (DecodingSpec.needs); "reward" is a common key (every method's
# outputs are scored with it).
SCORER_TRAIN_KEYS = ("scorer_out", "cd_train_prompts", "cd_samples", "cd_max_new_tokens")  # only without scorer=
NEED_KEYS = {
    "rollout_model": ("rollout_model",),
    "baseline_reward": ("baseline_reward",),
    "scorer": ("scorer",) + SCORER_TRAIN_KEYS,
}
# Keys read by the methods with per-step diagnostics (DecodingSpec.step_diagnostics).
STEP_KEYS = ("save_steps",)


def method_keys(spec: DecodingSpec) -> tuple[str, ...]:
    """The method-specific config keys ``spec``'s method reads (besides COMMON_KEYS)."""
    keys = [k for k in PARAM_KEYS if k in spec.param_names()]
    for need in sorted(spec.needs):
        keys += NEED_KEYS.get(need, ())
    if spec.step_diagnostics:
        keys += STEP_KEYS
    return tuple(keys)


@dataclass
class GenerateConfig:
    method: str = "greedy"  # greedy | sample | best-of-n | args | cd | tq-direct | tq-indirect | linear
    model: str = "smollm2-135m-instruct"  # proposal / reference policy: alias, local dir or hub id
    prompts: str = (
        "task:test"  # .jsonl (prompt / instruction / messages) or .txt file, hf:..., task:test|validation|train
    )
    limit: int = 0  # first N prompts (0 = all)
    output_dir: str = "runs/generate"  # run directory: config.yaml, outputs.jsonl, summary.json, report.md
    reward: str = "gold"  # gold | none | dir or hub id of a sequence-classification reward model
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
    save_steps: bool = False  # args / cd / tq: include per-step diagnostics (candidates, Q̂, scores) in outputs.jsonl
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
        """Every problem visible without a model: unknown method, keys the method does not read, missing
        inputs the method needs, invalid parameter values."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        spec = DECODING[self.method]
        reads = set(COMMON_KEYS) | set(method_keys(spec))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name not in reads and v != f.default:
                own = ", ".join(method_keys(spec)) or "none"
                raise ValueError(
                    f"{f.name}={v!r} does not apply to method {self.method!r}; the keys it reads "
                    f"besides the common ones ({', '.join(COMMON_KEYS)}) are: {own}"
                )
        no_reward = self.reward.lower() in ("", "none")
        if "reward" in spec.needs and no_reward:
            raise ValueError(f"{self.method} needs a reward (reward=gold or a reward model dir)")
        if "rollout_model" in spec.needs and not self.rollout_model:
            raise ValueError(f"{self.method} needs rollout_model=PATH (the aligned baseline) or rollout_model=base")
        if "baseline_reward" in spec.needs and not self.baseline_reward:
            raise ValueError(f"{self.method} needs baseline_reward=... (the reward the rollout model was aligned to)")
        if "scorer" in spec.needs and not self.scorer and no_reward:
            raise ValueError(f"{self.method} needs scorer=DIR or a reward to train a prefix scorer with")
        if self.scorer:  # a loaded scorer is not trained: the training keys would be ignored
            for key in SCORER_TRAIN_KEYS:
                if getattr(self, key) != self.__dataclass_fields__[key].default:
                    raise ValueError(
                        f"{key}={getattr(self, key)!r} only applies when {self.method} trains a prefix "
                        f"scorer; scorer={self.scorer!r} loads one"
                    )
        self.method_params()

    def method_params(self) -> dict:
        """decode()'s parameter keywords (validated): the common ones and the method keys that are set."""
        kw = dict(
            max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, seed=self.seed, stop_at_eos=self.stop_at_eos
        )
        kw.update({k: getattr(self, k) for k in PARAM_KEYS if getattr(self, k) is not None})
        DECODING[self.method].make_params(**kw)
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
    cfg.validate()
    spec = DECODING[cfg.method]
    run_dir = Path(cfg.output_dir)
    save_config(cfg, run_dir)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    params = cfg.method_params()
    prompts, sources = _load_prompts(cfg.prompts, cfg.limit)
    device = cfg.device or None
    model, tok = load_model_and_tokenizer(cfg.model, dtype=cfg.dtype, device=device)
    reward = load_reward(cfg.reward)
    kw: dict = {}
    if "rollout_model" in spec.needs:
        if cfg.rollout_model == "base":
            kw["rollout_model"] = model
        else:
            kw["rollout_model"], kw["rollout_tokenizer"] = load_model_and_tokenizer(
                cfg.rollout_model, dtype=cfg.dtype, device=device
            )
    if "baseline_reward" in spec.needs:
        kw["baseline_reward"] = load_reward(cfg.baseline_reward)
    scorer_report = None
    if "scorer" in spec.needs:
        kw["scorer"], scorer_report = _scorer(cfg, model, tok, reward)
    t0 = time.perf_counter()
    outs = decode(model, tok, prompts, cfg.method, reward=reward, score_outputs=reward is not None, **kw, **params)
    decode_s = time.perf_counter() - t0
    with open(run_dir / "outputs.jsonl", "w") as fh:
        for o, p, s in zip(outs, prompts, sources):
            row = {"prompt": p, "source": s, **o.to_json()}
            if cfg.save_steps and o.steps is not None:
                row["steps"] = [vars(st) for st in o.steps]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    summary = _summary(cfg, outs, decode_s, time.perf_counter() - t_start, scorer_report)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "report.md").write_text(report_md(summary, spec))
    print(json.dumps(summary, indent=2))
    print(f"run directory: {run_dir} (config.yaml, outputs.jsonl, summary.json, report.md)")
    return summary


def _scorer(cfg: GenerateConfig, model, tok, reward):
    from alignlab.decoding import PrefixScorer, train_prefix_scorer
    from alignlab.task.prompts import load_task_prompts

    if cfg.scorer:
        return PrefixScorer.load(cfg.scorer), {"loaded": cfg.scorer}
    train = [p.instruction for p in load_task_prompts("train")[: cfg.cd_train_prompts]]
    scorer, report = train_prefix_scorer(
        model,
        tok,
        train,
        reward,
        samples_per_prompt=cfg.cd_samples,
        max_new_tokens=cfg.cd_max_new_tokens,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
    )
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
    s = {
        "method": cfg.method,
        "prompts": n,
        "new_tokens": tot.new_tokens,
        "finished": sum(o.finished for o in outs) / max(n, 1),
        "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        "reward": cfg.reward,
        "per_token": tot.per_token(),
        "decode_seconds": decode_s,
        "total_seconds": total_s,
    }
    if scorer_report:
        s["scorer"] = scorer_report
    return s


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def report_md(summary: dict, spec: DecodingSpec) -> str:
    """The summary as a markdown table (nested dicts flattened to ``key.sub``)."""
    rows = []
    for k, v in summary.items():
        if isinstance(v, dict):
            rows += [(f"{k}.{sk}", sv) for sk, sv in v.items()]
        else:
            rows.append((k, v))
    lines = [f"# alignlab generate: {spec.name}", "", spec.summary + ".", "", "| key | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    lines += ["", "Per-prompt rows: outputs.jsonl; the resolved config: config.yaml.", ""]
    return "\n".join(lines)
