"""`alignlab demo`: the whole loop on the embedded task, on a laptop CPU, offline.

1. load the built-in model (SmolLM2-135M-Instruct from its GGUF, cached as safetensors);
2. build on-policy pairs on train prompts: k samples each, ranked by the gold reward (cached);
3. for each training method and seed: train with LoRA on the same pairs and budget (reference log-probs and
   T-REG token rewards computed once, cached); evaluate on held-out prompts (``eval_split``: test for reported
   numbers, validation for tuning) with the shared harness;
   RL methods (rloo, ppo, grpo: the RLHF loop, ``make demo-rlhf``): a proxy reward model trained on the same
   pairs (``alignlab rm``, a share of the prompts held out for its accuracy), then ``alignlab rl`` against it on the
   pairs' train prompts, the gold tracked per step; the RL policies are evaluated exactly like the others;
4. decoding-time methods (no training) on a prompt subset, when enabled;
5. print the tables -- gains with the standard error over seeds and prompts, their split into the gold's terms,
   KL(π‖π_ref) at T = 1 on the policy's own samples -- and write the report (docs/evaluation.md).
Cached artefacts (model, pairs, reference log-probs, token rewards, generations keyed by model fingerprint)
make a second run faster; training itself always reruns.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignlab.config import reject_unread, save_config
from alignlab.eval.compare import base_row, breakdown_table, method_row
from alignlab.eval.decoding_rows import ALL_METHODS, DecodingEvalSettings, merged_copy
from alignlab.eval.demo_notes import demo_notes, dump_generations
from alignlab.eval.harness import MethodResult, kl_to_reference, result_from_generations, summarize
from alignlab.eval.report import DECODING_COLUMNS, format_table, text_table, write_report
from alignlab.eval.rlhf import (
    GUIDES,
    RLHFInputs,
    guided_decoding_rows,
    rl_curve,
    rlhf_section,
    top_layer_targets,
    write_curves,
    write_rlhf_inputs,
)
from alignlab.losses import LOSSES, get_loss
from alignlab.losses.rl_registry import RL_ALGOS
from alignlab.models.loading import load_model_and_tokenizer, model_fingerprint
from alignlab.recipes.rl import RLConfig, rl
from alignlab.recipes.rm import RMConfig, RMResult, train_rm
from alignlab.recipes.train import TrainConfig, train
from alignlab.rewards import load_reward
from alignlab.rollout.cache import cached_generate
from alignlab.rollout.generate import SamplingParams
from alignlab.rollout.onpolicy import build_onpolicy_pairs
from alignlab.task.gold import GoldReward
from alignlab.task.prompts import balanced, load_task_prompts

# the RLHF keys: the proxy RM's with an RL method or proxy-guided decoding, the RL ones with an RL method
RM_KEYS = ["rm_heldout", "rm_epochs", "rm_learning_rate"]
RL_KEYS = ["rl_steps", "rl_prompts_per_step", "rl_max_new_tokens", "rl_learning_rate", "ppo_learning_rate"]


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    output_dir: str = "runs/demo"
    seed: int = 0  # pairs and evaluation sampling
    threads: int = 0  # torch CPU threads; 0 = torch default
    # on-policy pairs (train prompts, balanced over the 12 categories)
    train_prompts: int = 48
    samples_per_prompt: int = 3
    pair_max_new_tokens: int = 128  # the gold's whole length range fits (its "too long" side fires past 70 words)
    pair_temperature: float = 0.8
    gen_batch_size: int = 32
    # training: every method gets the same pairs, steps and LoRA; one run per seed
    methods: list[str] = field(default_factory=lambda: ["dpo"])  # dpo_treg: make demo-treg; rloo,ppo: demo-rlhf
    seeds: list[int] = field(default_factory=lambda: [0])  # 0,1,2 for the seed-variance tables (make demo-seeds)
    beta: float = 0.1
    # T-REG (read only by the T-REG methods), chosen on validation (docs/treg.md): the generation template had
    # the most signal on validation pairs (Σr̂ prefers chosen in 58% of 96); alpha 4 beat 1 on validation prompts
    alpha: float = 4.0
    treg_template: str = "generation"
    treg_tau: float = 1.0  # contrast temperature; 0.25 lowered the signal on validation
    learning_rate: float = 1e-3  # chosen on validation prompts among 1e-3, 2e-3, 4e-3 (docs/demo.md, "Tuning")
    epochs: int = 2
    per_device_batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    lora_top_layers: int = 10  # adapters in the last 10 of 30 blocks: half the step time of all blocks
    # RLHF (read only with an RL method: rloo, ppo, grpo): proxy RM on the pairs, then RL against it on their prompts
    rm_heldout: float = 0.2  # share of the pairs' prompts held out for the RM's accuracy (eval_data)
    rm_epochs: int = 2
    rm_learning_rate: float = 1e-2
    rl_steps: int = 8
    rl_prompts_per_step: int = 8  # x the algorithm's group size (rloo 2, ppo 1, grpo 8) rollouts per step
    rl_max_new_tokens: int = 128
    # Both RL learning rates were chosen on validation prompts (docs/demo.md, "The RL learning rates")
    rl_learning_rate: float = 1e-3  # RLOO, GRPO (and PPO when ppo_learning_rate is None)
    ppo_learning_rate: float | None = 3e-4  # PPO's own: 4 update epochs per rollout batch, where RLOO takes 1
    # evaluation: one sample per prompt at eval_temperature; KL is reported at T = 1 on the policy's own samples
    eval_split: str = "test"  # test: reported numbers; validation: tuning (never tune on test)
    eval_prompts: int = 48  # balanced over the categories
    eval_max_new_tokens: int = 128
    eval_temperature: float = 1.0  # at 1.0 the gold samples also give the T = 1 KL (no second sampling pass)
    n_boot: int = 2000  # bootstrap replicates for the standard errors over seeds and prompts
    # decoding-time methods (no training; make demo-decoding). TQ* rollouts come from the first trained `dpo`
    # policy when there is one (the paper's aligned baseline), else from the reference.
    decoding: list[str] = field(default_factory=list)  # e.g. decoding=greedy,args,linear; empty = skip
    decoding_prompts: int = 32  # first N eval prompts (balanced): every decoding method, the same prompts
    decoding_subset: int = 32  # first N of those for the expensive ones (cd, tq-direct); = decoding_prompts: all
    decoding_max_new_tokens: int = 64
    decoding_guide: str = "gold"  # gold | proxy | both: the reward decoding optimises (proxy: the demo's proxy RM)

    def rl_lr(self, algo: str) -> float:
        """The learning rate of an RL method: ppo_learning_rate for PPO when set, else rl_learning_rate."""
        return self.ppo_learning_rate if algo == "ppo" and self.ppo_learning_rate is not None else self.rl_learning_rate

    def validate(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2 to form pairs")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"eval_split must be test (reported) or validation (tuning), got {self.eval_split!r}")
        if not self.decoding:
            reject_unread(
                self,
                ["decoding_prompts", "decoding_subset", "decoding_max_new_tokens", "decoding_guide"],
                "no decoding methods are run (set decoding=...)",
            )
        unknown = [m for m in self.methods if m not in LOSSES and m not in RL_ALGOS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; losses: {', '.join(LOSSES)}; RL: {', '.join(RL_ALGOS)}")
        if self.decoding_guide not in GUIDES:
            raise ValueError(f"decoding_guide must be one of {', '.join(GUIDES)}, got {self.decoding_guide!r}")
        if not any(m in RL_ALGOS for m in self.methods):
            reject_unread(self, RL_KEYS, "no RL method is trained (methods=... has no rloo/ppo/grpo)")
        elif "ppo" not in self.methods:
            reject_unread(self, ["ppo_learning_rate"], "ppo is not among methods")
        if not self.needs_proxy:
            reject_unread(self, RM_KEYS, "no proxy RM is trained (no RL method, decoding_guide=gold)")
        elif not 0 < self.rm_heldout < 1:
            raise ValueError(f"rm_heldout must be in (0, 1), got {self.rm_heldout}")
        if not any(get_loss(m).token_level for m in self.methods if m in LOSSES):
            reject_unread(
                self,
                ["alpha", "treg_template", "treg_tau"],
                "no T-REG method is trained (methods=... has no dpo_treg/simpo_treg)",
            )
        unknown = sorted(set(self.decoding) - set(ALL_METHODS))
        if unknown:
            raise ValueError(f"decoding: unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")

    @property
    def needs_proxy(self) -> bool:
        """A proxy RM is trained on the pairs for the RL methods and for proxy-guided decoding."""
        return any(m in RL_ALGOS for m in self.methods) or bool(self.decoding) and self.decoding_guide != "gold"


def prompt_texts(prompts) -> list[str]:
    return [p.instruction for p in prompts]


class Clock:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.parts: dict[str, float] = {}

    def add(self, name: str, since: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - since


def run_demo(cfg: DemoConfig) -> dict:
    clock = Clock()
    run_dir = Path(cfg.output_dir)
    save_config(cfg, run_dir)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(cfg.model)
    fp = model_fingerprint(model)
    gold = GoldReward()
    clock.add("load", t)
    train_p = balanced(load_task_prompts("train"), cfg.train_prompts)
    eval_p = balanced(load_task_prompts(cfg.eval_split), cfg.eval_prompts)
    prompts = prompt_texts(eval_p)

    t = time.perf_counter()
    pair_params = SamplingParams(
        cfg.pair_max_new_tokens, cfg.pair_temperature, 1.0, cfg.samples_per_prompt, cfg.gen_batch_size, cfg.seed
    )
    pairs, pair_rows, prep = build_onpolicy_pairs(model, tok, prompt_texts(train_p), gold, gold.name, fp, pair_params)
    clock.add("pairs", t)
    print(
        f"[demo] on-policy pairs: {prep.pairs} from {prep.prompts} prompts x {cfg.samples_per_prompt} samples "
        f"({'cache hit' if prep.cache_hit else 'built'}; {prep.dropped_ties} prompts dropped as ties); "
        f"gold chosen {prep.chosen_reward_mean:.3f} vs rejected {prep.rejected_reward_mean:.3f}"
    )

    eval_params = SamplingParams(
        cfg.eval_max_new_tokens, cfg.eval_temperature, 1.0, 1, cfg.gen_batch_size, cfg.seed + 1
    )
    t = time.perf_counter()
    base_gens = cached_generate(model, tok, prompts, eval_params, fp, progress="eval base")
    base = result_from_generations("base", base_gens, gold, prompts, kl=[0.0] * len(base_gens))
    clock.add("eval", t)

    rlhf = proxy_rm(cfg, run_dir, pair_rows, prompt_texts(train_p), clock) if cfg.needs_proxy else None
    per_seed: dict[str, list[MethodResult]] = {}
    train_info = {}
    aligned = None  # a plain (merged) copy of the first dpo policy: TQ*'s aligned baseline
    for method in cfg.methods:
        for seed in cfg.seeds:
            keep = bool(cfg.decoding) and aligned is None and method == "dpo"
            args = (cfg, method, seed, pairs, prompts, eval_params, gold, clock)
            res, info, policy = rl_and_eval(*args, rlhf) if method in RL_ALGOS else train_and_eval(*args, keep)
            if keep:
                aligned = policy
            per_seed.setdefault(method, []).append(res)
            train_info[f"{method}/seed{seed}"] = info

    n = len(eval_p)
    rows = [base_row(base)]
    seed_rows = []
    for method, results in per_seed.items():
        seed_rows += [summarize(r, base, n) | {"seed": sd} for r, sd in zip(results, cfg.seeds)]
        rows.append(method_row(method, results, base, cfg.eval_temperature, cfg.n_boot, cfg.seed))

    drows = None
    if cfg.decoding:
        t = time.perf_counter()
        dprompts = prompt_texts(balanced(eval_p, cfg.decoding_prompts))
        ds = DecodingEvalSettings(
            len(dprompts), cfg.decoding_subset, cfg.decoding_max_new_tokens, seed=cfg.seed, methods=tuple(cfg.decoding)
        )
        proxy = load_reward(str(rlhf.rm.final_dir), name="proxy RM") if cfg.decoding_guide != "gold" else None
        drows = guided_decoding_rows(model, tok, dprompts, gold, aligned, ds, cfg.decoding_guide, proxy)
        clock.add("decoding", t)
    sections = []
    if rlhf is not None:
        png = write_curves(run_dir, rlhf.curves)[1] if rlhf.curves else None
        sections.append(rlhf_section(rlhf.inputs, rlhf.rm.evals, rlhf.rm.metrics, rlhf.curves, png))
    clock.parts["total"] = time.perf_counter() - clock.t0
    notes = demo_notes(cfg, prep, rows, train_info, clock.parts)
    samples = [
        {"prompt": eval_p[i].instruction, "base": base.texts[i]} | {m: r[0].texts[i] for m, r in per_seed.items()}
        for i in range(min(3, n))
    ]
    report = write_report(
        run_dir,
        rows,
        f"alignlab demo: preference optimisation on the embedded task ({cfg.eval_split} prompts)",
        notes,
        samples,
        decoding_rows=drows.rows if drows else None,
        decoding_notes=drows.notes if drows else None,
        breakdown=breakdown_table(rows),
        sections=sections,
    )
    (run_dir / "results_per_seed.json").write_text(json.dumps(seed_rows, indent=2))
    (run_dir / "timings.json").write_text(json.dumps(clock.parts, indent=2))
    dump_generations(run_dir, eval_p, base, *[r for rs in per_seed.values() for r in rs])
    print()
    print(format_table(rows))
    print()
    print("gain by gold term (signed contributions; they add up to Δgold):\n")
    print(breakdown_table(rows))
    print()
    for line in notes:
        print("-", line)
    for sec in sections:
        print(f"\n{sec.heading}:\n\n{text_table(*sec.table)}\n")
        for line in sec.notes:
            print("-", line)
    if drows:
        print("\ndecoding-time alignment (no training; baseline = greedy decoding of the reference):\n")
        print(format_table(drows.rows, DECODING_COLUMNS))
        print()
        for line in drows.notes:
            print("-", line)
        if drows.rows[1:]:
            print("\ndecoding gain vs greedy by gold term (signed contributions; they add up to Δgold):\n")
            print(breakdown_table(drows.rows[1:]))
    print(f"\nreport: {report}")
    return {
        "rows": rows,
        "seed_rows": seed_rows,
        "decoding_rows": drows.rows if drows else [],
        "timings": clock.parts,
        "report": str(report),
    }


def train_and_eval(cfg, method: str, seed: int, pairs, prompts, eval_params, gold, clock, keep=False, tag=""):
    """Train one method/seed and evaluate it. keep=True also returns a merged plain copy of the policy. ``tag``
    names the run (its directory and row; default: the method)."""
    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(cfg.model)  # a fresh base per run (LoRA wraps it in place)
    treg_keys = ("alpha", "treg_template", "treg_tau")  # only the T-REG losses read them
    treg = {k: getattr(cfg, k) for k in treg_keys if k in get_loss(method).reads}
    tcfg = TrainConfig(
        model=cfg.model,
        loss=method,
        beta=cfg.beta,
        **treg,
        learning_rate=cfg.learning_rate,
        epochs=cfg.epochs,
        per_device_batch_size=cfg.per_device_batch_size,
        lora=True,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_top_layers=cfg.lora_top_layers,
        gradient_checkpointing=False,
        seed=seed,
        output_dir=str(Path(cfg.output_dir) / f"train_{tag or method}_seed{seed}"),
        report_to="tensorboard",
        max_length=512,
        max_prompt_length=256,
        cpu=True,
    )
    result = train(tcfg, model=model, tokenizer=tok, pairs=pairs)
    clock.add(f"train_{method}", t)
    policy = result.model
    res = evaluate(cfg, f"{tag or method} s{seed}", policy, tok, prompts, eval_params, gold, clock)
    last = result.metrics[-1]
    info = {
        "steps": result.steps,
        "final_loss": last["loss"],
        "ref_cache_hit": result.ref_cache_hit,
        "final_margin": last["rewards/margins"],
    }
    return res, info, (merged_copy(policy) if keep else None)


def evaluate(cfg: DemoConfig, name: str, policy, tok, prompts, eval_params, gold, clock) -> MethodResult:
    """Every trained policy the same way: one sample per eval prompt, the gold, KL at T = 1 on its own samples."""
    t = time.perf_counter()
    policy.eval()
    fp = model_fingerprint(policy)
    gens = cached_generate(policy, tok, prompts, eval_params, fp, progress=f"eval {name}")
    kl = kl_to_reference(policy, tok, gens, cfg.eval_temperature)
    res = result_from_generations(name, gens, gold, prompts, kl=kl)
    if cfg.eval_temperature != 1.0:  # the headline KL is at T = 1 on the policy's own T = 1 samples
        t1_params = dataclasses.replace(eval_params, temperature=1.0)
        t1 = cached_generate(policy, tok, prompts, t1_params, fp, progress=f"T=1 samples {name}")
        res.extra["kl_t1"] = kl_to_reference(policy, tok, t1, 1.0)
    clock.add("eval", t)
    return res


@dataclass
class ProxyRM:
    """The trained proxy RM, the files it was trained and evaluated on, and each RL run's proxy/gold curve."""

    inputs: RLHFInputs
    rm: RMResult
    curves: dict[str, list[dict]] = field(default_factory=dict)


