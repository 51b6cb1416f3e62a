"""One RLOO step (generation + update) of alignlab vs TRL's RLOOTrainer, measured side by side (CPU, LoRA).

    .venv/bin/python bench/bench_rloo.py [--steps 5] [--warmup 1] [--prompts-per-step 8] [--max-new-tokens 64]
                                         [--per-device-batch 8] [--threads 2] [--repeats 1]
                                         [--configs alignlab,trl,hf_generate] [--out runs/bench/rloo]

Each configuration runs in its own child process (peak memory measured separately: a 20 ms RSS-sampling thread in
the child, reported for the timed steps, plus the child's ru_maxrss from ``os.wait4``):

* ``alignlab``     ``alignlab.recipes.rl.rl(RLConfig(algo="rloo", ...), model, tokenizer, FunctionReward(...))``;
                   its phase split is read from the run's ``metrics.jsonl`` (time/rollout_s, time/reward_s,
                   time/score_s, time/update_s; rollout_tokens_per_s).
* ``trl``          TRL ``RLOOTrainer`` (``peft_config=LoraConfig(...)``, a plain reward function, no vLLM), timed
                   by wrapping its ``_generate``, ``_calculate_rewards``, ``_generate_and_score_completions``,
                   ``_prepare_inputs``, ``training_step`` and ``_maybe_log_save_evaluate`` in a subclass; TRL's
                   own ``profiling_context`` timings (which it only sends to wandb/mlflow/trackio) are collected too.
* ``hf_generate``  the baseline for generation: plain ``model.generate`` on the same prompt rows (prompt-major,
                   k copies of each prompt, left-padded), same sampling settings, same number of new tokens, once on
                   the bare model and once with a fresh (unmerged) LoRA adapter as both trainers sample with.

Same on both sides: SmolLM2-135M-Instruct, fp32 weights, no autocast; LoRA r 16, alpha 32, dropout 0, all linear
layers but the LM head (reference = the base model with the adapter off, no second copy, in both); the embedded
task's train prompts (``alignlab.rollout.rl_setup.load_prompt_texts("task:train")``, i.e.
``load_task_prompts("train")`` instructions, categories interleaved), the same prompts in the same steps (alignlab's
own per-step draw; TRL gets them as a dataset in that order with ``shuffle_dataset=False``), chat-templated into the
same token ids (checked in the parent and again inside TRL's ``_generate``); k = 2 samples per prompt; temperature
1.0, top-k off, top-p 1.0; the same max new tokens; stop token <|im_end|> (alignlab's stop ids = TRL's eos ids,
checked); the same reward (``reward_of`` below: a cheap deterministic function of the response text); RLOO with
k1 KL summed per sequence in the reward, beta 0.05, leave-one-out baseline, one ratio per sequence clipped at 0.2,
mean over sequences; one update per step (num_iterations 1, one mini-batch); micro-batches of
``--per-device-batch`` rows (TRL: per_device_train_batch_size, gradient accumulation = rows / micro-batch); torch
AdamW, the same lr, weight decay 0, constant lr, grad-norm clipping 1.0; gradient checkpointing off (TRL's default is
on: switched off); the same number of torch threads.

Not the same (by design of each library; docs/benchmarks.md "RLOO step vs TRL's RLOOTrainer"): the sampled tokens
(each library seeds its own sampler, so response lengths differ: reported per run); alignlab asks ``generate`` for
the processed scores of every step (``output_scores``, [rows, new tokens, vocab] fp32) to check the sampler against
the trainer before the first update; TRL scores with its fused chunked LM-head + log-prob kernel over the
completion positions and computes the entropy in the training forward; TRL's Trainer logging.

steps/s (the headline) = timed steps / wall time from the start of the first timed step to the end of the last
(the first ``--warmup`` steps are excluded; model loading and the final checkpoint are not in it). The split per
step: generation (alignlab: time/rollout_s = prompt encoding + ``generate`` + sampler log-probs + decoding; TRL:
``_generate`` = prompt tokenization + ``generate`` + decoding + its length metrics), reward, scoring (policy and
reference log-probs of the rollouts, advantages: alignlab time/score_s; TRL ``_generate_and_score_completions``
minus generation and reward), update (forward + backward of every micro-batch, clipping, optimizer step; alignlab
time/update_s; TRL: step wall time minus ``_prepare_inputs`` minus its logging) and other (the rest: logging, the
step's bookkeeping). generation tokens/s = response tokens (up to and including the first stop token) / generation
time; decode positions/s = rows x new positions of ``generate`` / time inside ``generate`` (what the sampler really
computed: ``generate`` runs until the longest row stops).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import benchlib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALIAS = "smollm2-135m-instruct"
CONFIGS = ("alignlab", "trl", "hf_generate")
TRAINERS = ("alignlab", "trl")
K = 2  # samples per prompt
BETA = 0.05
CLIP = 0.2
LORA_R, LORA_ALPHA = 16, 32
MAX_PROMPT_LENGTH = 256
SEED = 42
CPU_FLAGS = ("sse4_2", "fma", "avx", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16")
PHASES = ("generation", "reward", "scoring", "update", "other")


def reward_of(text: str) -> float:
    """The benchmark's reward, the same on both sides: deterministic, text only, ~µs per response (share of
    distinct words minus a penalty for straying from 30 words)."""
    words = text.split()
    return len(set(words)) / (len(words) + 1) - abs(len(words) - 30) / 60


def trl_reward(prompts, completions, **kwargs) -> list[float]:
    """``reward_of`` as a TRL reward function (conversational completions; alignlab strips the decoded text)."""
    return [reward_of((c[-1]["content"] if isinstance(c, list) else c).strip()) for c in completions]


# ----------------------------------------------------------------------------- shared helpers


class StepClock:
    """Per-step wall and CPU time, and named phase times / counts recorded into the step that is open.

    The RSS window opens at the start of the first timed step and closes at the end of the last one."""

    def __init__(self, sampler: benchlib.RSSSampler | None, warmup: int, n_steps: int):
        self.sampler, self.warmup, self.n_steps = sampler, warmup, n_steps
        self.steps: list[dict] = []
        self.cur: dict | None = None
        self._depth: dict[str, int] = defaultdict(int)
        self._starts: dict[str, list[float]] = defaultdict(list)

    def begin(self) -> None:
        if self.cur is not None:
            raise RuntimeError(f"step {len(self.steps)} began before step {len(self.steps) - 1} ended")
        if len(self.steps) == self.warmup and self.sampler is not None:
            self.sampler.open_window()
        self.cur = {
            "begin": time.perf_counter(),
            "cpu_begin": time.process_time(),
            "phases": defaultdict(float),
            "counts": defaultdict(float),
        }
        self.steps.append(self.cur)

    def end(self) -> None:
        self.cur["end"], self.cur["cpu_end"] = time.perf_counter(), time.process_time()
        self.cur = None
        if len(self.steps) == self.n_steps and self.sampler is not None:
            self.sampler.close_window()

    def add(self, name: str, value: float) -> None:
        if self.cur is not None:
            self.cur["counts"][name] += value

    def add_time(self, name: str, seconds: float) -> None:
        if self.cur is not None:
            self.cur["phases"][name] += seconds

    def start(self, name: str) -> None:
        self._starts[name].append(time.perf_counter())

    def stop(self, name: str) -> None:
        self.add_time(name, time.perf_counter() - self._starts[name].pop())

    def wrap(self, name: str, fn):
        """``fn`` timed into phase ``name`` (nested calls of the same phase count once)."""

        def inner(*a, **k):
            self._depth[name] += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._depth[name] -= 1
                if self._depth[name] == 0:
                    self.add_time(name, time.perf_counter() - t0)

        return inner


def _install_common_probes(clock: StepClock) -> None:
    """Timed the same way in every child: the time inside ``generate`` (and what it computed), backward, clipping
    and the optimizer step (transformers, accelerate and torch, used by both libraries)."""
    from transformers.generation.utils import GenerationMixin

    orig_generate = GenerationMixin.generate
    timed_generate = clock.wrap("inside model.generate", orig_generate)

    def generate(self, *a, **k):
        out = timed_generate(self, *a, **k)
        ids = k.get("input_ids", a[0] if a else None)
        seq = getattr(out, "sequences", out)
        if ids is not None and clock._depth["inside model.generate"] == 0:
            new = seq.shape[1] - ids.shape[1]
            clock.add("decode positions", seq.shape[0] * new)
            clock.add("generate rows", seq.shape[0])
            clock.add("new positions", new)
        return out

    GenerationMixin.generate = generate
    benchlib.install_common_probes(clock)


def _child_common(args) -> tuple[benchlib.RSSSampler, StepClock]:
    def clock(sampler: benchlib.RSSSampler) -> StepClock:
        return StepClock(sampler, args.warmup, args.warmup + args.steps)

    return benchlib.child_common(args.threads, SEED, clock, _install_common_probes)


def _rows(args) -> int:
    return args.prompts_per_step * K


def _micro(args) -> int:
    b = args.per_device_batch or min(8, _rows(args))
    if _rows(args) % b:
        raise SystemExit(f"--per-device-batch {b} must divide the rows per step ({_rows(args)} = prompts x {K})")
    return b


def _n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- parent: prompts


def prepare_data(args, path: Path) -> dict:
    """alignlab's prompts per step (its own seeded draw), their ids as alignlab encodes them, checked equal to the
    ids TRL 1.16's ``_tokenize_prompts`` makes (``apply_chat_template`` of the batch of conversations)."""
    from transformers import AutoTokenizer

    from alignlab.data.tokenize import stop_ids
    from alignlab.models.loading import resolve_model_path
    from alignlab.rollout.rl_rollout import encode_prompts
    from alignlab.rollout.rl_setup import load_prompt_texts, prompts_for_step

    tok = AutoTokenizer.from_pretrained(resolve_model_path(ALIAS))
    prompts = load_prompt_texts("task:train")
    n = args.warmup + args.steps
    step_prompts = [prompts_for_step(prompts, args.prompts_per_step, s, 0, 1, SEED) for s in range(n)]
    step_ids = [encode_prompts(tok, sp, MAX_PROMPT_LENGTH) for sp in step_prompts]
    for sp, ids in zip(step_prompts, step_ids):
        conv = [[{"role": "user", "content": p}] for p in sp]
        trl_ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True)
        if [list(x) for x in trl_ids["input_ids"]] != ids:
            raise SystemExit("alignlab and TRL chat-template the prompts into different ids")
    data = {
        "n_prompts": len(prompts),
        "step_prompts": step_prompts,
        "prompt_ids": step_ids,
        "stop_ids": stop_ids(tok),
        "mean_prompt_tokens": statistics.mean(len(x) for ids in step_ids for x in ids),
    }
    path.write_text(json.dumps(data))
    return data


