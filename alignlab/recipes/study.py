"""`alignlab study mode=daa|bon|rl`: a reward over-optimization study in one command (docs/study.md).

1. load the policy and the gold (any reward ``alignlab score`` accepts), build gold-labelled on-policy pairs on
   train prompts (best vs worst of k samples, cached; a share of their prompts held out);
2. the mode's loop, every point appended to points.jsonl as soon as it is measured (a rerun skips done points):
   - daa: train each loss at each beta (``alignlab train``, LoRA) and stop at checkpoints (``stop_after_steps``,
     then ``resume_from=latest``: the same schedule and trajectory as one uninterrupted run), half of them in the
     first quarter of the run; evaluate every checkpoint on the evaluation prompts (gold, KL(π‖π_ref) at T = 1 on
     its own samples, length, EOS share) and on the held-out pairs (implicit-reward accuracy and margin);
   - bon: proxy RMs (``alignlab rm``) trained on ``sizes`` gold-labelled pairs pick best-of-n, n = 1..n_max, from a
     pool of ``pool`` base samples per prompt; gold and proxy by the unbiased estimator, KL = log n − (n−1)/n;
   - rl: RLOO / PPO (``alignlab rl``) against each proxy RM, evaluated at checkpoints like daa, KL to the initial
     policy;
3. the report (alignlab.study.report): fits of the Gao et al. forms beside a quadratic, plots, study.html,
   results.json and the verdict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignlab.config import ConfigError, reject_unread, save_config
from alignlab.eval.rlhf import split_by_prompt, top_layer_targets, write_jsonl
from alignlab.losses import LOSSES
from alignlab.losses.rl_registry import RL_ALGOS
from alignlab.models.loading import cache_dir, load_model_and_tokenizer, model_fingerprint
from alignlab.recipes.rl import RLConfig, rl
from alignlab.recipes.rm import RMConfig, train_rm
from alignlab.recipes.train import TrainConfig, train
from alignlab.rewards import load_reward
from alignlab.rollout.generate import SamplingParams
from alignlab.rollout.onpolicy import build_onpolicy_pairs
from alignlab.rollout.rl_setup import load_prompt_texts
from alignlab.study.bon import bon_curve, kl_bon
from alignlab.study.evaluate import evaluate_policy, implicit_rewards
from alignlab.study.fits import sqrt_kl
from alignlab.study.points import StudyPoint, append_point, checkpoint_steps, read_points
from alignlab.study.report import write_study_report
from alignlab.training.checkpoint import find_resume_dir
from alignlab.training.schedule import BatchPlan

MODES = ("daa", "bon", "rl")
DAA_KEYS = "losses betas checkpoints epochs learning_rate per_device_batch_size".split()
BON_KEYS = "n_max pool".split()
RL_ONLY = "algos rl_steps rl_prompts_per_step rl_learning_rate kl_coef".split()
PROXY_KEYS = "sizes rm_epochs rm_learning_rate".split()


@dataclass
class StudyConfig:
    mode: str = "bon"  # daa | bon | rl
    gold: str = "gold"  # the gold reward: any reward `alignlab score` accepts (gold, gold-v1, an RM directory)
    proxy: str = ""  # bon / rl: a proxy RM directory to use; "" = train proxies on gold-labelled pairs (sizes)
    model: str = "smollm2-135m-instruct"  # the policy: hub id, local path, or built-in alias
    output_dir: str = "runs/study"
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch default
    # gold-labelled on-policy pairs (daa: the training pairs; bon / rl: the proxy RMs' data)
    train_prompts: str = "task:train"  # task:<split> or a prompt file
    pair_prompts: int = 48  # prompts to build pairs on (one pair each, ties dropped)
    samples_per_prompt: int = 4  # best vs worst by the gold
    heldout: float = 0.2  # share of the pairs' prompts held out (daa: implicit accuracy; bon / rl: RM accuracy)
    # evaluation: every point on the same prompts, samples at T = 1 (also the KL samples)
    eval_prompts: str = "task:test"  # task:<split> or a prompt file
    prompts: int = 16  # evaluation prompts (bon: pools)
    samples: int = 1  # daa / rl: samples per evaluation prompt
    max_new_tokens: int = 64  # pairs, pools, evaluation and rollouts
    gen_batch_size: int = 32
    n_boot: int = 1000  # bootstrap resamples of the fits' intervals
    # LoRA of the policies and the proxy RMs
    lora_r: int = 16
    lora_alpha: int = 32
    lora_top_layers: int = 10  # adapters in the last N blocks
    # daa
    losses: list[str] = field(default_factory=lambda: ["dpo"])  # daa: dpo, ipo, slic, ... (alignlab train's losses)
    betas: list[float] = field(default_factory=lambda: [0.05, 0.5])  # daa
    checkpoints: int = 8  # daa / rl: checkpoints per run (half in its first quarter)
    epochs: int = 2  # daa
    learning_rate: float = 2e-3  # daa
    per_device_batch_size: int = 8  # daa: pairs per step
    # proxy RMs (bon / rl without proxy=)
    sizes: list[int] = field(default_factory=lambda: [12, 32])  # training pairs per proxy RM (<= the train pairs)
    rm_epochs: int = 2
    rm_learning_rate: float = 1e-2
    # bon
    n_max: int = 32  # bon: n = 1..n_max
    pool: int = 64  # bon: samples per prompt (>= n_max)
    # rl
    algos: list[str] = field(default_factory=lambda: ["rloo"])  # rl: rloo, ppo, grpo
    rl_steps: int = 24  # rl
    rl_prompts_per_step: int = 8  # rl
    rl_learning_rate: float = 1e-3  # rl
    kl_coef: float | None = 0.0  # rl: 0 = no KL penalty (Gao et al.); None: the algorithm's default

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: choose one of {', '.join(MODES)}, got {self.mode!r}")
        why = f"mode={self.mode} does not read it"
        if self.mode != "daa":
            reject_unread(self, [k for k in DAA_KEYS if k != "checkpoints" or self.mode == "bon"], why)
        if self.mode != "bon":
            reject_unread(self, BON_KEYS, why)
        if self.mode != "rl":
            reject_unread(self, RL_ONLY, why)
        if self.mode == "daa":
            reject_unread(self, ["proxy"] + PROXY_KEYS, why + " (daa trains on gold-labelled pairs, no proxy RM)")
        elif self.proxy:
            reject_unread(self, PROXY_KEYS, "proxy= is given: no proxy RM is trained")
        if self.mode == "bon":
            reject_unread(self, ["samples"], "bon evaluates pools of `pool` samples per prompt")
        if self.mode != "daa" and self.proxy:
            pair_keys = ["samples_per_prompt", "heldout"] + (
                ["train_prompts", "pair_prompts"] if self.mode == "bon" else []
            )
            reject_unread(self, pair_keys, "proxy= is given: no gold-labelled pairs are built")
        unknown = [x for x in self.losses if x not in LOSSES] + [x for x in self.algos if x not in RL_ALGOS]
        if unknown:
            raise ConfigError(
                f"unknown losses/algos {unknown}; losses: {', '.join(LOSSES)}; algos: {', '.join(RL_ALGOS)}"
            )
        if not 0 < self.heldout < 1 or self.samples_per_prompt < 2 or self.checkpoints < 1:
            raise ConfigError("need 0 < heldout < 1, samples_per_prompt >= 2, checkpoints >= 1")
        if not 1 <= self.n_max <= self.pool:
            raise ConfigError(f"need 1 <= n_max <= pool, got n_max={self.n_max}, pool={self.pool}")
        if not self.gold:
            raise ConfigError("gold: a reward is needed (gold, gold-v1, or a reward-model directory)")


class Study:
    """The shared state of one study: config, run directory, gold, prompts, points done."""

    def __init__(self, cfg: StudyConfig, gold=None):
        self.cfg, self.dir = cfg, Path(cfg.output_dir)
        self.gold = gold if gold is not None else load_reward(cfg.gold)
        self.done = read_points(self.dir)
        self.eval_prompts = [str(p) for p in load_prompt_texts(cfg.eval_prompts, cfg.prompts)]
        self.train_prompts = [str(p) for p in load_prompt_texts(cfg.train_prompts, cfg.pair_prompts)]

    def model(self):
        return load_model_and_tokenizer(self.cfg.model)

    def params(self, k: int, seed_shift: int = 1) -> SamplingParams:
        c = self.cfg
        return SamplingParams(c.max_new_tokens, 1.0, 1.0, k, c.gen_batch_size, c.seed + seed_shift)

    def add(self, point: StudyPoint) -> None:
        d, point.kl_clamped = sqrt_kl(point.kl)
        point.sqrt_kl = d
        append_point(self.dir, point)
        self.done[point.key] = point
        print(f"[study] {point.key}: KL {point.kl:.3f} gold {point.gold:.4f} proxy {point.proxy}")

    def is_done(self, mode: str, run: str, step: int) -> bool:
        return f"{mode}/{run}/{step}" in self.done


def _pairs(st: Study, model, tok):
    """Gold-labelled on-policy pairs (cached) split by prompt: (train pairs, held-out pairs, train rows, held rows)."""
    c = st.cfg
    params = SamplingParams(c.max_new_tokens, 0.8, 1.0, c.samples_per_prompt, c.gen_batch_size, c.seed)
    name = getattr(st.gold, "name", c.gold)
    pairs, rows, rep = build_onpolicy_pairs(
        model, tok, st.train_prompts, st.gold, name, model_fingerprint(model), params
    )
    print(
        f"[study] {rep.pairs} gold-labelled pairs from {rep.prompts} prompts ({'cached' if rep.cache_hit else 'built'})"
    )
    _, held_rows = split_by_prompt(rows, c.heldout, c.seed)
    held = {r["prompt"] for r in held_rows}
    keep = [i for i, r in enumerate(rows) if r["prompt"] not in held]
    out = [i for i, r in enumerate(rows) if r["prompt"] in held]
    return [pairs[i] for i in keep], [pairs[i] for i in out], [rows[i] for i in keep], [rows[i] for i in out]


def _point(st: Study, ev, **kw) -> StudyPoint:
    s = ev.summary()
    return StudyPoint(sqrt_kl=0.0, kl_kind="k1_own_samples_T1", **s, **kw)


def _base_point(st: Study, model, tok, mode: str, run: str, proxy=None, **kw) -> None:
    if not st.is_done(mode, run, 0):
        ev = evaluate_policy(model, tok, st.eval_prompts, st.params(st.cfg.samples), st.gold, proxy, False, "base")
        point = _point(st, ev, mode=mode, method="base", run=run, step=0, **kw)
        if mode == "daa":  # π = π_ref: every implicit reward is 0 (strict accuracy 0, all ties, margin 0)
            point.proxy, point.implicit_acc, point.implicit_ties = 0.0, 0.0, 1.0
        st.add(point)


def _resume(run_dir: Path, step: int) -> str | None:
    """ "latest" when the newest checkpoint is at or before ``step``; a later one (points lost): start over."""
    latest = find_resume_dir("latest", run_dir)
    if latest is not None and int(latest.name.rsplit("_", 1)[-1]) > step:
        import shutil

        shutil.rmtree(run_dir)
        return None
    return "latest"


def run_daa(st: Study) -> None:
    c = st.cfg
    model, tok = st.model()
    train_pairs, held_pairs, _, _ = _pairs(st, model, tok)
    for loss in c.losses:
        for beta in c.betas:
            run = f"{loss} beta={beta:g}"
            _base_point(st, model, tok, "daa", run, beta=beta, epoch_fraction=0.0)
            lengths = [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in train_pairs]
            plan = BatchPlan(len(train_pairs), c.per_device_batch_size, 1, 1, c.seed, lengths)
            total = c.epochs * plan.steps_per_epoch
            if total < 1:
                raise ConfigError(f"{len(train_pairs)} training pairs fill no batch of {c.per_device_batch_size}")
            run_dir = st.dir / "runs" / f"{loss}_beta{beta:g}"
            for step in checkpoint_steps(total, c.checkpoints):
                if st.is_done("daa", run, step):
                    continue
                policy, ptok = st.model()
                tcfg = TrainConfig(
                    model=c.model,
                    loss=loss,
                    beta=beta,
                    learning_rate=c.learning_rate,
                    epochs=c.epochs,
                    per_device_batch_size=c.per_device_batch_size,
                    lora_r=c.lora_r,
                    lora_alpha=c.lora_alpha,
                    lora_top_layers=c.lora_top_layers,
                    gradient_checkpointing=False,
                    seed=c.seed,
                    output_dir=str(run_dir),
                    report_to=["none"],
                    max_length=512,
                    max_prompt_length=256,
                    stop_after_steps=step if step < total else None,
                    resume_from=_resume(run_dir, step),
                    cpu=True,
                )
                res = train(tcfg, model=policy, tokenizer=ptok, pairs=train_pairs)
                ev = evaluate_policy(res.model, ptok, st.eval_prompts, st.params(c.samples), st.gold, name=run)
                acc, ties, margin = implicit_rewards(res.model, ptok, held_pairs)
                point = _point(st, ev, mode="daa", method=loss, run=run, step=step, beta=beta)
                point.epoch_fraction, point.implicit_acc, point.implicit_ties = step / total, acc, ties
                point.proxy = margin  # daa's proxy: the implicit reward margin on held-out pairs
                point.train_loss = res.metrics[-1]["loss"] if res.metrics else None
                point.checkpoint = str(run_dir / "checkpoints" / f"step_{step}")
                st.add(point)


def _proxy_home(c: StudyConfig, backbone: str, train_rows: list[dict], held_rows: list[dict]) -> Path:
    """Where a proxy RM lives in the alignlab cache, keyed by everything its training reads (the backbone's
    fingerprint, the pairs' texts, the RM settings): bon and rl, and studies in other output_dirs, share it."""
    settings = ("lora_r", "lora_alpha", "lora_top_layers", "rm_learning_rate", "rm_epochs", "seed")
    key = {"backbone": backbone, "train": train_rows, "heldout": held_rows, **{k: getattr(c, k) for k in settings}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "study_proxies" / f"rm{len(train_rows)}_{digest}"


def _proxies(st: Study, model, tok) -> dict[str, tuple[int | None, str]]:
    """run label -> (size, RM directory): the given proxy, or one RM per size trained on gold-labelled pairs
    (``alignlab rm``; the held-out prompts' pairs as its eval_data, normalised on both sides of every pair: the base
    policy's samples). Trained once into the cache (``_proxy_home``) and reused by every later mode and study."""
    c = st.cfg
    if c.proxy:
        return {"rm=given": (None, c.proxy)}
    _, _, rows, held = _pairs(st, model, tok)
    out, backbone = {}, model_fingerprint(model)
    trl = lambda rs: [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rs]  # noqa: E731
    for size in c.sizes:
        if size > len(rows):
            raise ConfigError(f"sizes: {size} pairs asked for, only {len(rows)} training pairs (raise pair_prompts)")
        sub = rows[:size]
        d = _proxy_home(c, backbone, trl(sub), trl(held))
        cached = (d / "proxy.json").exists()  # written last: the RM is saved and normalised
        if not cached:
            both = [{"prompt": r["prompt"], "response": r[s]} for r in sub + held for s in ("chosen", "rejected")]
            rcfg = RMConfig(
                model=c.model,
                data=str(write_jsonl(d / "pairs_train.jsonl", trl(sub))),
                eval_data=str(write_jsonl(d / "pairs_heldout.jsonl", trl(held))),
                normalize_on=str(write_jsonl(d / "normalize.jsonl", both)),
                max_length=512,
                max_prompt_length=256,
                lora_r=c.lora_r,
                lora_alpha=c.lora_alpha,
                lora_top_layers=c.lora_top_layers,
                learning_rate=c.rm_learning_rate,
                epochs=c.rm_epochs,
                per_device_batch_size=min(8, size),
                gradient_checkpointing=False,
                seed=c.seed,
                output_dir=str(d),
                report_to=["none"],
                resume_from="latest",  # an interrupted proxy continues from its last checkpoint
                cpu=True,
            )
            rm = train_rm(rcfg)
            info = {"size": size, "eval_accuracy": rm.evals[-1].get("eval_accuracy") if rm.evals else None}
            (d / "proxy.json").write_text(json.dumps(info, indent=2))
        info = json.loads((d / "proxy.json").read_text()) | {"dir": str(d / "final"), "cache_hit": cached}
        write_jsonl(st.dir / "proxies" / f"rm{size}.jsonl", [info])
        print(f"[study] proxy rm={size}: {'cached' if cached else 'trained'} in {d}")
        out[f"rm={size}"] = (size, str(d / "final"))
    return out


def run_bon(st: Study) -> None:
    c = st.cfg
    model, tok = st.model()
    proxies = _proxies(st, model, tok)
    ns = list(range(1, c.n_max + 1))
    pool = None
    for label, (size, rm_dir) in proxies.items():
        run = f"bon {label}"
        todo = [n for n in ns if not st.is_done("bon", run, n)]
        if not todo:
            continue
        if pool is None:  # base samples, cached by the model fingerprint: the same pool for every proxy
            pool = evaluate_policy(model, tok, st.eval_prompts, st.params(c.pool), st.gold, None, False, "pool")
        proxy = load_reward(rm_dir)
        gens = pool.result
        texts = [st.eval_prompts[i // c.pool] for i in range(len(gens.texts))]
        pv = np.asarray(proxy(texts, gens.texts, gens.finished), dtype=np.float64).reshape(pool.gold.shape)
        shape = pool.gold.shape
        values = {"gold": pool.gold, "proxy": pv, "length": np.asarray(gens.lengths, dtype=float).reshape(shape)}
        values["eos"] = np.asarray(gens.finished, dtype=float).reshape(shape)
        values |= {f"term:{k}": v for k, v in pool.terms.items()}
        for n, row in bon_curve(pv, values, todo).items():
            st.add(
                StudyPoint(
                    mode="bon",
                    method="base" if n == 1 else "bon",
                    run=run,
                    step=n,
                    n=n,
                    size=size,
                    kl=kl_bon(n),
                    sqrt_kl=0.0,
                    kl_kind="kl_bon_upper_bound",
                    gold=row["gold"][0],
                    gold_se=row["gold"][1],
                    proxy=row["proxy"][0],
                    proxy_se=row["proxy"][1],
                    gold_terms={k[5:]: v[0] for k, v in row.items() if k.startswith("term:")},
                    length=row["length"][0],
                    eos_share=row["eos"][0],
                    n_prompts=shape[0],
                    n_samples=shape[0] * shape[1],
                    checkpoint=rm_dir,
                )
            )


def run_rl(st: Study) -> None:
    c = st.cfg
    model, tok = st.model()
    proxies = _proxies(st, model, tok)
    prompts_file = write_jsonl(st.dir / "rl_prompts.jsonl", [{"prompt": p} for p in st.train_prompts])
    targets = top_layer_targets(model, c.lora_top_layers)
    for label, (size, rm_dir) in proxies.items():
        proxy = load_reward(rm_dir)
        for algo in c.algos:
            run = f"{algo} {label}"
            _base_point(st, model, tok, "rl", run, proxy, size=size)
            run_dir = st.dir / "runs" / f"{algo}_{label.replace('=', '')}"
            for step in checkpoint_steps(c.rl_steps, c.checkpoints):
                if st.is_done("rl", run, step):
                    continue
                policy, ptok = st.model()
                rcfg = RLConfig(
                    model=c.model,
                    prompts=str(prompts_file),
                    reward=rm_dir,
                    track_gold=False,  # the study's gold is evaluated on held-out prompts at each checkpoint
                    algo=algo,
                    prompts_per_step=c.rl_prompts_per_step,
                    max_new_tokens=c.max_new_tokens,
                    max_prompt_length=512,
                    lora_r=c.lora_r,
                    lora_alpha=c.lora_alpha,
                    lora_target=targets,
                    learning_rate=c.rl_learning_rate,
                    max_steps=c.rl_steps,
                    stop_after_steps=step if step < c.rl_steps else None,
                    resume_from=_resume(run_dir, step),
                    seed=c.seed,
                    output_dir=str(run_dir),
                    report_to=["none"],
                    cpu=True,
                )
                if c.kl_coef is not None:
                    rcfg.kl_coef = c.kl_coef
                res = rl(rcfg, model=policy, tokenizer=ptok, reward=proxy)
                ev = evaluate_policy(res.model, ptok, st.eval_prompts, st.params(c.samples), st.gold, proxy, name=run)
                point = _point(st, ev, mode="rl", method=algo, run=run, step=step, size=size)
                last = res.metrics[-1] if res.metrics else {}
                point.train_proxy, point.train_kl = last.get("reward"), last.get("kl_init_seq")
                point.checkpoint = str(run_dir / "checkpoints" / f"step_{step}")
                st.add(point)


LOOPS = {"daa": run_daa, "bon": run_bon, "rl": run_rl}


def run_study(cfg: StudyConfig, gold=None) -> dict:
    """Run (or resume) the study of ``cfg.mode``; ``gold`` may be passed in (tests). Returns the report's paths."""
    cfg.validate()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    st = Study(cfg, gold)
    save_config(cfg, st.dir)
    LOOPS[cfg.mode](st)
    return write_study_report(st.dir, cfg.mode, list(st.done.values()), n_boot=cfg.n_boot, seed=cfg.seed)


def main(cfg: StudyConfig) -> dict:
    out = run_study(cfg)
    print(f"report: {out['html']}")
    return out
