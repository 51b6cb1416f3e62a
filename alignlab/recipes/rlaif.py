"""`alignlab rlaif`: RLAIF end to end on the embedded task, in one command (docs/rlaif.md).

1. on-policy pairs exactly as `alignlab demo` builds them (the same train prompts, sampling and cache): k samples
   per prompt, best vs worst by the gold reward (the gold's labels);
2. the judge labels every pair in both orders (alignlab.judge: soft labels p = P(the gold's chosen is better)), and
   its agreement with the gold's labels is measured on these pairs (with and without the swap, position
   consistency, ties);
3. on the same prompts and budget (`methods`): DPO on the gold's labels, DPO on the judge's labels (ties dropped),
   a reward model on the judge's soft labels (ties kept) then RLOO against it, d-RLAIF (RLOO with the judge's 1-10
   rating as the reward, alignlab.judge.rating), and optionally a reward model on the gold's labels then RLOO;
4. every policy and the base evaluated with the demo's harness on held-out prompts (gold-v2): one table (Δgold vs
   the base ± s.e., win rate, KL, the gold's terms), the judge's agreement and its cost (queries, cache hits,
   seconds); output_dir gets config.yaml, results.json, metrics.json, report.md / .html / .png.
The training, evaluation and RM pieces are the demo's own functions (alignlab.recipes.demo).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from alignlab.config import ConfigError, reject_unread, save_config
from alignlab.eval.compare import base_row, breakdown_table, method_row
from alignlab.eval.demo_notes import dump_generations
from alignlab.eval.harness import result_from_generations
from alignlab.eval.report import Section, format_table, text_table, write_report
from alignlab.eval.rlaif_report import (
    JudgeLabels,
    agreement_section,
    cost_section,
    judge_dpo_pairs,
    judge_rm_rows,
)
from alignlab.eval.rlhf import rlhf_section, write_curves, write_rlhf_inputs
from alignlab.judge import RLAIF_METHODS, BackendOptions, open_backend
from alignlab.judge.agreement import agreement_stats
from alignlab.judge.cache import CACHE_FILE, JudgeCache
from alignlab.judge.protocol import Judge
from alignlab.judge.rating import judge_reward, load_rating_template
from alignlab.judge.templates import JudgeTemplateError, load_template, render_context
from alignlab.judge.types import Pair
from alignlab.models.loading import DEFAULT_MODEL, cache_dir, load_model_and_tokenizer, model_fingerprint
from alignlab.recipes.demo import Clock, ProxyRM, prompt_texts, proxy_rm, rl_and_eval, train_and_eval
from alignlab.rollout.cache import cached_generate
from alignlab.rollout.generate import SamplingParams
from alignlab.rollout.onpolicy import build_onpolicy_pairs
from alignlab.task.gold import GoldReward
from alignlab.task.prompts import balanced, load_task_prompts

RL_METHODS = ("rloo_judge_rm", "d_rlaif", "rloo_gold_rm")
RM_METHODS = ("rloo_judge_rm", "rloo_gold_rm")
RL_KEYS = ["rl_steps", "rl_prompts_per_step", "rl_max_new_tokens", "rl_learning_rate"]
RM_KEYS = ["rm_heldout", "rm_epochs", "rm_learning_rate"]
LABELS = {
    "dpo_gold": "DPO, gold labels",
    "dpo_judge": "DPO, judge labels",
    "rloo_judge_rm": "RLOO vs RM on judge labels",
    "d_rlaif": "d-RLAIF (RLOO, judge rating)",
    "rloo_gold_rm": "RLOO vs RM on gold labels",
}


@dataclass
class RLAIFConfig:
    model: str = DEFAULT_MODEL  # the policy (and the sampler of the pairs)
    output_dir: str = "runs/rlaif"
    seed: int = 0  # pairs, the judge's pass-1 order, evaluation sampling
    threads: int = 0  # torch CPU threads; 0 = torch default
    # on-policy pairs: the demo's (same prompts, sampling and cache)
    train_prompts: int = 48
    samples_per_prompt: int = 3
    pair_max_new_tokens: int = 128
    pair_temperature: float = 0.8
    gen_batch_size: int = 32
    # the judge
    judge: str = DEFAULT_MODEL  # built-in alias, hub id, local model dir, or http(s)://host:port/v1
    template: str = "base"  # pairwise labels: base | detailed | cot | a .json/.yaml file
    rating_template: str = "base"  # d-RLAIF rating: base | detailed | a .json/.yaml file
    tie_threshold: float = 0.05  # abs(p - 0.5) below this is a tie: dropped for DPO, kept for the RM
    cache_dir: str = ""  # judge cache directory; empty = <alignlab cache>/judge
    judge_batch_size: int = 8  # judge prompts per forward (local judge)
    # training: every method on the same pairs' prompts and budget
    methods: list[str] = field(default_factory=lambda: ["dpo_gold", "dpo_judge", "rloo_judge_rm", "d_rlaif"])
    seeds: list[int] = field(default_factory=lambda: [0])
    beta: float = 0.1
    learning_rate: float = 1e-3  # DPO (the demo's, chosen on validation)
    epochs: int = 2
    per_device_batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_top_layers: int = 10
    # reward models (rloo_judge_rm, rloo_gold_rm)
    rm_heldout: float = 0.2  # share of the pairs' prompts held out for the RM's accuracy on the gold's labels
    rm_epochs: int = 2
    rm_learning_rate: float = 1e-2
    # RL (rloo_judge_rm, d_rlaif, rloo_gold_rm)
    rl_steps: int = 8
    rl_prompts_per_step: int = 8  # x 2 samples (RLOO) per step
    rl_max_new_tokens: int = 128
    rl_learning_rate: float = 1e-3
    # evaluation (the demo's harness)
    eval_split: str = "test"  # test: reported numbers; validation: tuning
    eval_prompts: int = 48
    eval_max_new_tokens: int = 128
    eval_temperature: float = 1.0
    n_boot: int = 2000

    def rl_lr(self, algo: str) -> float:
        """The learning rate of its RL runs (all RLOO)."""
        return self.rl_learning_rate

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in RLAIF_METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"methods: unknown {unknown or '(none given)'}; choose from {', '.join(RLAIF_METHODS)}")
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        if self.samples_per_prompt < 2:
            raise ConfigError("samples_per_prompt must be >= 2 to form pairs")
        if self.eval_split not in ("test", "validation"):
            raise ConfigError(f"eval_split must be test or validation, got {self.eval_split!r}")
        if not 0.0 <= self.tie_threshold < 0.5:
            raise ConfigError(f"tie_threshold must be in [0, 0.5), got {self.tie_threshold}")
        if not any(m in RL_METHODS for m in self.methods):
            reject_unread(self, RL_KEYS, f"no RL method is trained (methods: {', '.join(RL_METHODS)})")
        if not any(m in RM_METHODS for m in self.methods):
            reject_unread(self, RM_KEYS, f"no reward model is trained (methods: {', '.join(RM_METHODS)})")
        elif not 0 < self.rm_heldout < 1:
            raise ConfigError(f"rm_heldout must be in (0, 1), got {self.rm_heldout}")
        if "d_rlaif" not in self.methods:
            reject_unread(self, ["rating_template"], "d_rlaif is not in methods")
        try:  # a bad template fails before any model loads
            load_template(self.template)
            load_rating_template(self.rating_template)
        except JudgeTemplateError as e:
            raise ConfigError(str(e)) from None

    @property
    def rating_spec(self) -> str:
        """The d-RLAIF reward as `alignlab rl` names it."""
        return f"judge:{self.judge}:{self.rating_template}"


def label_pairs(cfg: RLAIFConfig, backend, pair_rows: list[dict]) -> JudgeLabels:
    """Every pair judged in both orders (which one pass 1 shows first drawn per pair from ``seed``, as in `alignlab
    label`); verdicts stated for the gold's chosen; agreement with the gold's labels."""
    t = time.perf_counter()
    template = load_template(cfg.template)
    judge = Judge(backend, template, _cache(cfg, CACHE_FILE), tie_threshold=cfg.tie_threshold)
    rng = random.Random(cfg.seed)
    chosen_first = [rng.random() < 0.5 for _ in pair_rows]
    pairs = []
    for r, first in zip(pair_rows, chosen_first):
        ctx, c, rj = render_context(r["prompt"]), r["chosen"].strip(), r["rejected"].strip()
        pairs.append(Pair(ctx, c, rj) if first else Pair(ctx, rj, c))
    verdicts = judge.judge_pairs(pairs)
    agreement = agreement_stats(
        verdicts, chosen_first, [len(r["chosen"]) for r in pair_rows], [len(r["rejected"]) for r in pair_rows]
    )
    oriented = [v if first else v.flipped() for v, first in zip(verdicts, chosen_first)]
    return JudgeLabels(oriented, agreement, judge.stats.as_dict(), time.perf_counter() - t)


def _cache(cfg: RLAIFConfig, name: str) -> JudgeCache:
    return JudgeCache(Path(cfg.cache_dir or cache_dir() / "judge") / name)


def run_rlaif(cfg: RLAIFConfig) -> dict:
    clock = Clock()
    run_dir = Path(cfg.output_dir)
    save_config(cfg, run_dir)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    # 1. the demo's on-policy pairs, ranked by the gold
    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(cfg.model)
    fp, gold = model_fingerprint(model), GoldReward()
    train_texts = prompt_texts(balanced(load_task_prompts("train"), cfg.train_prompts))
    eval_p = balanced(load_task_prompts(cfg.eval_split), cfg.eval_prompts)
    prompts = prompt_texts(eval_p)
    pair_params = SamplingParams(
        cfg.pair_max_new_tokens, cfg.pair_temperature, 1.0, cfg.samples_per_prompt, cfg.gen_batch_size, cfg.seed
    )
    pairs, pair_rows, prep = build_onpolicy_pairs(model, tok, train_texts, gold, gold.name, fp, pair_params)
    clock.add("pairs", t)
    print(f"[rlaif] {prep.pairs} on-policy pairs ({'cache hit' if prep.cache_hit else 'built'}: {prep.path})")

    # 2. the judge's labels on the same pairs
    backend = open_backend(cfg.judge, BackendOptions(batch_size=cfg.judge_batch_size))
    labels = label_pairs(cfg, backend, pair_rows)
    clock.parts["judge_labels"] = labels.seconds
    judge_pairs, labels.counts = judge_dpo_pairs(pairs, labels)
    skipped: dict[str, str] = {}  # method -> why it was not trained: a reported decision, not a crash mid-table
    if "dpo_judge" in cfg.methods and len(judge_pairs) < cfg.per_device_batch_size:
        skipped["dpo_judge"] = (
            f"not trained: the judge left {len(judge_pairs)} of {len(pairs)} pairs after dropping ties "
            f"({labels.counts}), fewer than one batch ({cfg.per_device_batch_size}); lower tie_threshold or use a "
            "better judge"
        )
        print(f"[rlaif] {LABELS['dpo_judge']}: {skipped['dpo_judge']}")
    print(f"[rlaif] judge labels: agreement with the gold {labels.agreement['agreement']}; {labels.counts}")

    # 3. the base, then every method on the same prompts and budget, evaluated the same way
    eval_params = SamplingParams(
        cfg.eval_max_new_tokens, cfg.eval_temperature, 1.0, 1, cfg.gen_batch_size, cfg.seed + 1
    )
    t = time.perf_counter()
    base_gens = cached_generate(model, tok, prompts, eval_params, fp, progress="eval base")
    base = result_from_generations("base", base_gens, gold, prompts, kl=[0.0] * len(base_gens))
    clock.add("eval", t)
    rl_inputs = write_rlhf_inputs(run_dir, pair_rows, train_texts, cfg.rm_heldout, cfg.seed)
    rms: dict[str, ProxyRM] = {}
    if "rloo_judge_rm" in cfg.methods:
        rms["rloo_judge_rm"] = proxy_rm(cfg, run_dir, judge_rm_rows(pair_rows, labels), train_texts, clock, "rm_judge")
    if "rloo_gold_rm" in cfg.methods:
        rms["rloo_gold_rm"] = proxy_rm(cfg, run_dir, pair_rows, train_texts, clock, "rm_gold")
    rating = judge_reward(cfg.rating_spec, cfg.cache_dir or None, backend) if "d_rlaif" in cfg.methods else None
    direct = ProxyRM(rl_inputs, None)  # d-RLAIF: no reward model; the RL prompts and the curve
    args = (prompts, eval_params, gold, clock)
    results, info = {}, {}
    for method in (m for m in cfg.methods if m not in skipped):
        for seed in cfg.seeds:
            if method == "dpo_gold":
                res, i, _ = train_and_eval(cfg, "dpo", seed, pairs, *args, tag=method)
            elif method == "dpo_judge":
                res, i, _ = train_and_eval(cfg, "dpo", seed, judge_pairs, *args, tag=method)
            elif method == "d_rlaif":
                res, i, _ = rl_and_eval(cfg, "rloo", seed, pairs, *args, direct, reward=rating, tag=method)
            else:
                res, i, _ = rl_and_eval(cfg, "rloo", seed, pairs, *args, rms[method], tag=method)
            results.setdefault(method, []).append(res)
            info[f"{method}/seed{seed}"] = i
    return _finish(
        cfg, run_dir, clock, base, results, info, skipped, labels, rating, rms, direct, prep, eval_p, gold.name
    )


def _finish(cfg, run_dir, clock, base, results, info, skipped, labels, rating, rms, direct, prep, eval_p, gold_name):
    """4. the table, the agreement, cost and RL sections, the files. ``skipped``: method -> why it was not trained."""
    rows = [base_row(base)]
    rows += [method_row(LABELS[m], rs, base, cfg.eval_temperature, cfg.n_boot, cfg.seed) for m, rs in results.items()]
    clock.parts["total"] = time.perf_counter() - clock.t0
    cost_sec, cost = cost_section(labels, rating.stats.as_dict() if rating else None, clock.parts)
    sections = [agreement_section(labels, cfg.judge, cfg.template, cfg.tie_threshold), cost_sec]
    for name, p in rms.items():  # each reward model's held-out accuracy on the gold's labels
        sec = rlhf_section(p.inputs, p.rm.evals, p.rm.metrics, {}, None)
        sections.append(replace(sec, heading=f"Reward model for {LABELS[name]}", notes=sec.notes[:1]))
    curves = {k: v for p in [*rms.values(), direct] for k, v in p.curves.items()}
    if curves:
        sections.append(_rl_section(cfg, curves, write_curves(run_dir, curves)[1]))
    notes = _notes(cfg, prep, rows, info, skipped, gold_name)
    samples = [
        {"prompt": eval_p[i].instruction, "base": base.texts[i]}
        | {LABELS[m]: r[0].texts[i] for m, r in results.items()}
        for i in range(min(3, len(eval_p)))
    ]
    title = f"alignlab rlaif: AI feedback vs the gold's labels on the embedded task ({cfg.eval_split} prompts)"
    report = write_report(run_dir, rows, title, notes, samples, breakdown=breakdown_table(rows), sections=sections)
    metrics = {"rows": rows, "agreement": labels.agreement, "label_counts": labels.counts, "cost": cost}
    metrics |= {"train": info, "skipped": skipped}
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    dump_generations(run_dir, eval_p, base, *[r for rs in results.values() for r in rs])
    print("\n" + format_table(rows) + "\n\ngain by gold term (signed contributions; they add up to Δgold):\n")
    print(breakdown_table(rows))
    for sec in sections[:2]:
        print(f"\n{sec.heading}:\n\n{text_table(*sec.table)}\n")
        for line in sec.notes:
            print("-", line)
    print(f"\nreport: {report}")
    return metrics | {"report": str(report)}


def _rl_section(cfg: RLAIFConfig, curves: dict[str, list[dict]], png: Path) -> Section:
    """Every RL run's reward (the RM's, or the judge's rating), gold and KL, first and last step."""
    body = [
        [name, f"{r[0]['proxy']:+.3f} -> {r[-1]['proxy']:+.3f}", f"{r[0]['gold']:.3f} -> {r[-1]['gold']:.3f}",
         f"{r[-1]['kl']:.2f}"]
        for name, r in curves.items()
    ]  # fmt: skip
    notes = [
        "reward: the RM's score (normalised on the base policy's samples) or, for d-RLAIF, the judge's rating; "
        "reward and gold are the means over each step's rollouts on train prompts (rl_curves.jsonl)",
    ]
    if "d_rlaif" in cfg.methods:
        notes.append(
            f"d-RLAIF reward `{cfg.rating_spec}`: the judge rates each rollout 1-10, E = Σ s·P(s) from its next-token "
            "distribution ('10' read as '1' then '0'), mapped to [-1, 1] as (E - 5.5) / 4.5 (docs/rlaif.md)"
        )
    head = ["run", "reward, first -> last step", "gold, first -> last step", "KL to init (last step)"]
    return Section("RL runs: reward and gold per step", notes, (head, body), png, "reward vs gold")