# ----------------------------------------------------------------------------- children


def run_alignlab(args, data: dict) -> dict:
    sampler, clock = _child_common(args)
    import alignlab.recipes.rl as R
    from alignlab.models.loading import load_model_and_tokenizer
    from alignlab.rewards import FunctionReward
    from alignlab.training.metrics import MetricsLogger

    n_steps = args.warmup + args.steps
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(ALIAS, dtype="float32")
    out_dir = Path(tempfile.mkdtemp(prefix="bench_rloo_alignlab_"))
    cfg = R.RLConfig(
        model=ALIAS,
        prompts="task:train",
        reward="bench-function",  # the object passed to rl() below
        track_gold=False,
        dtype="float32",
        algo="rloo",
        group_size=K,
        prompts_per_step=args.prompts_per_step,
        max_new_tokens=args.max_new_tokens,
        max_prompt_length=MAX_PROMPT_LENGTH,
        temperature=1.0,
        kl_coef=BETA,
        kl_estimator="k1",
        cliprange=CLIP,
        num_ppo_epochs=1,
        num_mini_batches=1,
        per_device_batch_size=_micro(args),
        lora=True,
        lora_r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_target="all-linear",
        learning_rate=args.lr,
        max_grad_norm=1.0,
        max_steps=n_steps,
        gradient_checkpointing=False,
        seed=SEED,
        output_dir=str(out_dir),
        report_to="none",
        cpu=True,
    )
    seen: list[list[str]] = []
    orig_pfs, orig_log = R.prompts_for_step, MetricsLogger.log

    def prompts_for_step(*a, **k):  # the first thing of every step of the loop
        clock.begin()
        res = orig_pfs(*a, **k)
        seen.append(list(res))
        return res

    def log(self, record):  # the step's metrics row: the last thing of the step
        out = orig_log(self, record)
        clock.end()
        return out

    R.prompts_for_step, MetricsLogger.log = prompts_for_step, log
    reward = FunctionReward(lambda prompt, response: reward_of(response), name="bench_reward")
    setup = {"t0": t0}
    result = R.rl(cfg, model, tok, reward)
    sampler.stop()
    if seen != data["step_prompts"]:
        raise SystemExit("alignlab sampled other prompts than the parent computed")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "time/rollout_s" in r]
    if len(rows) != n_steps:
        raise SystemExit(f"alignlab logged {len(rows)} steps, expected {n_steps}")
    for st, m in zip(clock.steps, rows):
        ph = st["phases"]
        ph["generation"] = m["time/rollout_s"]
        ph["reward"] = m["time/reward_s"]
        ph["scoring"] = m["time/score_s"]
        ph["update"] = m["time/update_s"]
        st["counts"]["response tokens"] = m["rollout_tokens_per_s"] * m["time/rollout_s"]
        st["metrics"] = {
            "reward": m["reward"],
            "response_length": m["response_length"],
            "eos_share": m.get("eos_share"),
            "kl_ref_seq": m.get("kl_ref_seq"),
            "logged step_s": m["time/step_s"],
        }
    shutil.rmtree(out_dir, ignore_errors=True)
    return _summary(
        args,
        "alignlab",
        clock,
        sampler,
        setup_s=clock.steps[0]["begin"] - setup["t0"],
        extra={"n_trainable": _n_trainable(result.model), "metrics_source": "metrics.jsonl"},
    )