def proxy_rm(cfg, run_dir: Path, pair_rows: list[dict], train_prompts: list[str], clock, name: str = "rm") -> ProxyRM:
    """`alignlab rm` on the gold-labelled pairs (a share of their prompts held out as its eval_data), normalised on
    both sides of every pair (the base policy's samples); LoRA as for the policies."""
    t = time.perf_counter()
    # another RM (``name``) gets its own directory for its files; rows with ``p_chosen`` train it on soft labels
    inputs = write_rlhf_inputs(
        run_dir / name if name != "rm" else run_dir, pair_rows, train_prompts, cfg.rm_heldout, cfg.seed
    )
    rcfg = RMConfig(
        model=cfg.model,
        data=str(inputs.rm_train),
        eval_data=str(inputs.rm_heldout),
        max_length=512,
        max_prompt_length=256,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_top_layers=cfg.lora_top_layers,
        learning_rate=cfg.rm_learning_rate,
        epochs=cfg.rm_epochs,
        per_device_batch_size=cfg.per_device_batch_size,
        gradient_checkpointing=False,
        seed=cfg.seed,
        normalize_on=str(inputs.rm_normalize),
        output_dir=str(run_dir / name),
        report_to=["none"],
        cpu=True,
    )
    rm = train_rm(rcfg)
    clock.add("rm", t)
    return ProxyRM(inputs, rm)