def _notes(cfg: RLAIFConfig, prep, rows, info, skipped: dict[str, str], gold_name: str) -> list[str]:
    notes = [
        f"{rows[0]['n_prompts']} {cfg.eval_split} prompts (balanced), one sample each at T = {cfg.eval_temperature} "
        f"(sampling seed {cfg.seed + 1}), max {cfg.eval_max_new_tokens} new tokens; judged by the gold ({gold_name})",
        f"pairs: {prep.pairs} on-policy pairs from {prep.prompts} train prompts ({cfg.samples_per_prompt} samples at "
        f"T = {cfg.pair_temperature}; the demo's, {'cached' if prep.cache_hit else 'built'}); every method trains on "
        f"these prompts: DPO {cfg.epochs} epochs at lr {cfg.learning_rate}, beta {cfg.beta}; RL {cfg.rl_steps} RLOO "
        f"steps of {cfg.rl_prompts_per_step} prompts x 2 samples at lr {cfg.rl_learning_rate}; LoRA r={cfg.lora_r} "
        f"on the top {cfg.lora_top_layers} blocks",
    ]
    for r in rows[1:]:
        verdict = "exceeds" if r["exceeds_2se"] else "does NOT exceed"
        seeds = "seeds and prompts" if r["seed_variance_included"] else "prompts only (one seed)"
        notes.append(
            f"{r['method']}: Δgold {r['diff']:+.4f} ± {r['diff_se']:.4f} (s.e. over {seeds}) -> {verdict} 2 s.e.; "
            f"win rate {r['win_rate']:.3f}; largest term {r.get('breakdown_dominant', '-')}"
        )
    notes.append("training: " + "; ".join(f"{k}: {v.get('steps')} steps" for k, v in info.items()))
    notes += [f"{LABELS[m]}: {why}" for m, why in skipped.items()]
    return notes


def main(cfg: RLAIFConfig) -> None:
    run_rlaif(cfg)