def run_trl(args, data: dict) -> dict:
    sampler, clock = _child_common(args)
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer
    from trl.extras import profiling

    from alignlab.models.loading import load_model_and_tokenizer

    if trl.__version__ != "1.16.0":
        print(f"warning: bench written against trl 1.16.0, running {trl.__version__}", file=sys.stderr)
    n_steps = args.warmup + args.steps
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(ALIAS, dtype="float32")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for sp in data["step_prompts"] for p in sp])
    out_dir = Path(tempfile.mkdtemp(prefix="bench_rloo_trl_"))
    micro = _micro(args)
    cfg = RLOOConfig(
        **benchlib.trl_training_args(out_dir, args.lr, n_steps, SEED),
        bf16=False,  # TRL's default is True (bf16 autocast, also on CPU)
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=_rows(args) // micro,  # steps_per_generation follows: one generation per step
        num_generations=K,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
        beta=BETA,
        num_iterations=1,
        epsilon=CLIP,
        normalize_advantages=False,
        log_completions=False,
        shuffle_dataset=False,  # the dataset is already in alignlab's per-step order
    )
    peft_config = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    gens: list[dict] = []

    class TimedRLOOTrainer(RLOOTrainer):
        def _generate(self, prompts):
            out = clock.wrap("generation", super()._generate)(prompts)
            prompt_ids, completion_ids, _ = out
            step = len(gens)
            expected = [ids for ids in data["prompt_ids"][step] for _ in range(K)]
            if [list(x) for x in prompt_ids] != expected:
                raise SystemExit(f"TRL generated from other prompt ids than alignlab at step {step + 1}")
            lengths = [len(c) for c in completion_ids]
            clock.add("response tokens", sum(lengths))
            gens.append({"response_length": statistics.mean(lengths)})
            return out

        def _calculate_rewards(self, *a, **k):
            return clock.wrap("reward", super()._calculate_rewards)(*a, **k)

        def _generate_and_score_completions(self, *a, **k):
            return clock.wrap("generate+score", super()._generate_and_score_completions)(*a, **k)

        def _prepare_inputs(self, *a, **k):
            return clock.wrap("_prepare_inputs", super()._prepare_inputs)(*a, **k)

        def training_step(self, *a, **k):
            return clock.wrap("training_step", super().training_step)(*a, **k)

        def _maybe_log_save_evaluate(self, *a, **k):
            out = clock.wrap("logging", super()._maybe_log_save_evaluate)(*a, **k)
            if clock.cur is not None:  # the last thing of an optimizer step (also called once at epoch end)
                clock.end()
            return out

    class StepBegin(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            clock.begin()

    # TRL's own timings (profiling_context / profiling_decorator) go to wandb/mlflow/trackio only: collect them
    profiling.ProfilingContext._log_metrics = lambda self, d: clock.add_time(f"trl: {self.name.split('.', 1)[-1]}", d)
    trainer = TimedRLOOTrainer(
        model=model,
        reward_funcs=trl_reward,
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_config,
    )
    if sorted(trainer.eos_token_ids) != sorted(data["stop_ids"]):
        raise SystemExit(f"TRL stops at {trainer.eos_token_ids}, alignlab at {data['stop_ids']}")
    if trainer.ref_model is not None:
        raise SystemExit("TRL loaded a reference copy; expected the adapter-off reference")
    trainer.add_callback(StepBegin())
    trainer.train()
    sampler.stop()
    if len(clock.steps) != n_steps or len(gens) != n_steps:
        raise SystemExit(f"TRL ran {len(clock.steps)} steps / {len(gens)} generations, expected {n_steps}")
    logs = [h for h in trainer.state.log_history if "reward" in h]
    for i, st in enumerate(clock.steps):
        ph = st["phases"]
        gen, rew = ph.get("generation", 0.0), ph.get("reward", 0.0)
        ph["scoring"] = ph.get("generate+score", 0.0) - gen - rew
        ph["update"] = (st["end"] - st["begin"]) - ph.get("_prepare_inputs", 0.0) - ph.get("logging", 0.0)
        st["metrics"] = {
            "reward": logs[i]["reward"] if i < len(logs) else None,
            "response_length": gens[i]["response_length"],
            "kl": logs[i].get("kl") if i < len(logs) else None,
            "logged step_time": logs[i].get("step_time") if i < len(logs) else None,
        }
    shutil.rmtree(out_dir, ignore_errors=True)
    return _summary(
        args,
        "trl",
        clock,
        sampler,
        setup_s=clock.steps[0]["begin"] - t0,
        extra={
            "n_trainable": _n_trainable(trainer.model),
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "steps_per_generation": cfg.steps_per_generation,
            "generation_batch_size": cfg.generation_batch_size,
        },
    )


def run_hf_generate(args, data: dict) -> dict:
    """Plain ``model.generate`` over the same prompt rows per step: the bare model, then with a fresh LoRA adapter."""
    sampler, clock = _child_common(args)
    clock.sampler = None  # one RSS window over both variants: the first timed step of "plain" to the last of "lora"
    import torch
    from transformers import GenerationConfig

    from alignlab.models.loading import load_model_and_tokenizer
    from alignlab.models.lora import apply_lora
    from alignlab.rollout.rl_rollout import response_mask_of

    n_steps = args.warmup + args.steps
    model, tok = load_model_and_tokenizer(ALIAS, dtype="float32")
    stops = data["stop_ids"]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gen_cfg = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=args.max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id,
        use_cache=True,
    )
    variants = {}
    for variant in ("plain", "lora"):
        if variant == "lora":
            model = apply_lora(model, r=LORA_R, alpha=LORA_ALPHA, dropout=0.0, target_modules="all-linear")
        model.eval()
        clock.steps = []
        for s in range(n_steps):
            if variant == "plain" and s == args.warmup:
                sampler.open_window()
            clock.begin()
            t = time.perf_counter()
            rows = [ids for ids in data["prompt_ids"][s] for _ in range(K)]
            P = max(len(r) for r in rows)
            ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), P), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, P - len(r) :] = torch.tensor(r)
                mask[i, P - len(r) :] = 1
            torch.manual_seed(SEED * 1_000_003 + s * 1009)  # alignlab's per-step sampling seed
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
            resp_mask, _ = response_mask_of(out[:, P:], stops)
            clock.add("response tokens", float(resp_mask.sum()))
            clock.add_time("generation", time.perf_counter() - t)
            clock.cur["metrics"] = {"response_length": float(resp_mask.sum(-1).float().mean())}
            clock.end()
        if variant == "lora":
            sampler.close_window()
        variants[variant] = _summary(args, f"hf_generate ({variant})", clock, sampler, setup_s=0.0, extra={})
    sampler.stop()
    res = dict(variants["plain"])
    res["name"] = "hf_generate"
    res["variants"] = variants
    return res