def rl_and_eval(
    cfg, algo: str, seed: int, pairs, prompts, eval_params, gold, clock, proxy: ProxyRM, reward=None, tag=""
):
    """`alignlab rl` against the proxy RM -- or ``reward``, any reward object named by its ``name`` (d-RLAIF: the
    judge's rating) -- on the pairs' train prompts (the gold tracked per step; the run's curve goes to
    ``proxy.curves``), then evaluated exactly like the offline methods. ``tag`` names the run (default: algo)."""
    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(cfg.model)
    rcfg = RLConfig(
        model=cfg.model,
        prompts=str(proxy.inputs.prompts),
        reward=reward.name if reward is not None else str(proxy.rm.final_dir),
        track_gold=True,
        algo=algo,
        prompts_per_step=cfg.rl_prompts_per_step,
        max_new_tokens=cfg.rl_max_new_tokens,
        max_prompt_length=512,  # as for the pairs' and the evaluation's sampling
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_target=top_layer_targets(model, cfg.lora_top_layers),
        learning_rate=cfg.rl_lr(algo),
        max_steps=cfg.rl_steps,
        seed=seed,
        output_dir=str(Path(cfg.output_dir) / f"rl_{tag or algo}_seed{seed}"),
        report_to=["none"],
        cpu=True,
    )
    result = rl(rcfg, model=model, tokenizer=tok, reward=reward)
    clock.add(f"train_{algo}", t)
    proxy.curves[f"{tag or algo} s{seed}"] = curve = rl_curve(result.metrics)
    info = {
        "steps": result.steps,
        "final_proxy": curve[-1]["proxy"],
        "final_gold": curve[-1]["gold"],
        "final_kl_init": curve[-1]["kl"],
    }
    return evaluate(cfg, f"{tag or algo} s{seed}", result.model, tok, prompts, eval_params, gold, clock), info, None


def main(cfg: DemoConfig) -> None:
    run_demo(cfg)