def _summary(args, name: str, clock: StepClock, sampler: benchlib.RSSSampler, setup_s: float, extra: dict) -> dict:
    w, n = args.warmup, args.steps
    steps = clock.steps
    assert len(steps) == w + n, (len(steps), w + n)
    timed = steps[w:]
    wall = timed[-1]["end"] - timed[0]["begin"]
    cpu = timed[-1]["cpu_end"] - timed[0]["cpu_begin"]
    step_s = [s["end"] - s["begin"] for s in timed]
    names = sorted({k for s in timed for k in s["phases"]})
    phases = {k: sum(s["phases"].get(k, 0.0) for s in timed) / n for k in names}
    main = [p for p in PHASES[:-1] if p in phases]
    if main:
        phases["other"] = statistics.mean(d - sum(s["phases"].get(p, 0.0) for p in main) for s, d in zip(timed, step_s))
    counts = {k: sum(s["counts"].get(k, 0.0) for s in timed) for k in sorted({k for s in timed for k in s["counts"]})}
    gen_s = sum(s["phases"].get("generation", 0.0) for s in timed)
    inside_s = sum(s["phases"].get("inside model.generate", 0.0) for s in timed)
    out = {
        "name": name,
        "steps": n,
        "warmup": w,
        "step_s": step_s,
        "step_cpu_s": [s["cpu_end"] - s["cpu_begin"] for s in timed],
        "timed_s": wall,
        "timed_cpu_s": cpu,
        "steps_per_s": n / wall,
        "steps_per_s_median_step": statistics.median(1 / d for d in step_s),
        "steps_per_cpu_s": n / cpu,
        "phases_per_step_s": phases,
        "counts_per_step": {k: v / n for k, v in counts.items()},
        "gen_tokens_per_s": counts.get("response tokens", 0.0) / gen_s if gen_s else None,
        "decode_positions_per_s": counts.get("decode positions", 0.0) / inside_s if inside_s else None,
        "response_tokens_per_s_inside_generate": counts.get("response tokens", 0.0) / inside_s if inside_s else None,
        "per_step_metrics": [s.get("metrics", {}) for s in steps],
        "all_step_s": [s["end"] - s["begin"] for s in steps],
        "setup_s": setup_s,
        **benchlib.memory_summary(sampler),
    }
    out.update(extra)
    return out


# ----------------------------------------------------------------------------- parent


PACKAGES = ("torch", "transformers", "trl", "accelerate", "peft")


def machine_info(args) -> dict:
    info = benchlib.machine_info(args.threads, CPU_FLAGS, PACKAGES, avx512_flags=True)
    info["loadavg_start"] = benchlib.loadavg()
    return info


def run_child(args, name: str, data_path: Path, workdir: Path, rep: int) -> dict:
    child_args = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    child_args += ["--prompts-per-step", str(args.prompts_per_step), "--max-new-tokens", str(args.max_new_tokens)]
    child_args += ["--per-device-batch", str(_micro(args)), "--threads", str(args.threads), "--lr", str(args.lr)]
    res, measured, log = benchlib.run_child(__file__, name, data_path, workdir, rep, child_args, args.threads)
    warnings = [
        ln.strip()
        for ln in log.read_text(errors="replace").splitlines()
        if "warn" in ln.lower() and not ln.strip().startswith("warnings.warn(")
    ]
    res.update(log_warnings=list(dict.fromkeys(warnings))[:20], **measured, repeat=rep)
    return res


def _f(x, fmt=".2f") -> str:
    return "—" if x is None else format(x, fmt)


MEDIAN_KEYS = ("steps_per_s", "steps_per_s_median_step", "steps_per_cpu_s", "rss_peak_steps_mib", "ru_maxrss_mib")
MEDIAN_KEYS += ("gen_tokens_per_s", "decode_positions_per_s")


def report(args, info: dict, data: dict, results: list[dict]) -> str:
    flags, missing = benchlib.flag_lists(info, CPU_FLAGS)
    rows = _rows(args)
    lines = [
        benchlib.machine_line(info, PACKAGES) + f" Load average at start: {info['loadavg_start']}.",
        "",
        f"CPU flags: {flags} (absent: {missing or '—'}); all avx512*: {' '.join(info['avx512_flags']) or 'none'}; "
        f"torch CPU capability {info['torch_cpu_capability']}.",
        "",
        f"Settings: SmolLM2-135M-Instruct fp32, LoRA r {LORA_R} / alpha {LORA_ALPHA} / all-linear (reference = "
        f"adapter off); RLOO, k = {K}, beta {BETA}, clip {CLIP}, one update per step; {args.prompts_per_step} "
        f"prompts x {K} = {rows} rows per step, micro-batches of {_micro(args)} rows; max new tokens "
        f"{args.max_new_tokens}, temperature 1.0; AdamW lr {args.lr:g}, constant, clip 1.0; gradient checkpointing "
        f"off; {args.warmup} warm-up step(s) excluded + {args.steps} timed step(s); {args.repeats} repeat(s), runs "
        f"interleaved. Prompts: the task's {data['n_prompts']} train prompts, mean {data['mean_prompt_tokens']:.0f} "
        "tokens chat-templated.",
        "",
        "| run | **steps/s** | s/step mean (min–max) | steps per CPU-s | generation s | reward s | scoring s "
        "| update s | other s | gen tokens/s | response tokens/step | peak RSS in steps (MiB) | ru_maxrss (MiB) "
        "| load avg before → after |",
        "|" + "---|" * 14,
    ]
    for r in [r for r in results if r["name"] in TRAINERS]:
        d, ph = r["step_s"], r["phases_per_step_s"]
        lines.append(
            f"| {r['name']} | **{r['steps_per_s']:.4f}** | {statistics.mean(d):.1f} ({min(d):.1f}–{max(d):.1f}) | "
            f"{r['steps_per_cpu_s']:.4f} | "
            + " | ".join(f"{ph.get(p, 0.0):.2f}" for p in PHASES)
            + f" | {_f(r['gen_tokens_per_s'], '.1f')} | {r['counts_per_step'].get('response tokens', 0.0):.0f} | "
            f"{r['rss_peak_steps_mib']:.0f} | {r['ru_maxrss_mib']:.0f} | {r['loadavg_before']} → {r['loadavg_after']} |"
        )
    med = benchlib.median_by_config(results, CONFIGS, MEDIAN_KEYS, PHASES)
    if "alignlab" in med and "trl" in med:
        a, o = med["alignlab"], med["trl"]

        def x(k):  # a ratio of two times under 5 ms is noise
            return "—" if not a[k] or not o[k] or (k in PHASES and max(a[k], o[k]) < 5e-3) else f"x{a[k] / o[k]:.2f}"

        lines += [
            "",
            f"- alignlab / trl (medians over repeats): **steps/s {x('steps_per_s')}** (median step "
            f"{x('steps_per_s_median_step')}, per CPU-s {x('steps_per_cpu_s')}); generation tokens/s "
            f"{x('gen_tokens_per_s')}, decode positions/s inside generate {x('decode_positions_per_s')}; peak RSS in "
            f"steps {x('rss_peak_steps_mib')}, ru_maxrss {x('ru_maxrss_mib')}",
            "- time per step, alignlab / trl: " + ", ".join(f"{p} {x(p)}" for p in PHASES),
        ]
    lines += [
        "",
        "Generation (per timed step; response tokens = up to and including the first stop token; decode positions "
        "= rows x new positions that `generate` ran):",
        "",
        "| run | generation s | inside model.generate s | new positions | response tokens | decode positions "
        "| response tokens/s (generation) | response tokens/s (inside generate) | decode positions/s (inside generate) "
        "| mean response length |",
        "|" + "---|" * 10,
    ]
    gen_rows = []
    for r in results:
        gen_rows += list(r["variants"].values()) if "variants" in r else [r]
    for r in gen_rows:
        ph, c = r["phases_per_step_s"], r["counts_per_step"]
        lengths = [m.get("response_length") for m in r["per_step_metrics"][r["warmup"] :]]
        lengths = [v for v in lengths if v is not None]
        lines.append(
            f"| {r['name']} | {ph.get('generation', 0.0):.2f} | {ph.get('inside model.generate', 0.0):.2f} | "
            f"{c.get('new positions', 0.0):.0f} | {c.get('response tokens', 0.0):.0f} | "
            f"{c.get('decode positions', 0.0):.0f} | {_f(r['gen_tokens_per_s'], '.1f')} | "
            f"{_f(r['response_tokens_per_s_inside_generate'], '.1f')} | {_f(r['decode_positions_per_s'], '.1f')} | "
            f"{_f(statistics.mean(lengths) if lengths else None, '.1f')} |"
        )
    lines += ["", "Phase detail (s per timed step; TRL's own profiling timings prefixed `trl:`):", ""]
    for r in [r for r in results if r["name"] in TRAINERS]:
        ph = ", ".join(f"{k} {v:.2f}" for k, v in r["phases_per_step_s"].items())
        lines.append(f"- {r['name']} (repeat {r['repeat'] + 1}): {ph}")
    warned = [(r["name"], w) for r in results for w in r.get("log_warnings", [])]
    if warned:
        lines += ["", "Warnings in the children's logs:", ""]
        lines += [f"- {name}: `{w[:300]}`" for name, w in dict.fromkeys(warned)]
    trainable = {r["name"]: r["n_trainable"] for r in results if r["name"] in TRAINERS}
    if trainable:
        same = "equal" if len(set(trainable.values())) == 1 else "**NOT equal**"
        lines += ["", "Trainable parameters: " + ", ".join(f"{k} {v}" for k, v in trainable.items()) + f" ({same})."]
    lines += ["", "Per-step sanity (all steps, warm-up included): reward, mean response length:", ""]
    for r in [r for r in results if r["name"] in TRAINERS]:
        ms = r["per_step_metrics"]
        lines.append(
            f"- {r['name']} (repeat {r['repeat'] + 1}): "
            + "; ".join(f"{_f(m.get('reward'), '.3f')}, {_f(m.get('response_length'), '.1f')}" for m in ms)
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--per-device-batch", type=int, default=0, help="rows per micro-batch (0: min(8, rows per step))")
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repetitions of every configuration")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--out", default=None, help="write <out>.json and <out>.md (a .json/.md suffix is dropped)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")

    if args.child:
        data = json.loads(Path(args.data).read_text())
        run = {"alignlab": run_alignlab, "trl": run_trl, "hf_generate": run_hf_generate}[args.child]
        Path(args.result).write_text(json.dumps(run(args, data)))
        return

    configs = benchlib.parse_configs(args.configs, CONFIGS)
    _micro(args)
    info = machine_info(args)
    print(json.dumps({k: v for k, v in info.items() if k != "cpu_flags_all"}, indent=1))
    workdir = Path(tempfile.mkdtemp(prefix="bench_rloo_"))
    data_path = workdir / "data.json"
    data = prepare_data(args, data_path)
    print(f"{len(data['step_prompts'])} steps x {args.prompts_per_step} prompts; stop ids {data['stop_ids']}")
    results = []
    for rep in range(args.repeats):
        for name in configs:
            print(f"[{time.strftime('%H:%M:%S')}] {name} (repeat {rep + 1}/{args.repeats}) ...", flush=True)
            r = run_child(args, name, data_path, workdir, rep)
            print(
                f"    {r['steps_per_s']:.4f} steps/s ({statistics.mean(r['step_s']):.1f} s/step), generation "
                f"{_f(r['gen_tokens_per_s'], '.1f')} tokens/s, peak RSS (steps) {r['rss_peak_steps_mib']:.0f} MiB, "
                f"ru_maxrss {r['ru_maxrss_mib']:.0f} MiB; child {r['child_wall_s']:.0f} s",
                flush=True,
            )
            results.append(r)
    trainable = {r["name"]: r["n_trainable"] for r in results if r["name"] in TRAINERS}
    if len(set(trainable.values())) > 1:
        print(f"warning: different numbers of trainable parameters: {trainable}", file=sys.stderr)
    text = report(args, info, data, results)
    print()
    print(text)
    if args.out:
        stem = Path(args.out)
        if stem.suffix in (".json", ".md"):
            stem = stem.with_suffix("")
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(text + "\n")
        payload = {"machine": info, "args": vars(args), "data": data, "results": results}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        print(f"\nwrote {stem.with_suffix('.md')} and {stem.with_suffix('.json')}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
