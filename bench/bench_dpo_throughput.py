"""DPO training throughput of alignlab vs TRL's DPOTrainer, measured side by side (CPU, full fine-tuning).

    .venv/bin/python bench/bench_dpo_throughput.py [--steps 5] [--warmup 1] [--batch 4] [--max-length 256]
                                                    [--threads 2] [--repeats 1] [--configs alignlab,trl-fastest]
                                                    [--bf16] [--profile] [--markdown out.md] [--json out.json]

Each configuration runs in its own child process (peak memory measured separately: a 20 ms RSS-sampling
thread in the child, reported for the timed steps, plus the child's ru_maxrss from ``os.wait4``):

* ``alignlab``       ``alignlab.recipes.train.train(TrainConfig(lora=False, ...), model, tokenizer, pairs)`` with its
                     defaults: the packed shared-prompt forward (``packing=shared_prompt``: one row per pair
                     [prompt, chosen, rejected]); the reference log-probs are precomputed once inside ``train``
                     (timed separately).
* ``alignlab-dense`` the same with ``packing=dense`` (several pairs per row: least padding).
* ``alignlab-off``   the same with ``packing=off`` (two rows per pair: the layout before packing, and TRL's).
* ``trl``            TRL ``DPOTrainer`` with its default reference handling: a second copy of the model, one
                     reference forward per step.
* ``trl-precompute`` TRL ``DPOTrainer(precompute_ref_log_probs=True)``: the same one-time precompute as alignlab.
* ``trl-fastest``    TRL's fastest CPU setting: ``precompute_ref_log_probs=True`` and ``padding_free=True``
                     requested. TRL 1.16 disables ``padding_free`` (it warns "temporarily unavailable after a
                     refactor" and pads; its docs say it needs FlashAttention 2/3 anyway, i.e. CUDA): the child
                     records the value in effect. Its Liger kernels need Triton (no CPU), so nothing else applies.

``--bf16`` runs every configuration under bf16 autocast (fp32 master weights; alignlab's log-softmax and log-prob
sums stay fp32; TRL: ``bf16=True``, accelerate's CPU autocast).

Same model (SmolLM2-135M-Instruct, fp32, every parameter trained), same pairs, same batches in the same order,
same optimizer (torch AdamW, constant lr, no warm-up, weight decay 0, grad-norm clipping 1.0), gradient
checkpointing off in both, no gradient accumulation, the same number of threads, dropout off.

Same token ids: the parent tokenizes the HH pairs exactly as TRL 1.16's DPOTrainer does (``_tokenize`` of prompt
and prompt+completion through the chat template, completion = ids after the common prefix; the TRL child asserts
that its own prepared dataset has these ids). alignlab gets those ids as ``TokenizedPair``s, truncated like TRL's
collator (keep_start at ``--max-length``; prompts of >= max-length tokens are not used), so both libraries train
on identical sequences. The parent orders TRL's dataset by alignlab's ``BatchPlan`` and TRL uses its sequential
sampler, so step k of both is the same 4 pairs (checked: per-step token counts must be equal).

pairs/s (the headline) = preference pairs of the timed steps (the first ``--warmup`` steps are excluded) / wall time
of those steps (end of the last warm-up step to end of the last step: forward, backward, clipping, optimizer,
scheduler, batch collation and per-step logging; not model loading). tokens/s, beside it, = non-pad tokens of
prompt+chosen and prompt+rejected (the prompt counted twice, whatever the library computes) over the same time; it
no longer compares like with like once a library computes the prompt once per pair.
padding share = padded positions / all positions of the policy forwards in the timed steps (alignlab: its
``batch/padding_share`` metric; TRL: counted from the input_ids / attention_mask of each policy forward), with
positions per pair beside it. Share of matmul peak = 6 x parameters x (prompt + chosen + rejected tokens) per
second over an fp32 GEMM's rate on this machine (2048^3, same thread count): a yardstick common to all runs,
not the FLOPs a library actually executes.
"amortized" adds the one-time reference precompute, pro rata: precompute_s x (timed pairs / all pairs scored),
i.e. the precompute cost of the pairs the timed steps consumed (one epoch; it halves with two epochs, etc.).

On a shared machine wall time swings with other jobs' load, so the report also gives the median of the per-step
tokens/s and "tokens per CPU-second" (the child's process CPU time over the same window, all threads: time spent
descheduled does not count, OMP spin-waiting does), and interleaves ``--repeats`` runs of every configuration.
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

DATA = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless_base_test.jsonl.gz"
ALIAS = "smollm2-135m-instruct"
CONFIGS = ("alignlab", "alignlab-dense", "alignlab-off", "trl", "trl-precompute", "trl-fastest")
DEFAULT_CONFIGS = ("alignlab", "trl-fastest")
ALIGNLAB_PACKING = {"alignlab": "shared_prompt", "alignlab-dense": "dense", "alignlab-off": "off"}
CPU_FLAGS = (
    "sse4_2",
    "fma",
    "avx",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_tile",
)
SEED = 42


# ----------------------------------------------------------------------------- shared helpers


class Phases:
    """Wall time per phase, accumulated only while ``on`` (the timed steps). CPU execution is synchronous."""

    def __init__(self):
        self.on = False
        self.t = defaultdict(float)
        self._starts: dict[str, list[float]] = defaultdict(list)

    def start(self, name: str) -> None:
        self._starts[name].append(time.perf_counter())

    def stop(self, name: str) -> None:
        t0 = self._starts[name].pop()
        if self.on and not self._starts[name]:  # nested calls of the same phase count once
            self.t[name] += time.perf_counter() - t0

    def wrap(self, name: str, fn):
        def inner(*a, **k):
            self.start(name)
            try:
                return fn(*a, **k)
            finally:
                self.stop(name)

        return inner

    def hook_module(self, module, name: str) -> None:
        module.register_forward_pre_hook(lambda m, a: self.start(name))
        module.register_forward_hook(lambda m, a, o: self.stop(name))


def _profiler(enabled: bool):
    import torch

    if not enabled:
        return None
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False)


def _profile_table(prof) -> str:
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)


# ----------------------------------------------------------------------------- parent: data


def _pairs(args, ids: list[dict], rows: list[dict]) -> tuple[list, object]:
    """TRL's ids as alignlab ``TokenizedPair``s, truncated like TRL's collator (keep_start at ``--max-length``)."""
    from alignlab.data.tokenize import TokenizedPair, TokenizeReport, truncate_pair

    report = TokenizeReport()
    pairs = [
        TokenizedPair(
            *truncate_pair(
                x["prompt_ids"], x["chosen_ids"], x["rejected_ids"], args.max_length, args.max_length - 1, report
            ),
            source=r["source"],
        )
        for x, r in zip(ids, rows)
    ]
    return pairs, report


def _plan(args, pairs: list):
    """Exactly the batch plan alignlab.recipes.train builds (world 1, no accumulation)."""
    from alignlab.training.schedule import BatchPlan

    return BatchPlan(
        len(pairs),
        args.batch,
        1,
        1,
        SEED,
        [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs],
    )


def prepare_data(args, path: Path) -> dict:
    """TRL-1.16 ids for the first HH pairs whose prompt TRL keeps, alignlab's batch plan, per-step token counts."""
    from transformers import AutoTokenizer
    from trl.data_utils import _tokenize, common_prefix_length

    from alignlab.data.formats import load_preference_records
    from alignlab.models.loading import resolve_model_path

    n_pairs = (args.warmup + args.steps) * args.batch
    tok = AutoTokenizer.from_pretrained(resolve_model_path(ALIAS))
    records, _ = load_preference_records(str(DATA), limit=20 * n_pairs + 100)
    rows, ids = [], []
    for r in records:
        prompt = r.prompt if isinstance(r.prompt, list) else [{"role": "user", "content": r.prompt}]
        chosen, rejected = [{"role": "assistant", "content": r.chosen}], [{"role": "assistant", "content": r.rejected}]
        # == DPOTrainer._prepare_dataset.tokenize_fn (trl 1.16.0, conversational branch)
        p = _tokenize(tok, prompt, add_generation_prompt=True, tools=None)["input_ids"]
        pc = _tokenize(tok, prompt + chosen, tools=None)["input_ids"]
        pr = _tokenize(tok, prompt + rejected, tools=None)["input_ids"]
        n = min(common_prefix_length(p, pc), common_prefix_length(p, pr))
        if n >= args.max_length:  # TRL drops prompts that fill max_length (keep_start)
            continue
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": r.source})
        ids.append({"prompt_ids": p[:n], "chosen_ids": pc[n:], "rejected_ids": pr[n:]})
        if len(rows) == n_pairs:
            break
    if len(rows) < n_pairs:
        raise SystemExit(f"only {len(rows)} usable pairs in {DATA}, need {n_pairs}")
    pairs, report = _pairs(args, ids, rows)
    plan = _plan(args, pairs)
    order, step_tokens, step_unique = [], [], []
    for s in range(args.warmup + args.steps):
        batch = plan.global_batch(s)
        order += batch
        step_tokens.append(
            sum(2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in batch)
        )
        step_unique.append(
            sum(len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids) for i in batch)
        )
    data = {
        "rows": rows,
        "ids": ids,
        "trl_order": order,
        "step_tokens": step_tokens,
        "step_unique_tokens": step_unique,
        "truncated_completions": report.truncated_completion,
        "mean_prompt_tokens": statistics.mean(len(p.prompt_ids) for p in pairs),
        "mean_completion_tokens": statistics.mean((len(p.chosen_ids) + len(p.rejected_ids)) / 2 for p in pairs),
    }
    path.write_text(json.dumps(data))
    return data


# ----------------------------------------------------------------------------- children


def _child_common(args) -> tuple[benchlib.RSSSampler, Phases]:
    return benchlib.child_common(args.threads, SEED, lambda sampler: Phases())


def _step_end(ends: list, warmup: int, n_steps: int, ph, sampler, prof) -> None:
    """Record a step's end (wall, CPU) and open/close the timed window: phases, RSS sampling and the profiler
    cover the steps after the warm-up only (the profiler: the first timed step)."""
    ends.append((time.perf_counter(), time.process_time()))
    if len(ends) == warmup:
        ph.on = True
        sampler.open_window()
        if prof is not None:
            prof.__enter__()
    elif len(ends) == warmup + 1 and prof is not None:
        prof.__exit__(None, None, None)
    if len(ends) == n_steps:
        ph.on = False
        sampler.close_window()


def _autocast(args):
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()


def run_alignlab(args, data: dict, name: str = "alignlab") -> dict:
    sampler, ph = _child_common(args)
    import alignlab.recipes.train as T
    import alignlab.training.step as S
    from alignlab.models.loading import load_model_and_tokenizer
    from alignlab.models.scorer import SequenceScorer
    from alignlab.recipes.train import TrainConfig

    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(ALIAS, dtype="float32")
    setup_s = time.perf_counter() - t0
    pairs, _ = _pairs(args, data["ids"], data["rows"])
    n_steps = args.warmup + args.steps
    out_dir = Path(tempfile.mkdtemp(prefix="bench_alignlab_"))
    cfg = TrainConfig(
        model=ALIAS,
        lora=False,
        gradient_checkpointing=False,
        per_device_batch_size=args.batch,
        grad_accum=1,
        max_length=args.max_length,
        max_prompt_length=args.max_length - 1,
        report_to="none",
        cpu=True,
        learning_rate=args.lr,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=n_steps,
        output_dir=str(out_dir),
        loss="dpo",
        beta=0.1,
        seed=SEED,
        ref_batch_size=2 * args.batch,
        logging_steps=1,
        dtype="float32",
        packing=ALIGNLAB_PACKING[name],
    )

    ends: list[tuple[float, float]] = []
    ref = {}
    prof = _profiler(args.profile)
    orig_step, orig_ref = S.train_step, T.reference_logps

    def timed_step(*a, **k):
        out = orig_step(*a, **k)
        _step_end(ends, args.warmup, n_steps, ph, sampler, prof)
        return out

    def timed_ref(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        res = orig_ref(*a, **k)
        ref["s"], ref["cpu_s"] = time.perf_counter() - t, time.process_time() - c
        ref["hit"] = bool(res[1])
        return res

    S.train_step, T.reference_logps = timed_step, timed_ref
    S.accumulate_gradients = ph.wrap("fwd+bwd (accumulate_gradients, incl. collate)", S.accumulate_gradients)
    SequenceScorer.forward = ph.wrap("scorer forward (backbone + LM head + log-probs)", SequenceScorer.forward)
    ph.hook_module(model.get_decoder(), "backbone forward (policy)")
    with _autocast(args):
        result = T.train(cfg, model, tok, pairs)
    losses = [m["loss"] for m in result.metrics]
    timed = result.metrics[args.warmup :]
    positions = [m["batch/positions_per_pair"] * args.batch for m in timed]
    padding = sum(m["batch/padding_share"] * n for m, n in zip(timed, positions))
    shutil.rmtree(out_dir, ignore_errors=True)
    sampler.stop()
    plan = _plan(args, pairs)
    step_tokens = [
        sum(
            2 * len(pairs[i].prompt_ids) + len(pairs[i].chosen_ids) + len(pairs[i].rejected_ids)
            for i in plan.global_batch(s)
        )
        for s in range(n_steps)
    ]
    phases = dict(ph.t)
    phases["= LM head + log-probs forward (scorer forward - backbone)"] = phases.get(
        "scorer forward (backbone + LM head + log-probs)", 0.0
    ) - phases.get("backbone forward (policy)", 0.0)
    phases["= forward + loss + metrics (fwd+bwd - backward)"] = phases.get(
        "fwd+bwd (accumulate_gradients, incl. collate)", 0.0
    ) - phases.get("backward", 0.0)
    return _summary(
        args,
        name,
        ends,
        step_tokens,
        losses,
        ref.get("s", 0.0),
        ref.get("cpu_s", 0.0),
        len(pairs),
        setup_s,
        sampler,
        phases,
        prof,
        {
            "ref_cache_hit": ref.get("hit"),
            "step_s_logged": [m["time/step_s"] for m in result.metrics],
            "padding_share": padding / sum(positions),
            "positions_per_pair": sum(positions) / (args.batch * len(timed)),
            "n_params": sum(p.numel() for p in model.parameters()),
            "packing": cfg.packing,
        },
    )


def run_trl(args, data: dict, name: str) -> dict:
    precompute, padding_free = name in ("trl-precompute", "trl-fastest"), name == "trl-fastest"
    sampler, ph = _child_common(args)
    import torch
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from alignlab.models.loading import load_model_and_tokenizer

    if trl.__version__ != "1.16.0":
        print(f"warning: bench written against trl 1.16.0, running {trl.__version__}", file=sys.stderr)
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(ALIAS, dtype="float32")
    order = data["trl_order"]
    ds = Dataset.from_list([data["rows"][i] for i in order]).remove_columns(["source"])
    n_steps = args.warmup + args.steps
    out_dir = Path(tempfile.mkdtemp(prefix="bench_trl_"))
    ref = {"s": 0.0, "cpu_s": 0.0}

    class TimedDPOTrainer(DPOTrainer):
        def _precompute_ref_logps(self, *a, **k):
            t, c = time.perf_counter(), time.process_time()
            res = super()._precompute_ref_logps(*a, **k)
            ref["s"] += time.perf_counter() - t
            ref["cpu_s"] += time.process_time() - c
            return res

        def compute_loss(self, *a, **k):
            return ph.wrap("forward + loss + metrics (compute_loss)", super().compute_loss)(*a, **k)

    cfg = DPOConfig(
        **benchlib.trl_training_args(out_dir, args.lr, n_steps, SEED),
        bf16=args.bf16,
        disable_dropout=True,
        max_length=args.max_length,
        truncation_mode="keep_start",
        padding_free=padding_free,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        loss_type=["sigmoid"],
        beta=0.1,
        precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=2 * args.batch,
        train_sampling_strategy="sequential",
        dataloader_drop_last=False,
    )
    trainer = TimedDPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
    setup_s = time.perf_counter() - t0 - ref["s"]
    td = trainer.train_dataset
    for j, i in enumerate(order):  # TRL's own ids == the ids alignlab trains on
        for key in ("prompt_ids", "chosen_ids", "rejected_ids"):
            if list(td[j][key]) != data["ids"][i][key]:
                raise SystemExit(f"TRL tokenized {data['rows'][i]['source']} differently ({key})")

    ends: list[tuple[float, float]] = []
    tokens: list[int] = []
    prof = _profiler(args.profile)

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            tokens.append(trainer._total_train_tokens)
            _step_end(ends, args.warmup, n_steps, ph, sampler, prof)

    trainer.add_callback(Timer())
    ph.hook_module(trainer.model.get_decoder(), "backbone forward (policy)")
    seen = {"positions": 0, "real": 0}

    def count_positions(module, a, kw):  # the policy forwards of the timed steps: what TRL actually computes
        if ph.on and module.training and kw.get("input_ids") is not None:
            seen["positions"] += kw["input_ids"].numel()
            seen["real"] += int(kw["attention_mask"].sum()) if kw.get("attention_mask") is not None else 0

    trainer.model.register_forward_pre_hook(count_positions, with_kwargs=True)
    if trainer.ref_model is not None:
        ph.hook_module(
            trainer.accelerator.unwrap_model(trainer.ref_model).get_decoder(), "backbone forward (reference)"
        )
    from trl import kernels

    fn = kernels.ChunkedLogProbFunction
    fn.forward = staticmethod(ph.wrap("fused LM head + log-probs forward", fn.forward))
    fn.backward = staticmethod(ph.wrap("fused LM head + log-probs backward (inside backward)", fn.backward))
    with torch.autograd.set_grad_enabled(True):
        trainer.train()
    sampler.stop()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    step_tokens = [b - a for a, b in zip([0] + tokens[:-1], tokens)]
    shutil.rmtree(out_dir, ignore_errors=True)
    return _summary(
        args,
        name,
        ends,
        step_tokens,
        losses,
        ref["s"],
        ref["cpu_s"],
        len(order),
        setup_s,
        sampler,
        dict(ph.t),
        prof,
        {
            "live_reference_model": trainer.ref_model is not None,
            "padding_free_requested": padding_free,
            "padding_free_in_effect": bool(getattr(trainer, "padding_free", False)),
            "padding_share": 1 - seen["real"] / max(1, seen["positions"]),
            "positions_per_pair": seen["positions"] / (args.batch * args.steps),
            "n_params": sum(p.numel() for p in model.parameters()),
        },
    )


def _summary(
    args, name, ends, step_tokens, losses, ref_s, ref_cpu_s, n_pairs_scored, setup_s, sampler, phases, prof, extra
):
    w, n = args.warmup, args.steps
    assert len(ends) == w + n, (len(ends), w + n)
    wall = [e[0] for e in ends]
    cpu = [e[1] for e in ends]
    durations = [b - a for a, b in zip(wall[w - 1 : -1], wall[w:])]
    cpu_durations = [b - a for a, b in zip(cpu[w - 1 : -1], cpu[w:])]
    timed_s = wall[-1] - wall[w - 1]
    timed_cpu_s = cpu[-1] - cpu[w - 1]
    timed_tokens = sum(step_tokens[w:])
    timed_pairs = n * args.batch
    share = timed_pairs / max(1, n_pairs_scored)
    out = {
        "name": name,
        "steps": n,
        "warmup": w,
        "step_s": durations,
        "step_cpu_s": cpu_durations,
        "timed_s": timed_s,
        "timed_cpu_s": timed_cpu_s,
        "step_tokens": step_tokens,
        "timed_tokens": timed_tokens,
        "timed_pairs": timed_pairs,
        "pairs_per_s": timed_pairs / timed_s,
        "pairs_per_s_median_step": statistics.median(args.batch / d for d in durations),
        "pairs_per_cpu_s": timed_pairs / timed_cpu_s,
        "pairs_per_s_amortized": timed_pairs / (timed_s + ref_s * share),
        "tokens_per_s": timed_tokens / timed_s,
        "tokens_per_s_median_step": statistics.median(t / d for t, d in zip(step_tokens[w:], durations)),
        "tokens_per_cpu_s": timed_tokens / timed_cpu_s,
        "ref_precompute_s": ref_s,
        "ref_precompute_cpu_s": ref_cpu_s,
        "ref_share_s": ref_s * share,
        "tokens_per_s_amortized": timed_tokens / (timed_s + ref_s * share),
        "tokens_per_cpu_s_amortized": timed_tokens / (timed_cpu_s + ref_cpu_s * share),
        "setup_s": setup_s,
        "losses": losses,
        **benchlib.memory_summary(sampler),
        "phases_per_step_s": {k: v / n for k, v in sorted(phases.items())},
        "profile": _profile_table(prof) if prof is not None else None,
    }
    out.update(extra)
    return out


# ----------------------------------------------------------------------------- parent


PACKAGES = ("torch", "transformers", "trl", "accelerate")


def machine_info(args) -> dict:
    info = benchlib.machine_info(args.threads, CPU_FLAGS, PACKAGES)
    info["fp32_matmul_gflops"] = matmul_peak(args.threads)
    return info


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    """fp32 GEMM rate (GFLOP/s, best of ``reps``) at ``threads`` torch threads: the yardstick for "share of peak"."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def run_child(args, name: str, data_path: Path, workdir: Path, rep: int) -> dict:
    child_args = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch)]
    child_args += ["--max-length", str(args.max_length), "--threads", str(args.threads), "--lr", str(args.lr)]
    if args.profile:
        child_args.append("--profile")
    if args.bf16:
        child_args.append("--bf16")
    res, measured, log = benchlib.run_child(__file__, name, data_path, workdir, rep, child_args, args.threads)
    res.update(measured, log=str(log))
    return res


def _fmt_table(results: list[dict]) -> list[str]:
    head = (
        "| run | **pairs/s** | tokens/s | s/step mean (min–max) | pairs/s, median step | pairs per CPU-s "
        "| padding share | positions per pair | share of fp32 matmul peak | ref precompute s (CPU s) "
        "| pairs/s amortized | peak RSS in steps (MiB) | ru_maxrss (MiB) | load avg before → after |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in results:
        d = r["step_s"]
        ref = (
            f"{r['ref_precompute_s']:.1f} ({r['ref_precompute_cpu_s']:.1f})"
            if r["ref_precompute_s"]
            else "— (reference forward every step)"
        )
        lines.append(
            f"| {r['name']} | **{r['pairs_per_s']:.3f}** | {r['tokens_per_s']:.1f} | {statistics.mean(d):.1f} "
            f"({min(d):.1f}–{max(d):.1f}) | {r['pairs_per_s_median_step']:.3f} | {r['pairs_per_cpu_s']:.3f} | "
            f"{r['padding_share']:.1%} | {r['positions_per_pair']:.0f} | {r.get('matmul_share', 0.0):.1%} | {ref} | "
            f"{r['pairs_per_s_amortized']:.3f} | {r['rss_peak_steps_mib']:.0f} | "
            f"{r['ru_maxrss_mib']:.0f} | {r['loadavg_before']} → {r['loadavg_after']} |"
        )
    return lines


MEDIAN_KEYS = (
    "pairs_per_s",
    "pairs_per_s_median_step",
    "pairs_per_cpu_s",
    "pairs_per_s_amortized",
    "tokens_per_s",
    "rss_peak_steps_mib",
    "ru_maxrss_mib",
)


def report(args, info: dict, data: dict, results: list[dict]) -> str:
    flags, missing = benchlib.flag_lists(info, CPU_FLAGS)
    lines = [
        benchlib.machine_line(info, PACKAGES),
        "",
        f"CPU flags: {flags} (absent: {missing}); torch CPU capability {info['torch_cpu_capability']}; "
        f"fp32 matmul {info['fp32_matmul_gflops']:.0f} GFLOP/s at {info['threads']} thread(s).",
        "",
        f"Settings: SmolLM2-135M-Instruct {'fp32 weights, bf16 autocast' if args.bf16 else 'fp32'}, full "
        f"fine-tuning; DPO (sigmoid, beta 0.1); batch {args.batch} pairs; "
        f"max_length {args.max_length} (keep_start, TRL's ids for both); AdamW lr {args.lr:g}, constant, clip 1.0; "
        f"gradient checkpointing off; {args.warmup} warm-up step(s) excluded + {args.steps} timed steps; "
        f"{args.repeats} repeat(s), runs interleaved. Mean prompt {data['mean_prompt_tokens']:.0f} tokens, "
        f"mean completion {data['mean_completion_tokens']:.0f} tokens.",
        "",
    ]
    lines += _fmt_table(results)
    med = benchlib.median_by_config(results, CONFIGS, MEDIAN_KEYS)
    lines.append("")
    for mine in [c for c in CONFIGS if c.startswith("alignlab") and c in med]:
        a = med[mine]
        for other in [c for c in CONFIGS if c.startswith("trl") and c in med]:
            o = med[other]

            def x(k):
                return f"x{a[k] / o[k]:.2f}"

            lines.append(
                f"- {mine} / {other} (medians over repeats): **pairs/s {x('pairs_per_s')}** "
                f"(median step {x('pairs_per_s_median_step')}, per CPU-s {x('pairs_per_cpu_s')}); "
                f"amortized {x('pairs_per_s_amortized')}; "
                f"peak RSS in steps {x('rss_peak_steps_mib')}, ru_maxrss {x('ru_maxrss_mib')}"
            )
    for r in results:
        if "padding_free_requested" in r and r["padding_free_requested"]:
            lines.append(
                f"- {r['name']}: padding_free=True requested, in effect: {r['padding_free_in_effect']} "
                "(TRL 1.16 disables it and pads; its docs require FlashAttention 2/3)"
            )
    lines.append("")
    lines.append("Per-step phase wall time (s, mean over the timed steps):")
    lines.append("")
    for r in results:
        ph = ", ".join(f"{k} {v:.2f}" for k, v in r["phases_per_step_s"].items())
        lines.append(f"- {r['name']}: {ph}")
    lines.append("")
    lines.append("Per-step loss (same batches, same optimizer; should agree across libraries): ")
    lines.append("")
    for r in results:
        lines.append(f"- {r['name']}: " + ", ".join(f"{x:.4f}" for x in r["losses"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=1, help="interleaved repetitions of every configuration")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for every run (fp32 master weights)")
    ap.add_argument("--profile", action="store_true", help="torch profiler op table of one timed step per run")
    ap.add_argument("--markdown", default=None, help="also write the report (markdown) to this file")
    ap.add_argument("--json", default=None, help="write all results as JSON")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.warmup < 1:
        raise SystemExit("--warmup must be >= 1 (the timed window starts at the end of the last warm-up step)")

    if args.child:
        data = json.loads(Path(args.data).read_text())
        if args.child.startswith("alignlab"):
            res = run_alignlab(args, data, args.child)
        else:
            res = run_trl(args, data, args.child)
        Path(args.result).write_text(json.dumps(res))
        return

    info = machine_info(args)
    print(json.dumps(info, indent=1))
    workdir = Path(tempfile.mkdtemp(prefix="bench_dpo_"))
    data_path = workdir / "data.json"
    data = prepare_data(args, data_path)
    print(f"{len(data['rows'])} pairs; tokens per step: {data['step_tokens']}")
    configs = benchlib.parse_configs(args.configs, CONFIGS)
    results = []
    for rep in range(args.repeats):
        for name in configs:
            print(f"[{time.strftime('%H:%M:%S')}] {name} (repeat {rep + 1}/{args.repeats}) ...", flush=True)
            r = run_child(args, name, data_path, workdir, rep)
            if r["step_tokens"] != data["step_tokens"]:
                raise SystemExit(f"{name} processed different batches: {r['step_tokens']} != {data['step_tokens']}")
            flops = 6 * r["n_params"] * sum(data["step_unique_tokens"][args.warmup :])
            r["matmul_share"] = flops / r["timed_s"] / (info["fp32_matmul_gflops"] * 1e9)
            print(
                f"    {r['pairs_per_s']:.3f} pairs/s, {r['tokens_per_s']:.1f} tokens/s "
                f"({r['tokens_per_cpu_s']:.1f} per CPU-s), padding {r['padding_share']:.1%} of "
                f"{r['positions_per_pair']:.0f} positions/pair, "
                f"{r['timed_s']:.1f} s for {r['steps']} steps, "
                f"ref precompute {r['ref_precompute_s']:.1f} s, peak RSS (steps) {r['rss_peak_steps_mib']:.0f} MiB, "
                f"ru_maxrss {r['ru_maxrss_mib']:.0f} MiB",
                flush=True,
            )
            results.append(r)
    text = report(args, info, data, results)
    print()
    print(text)
    if args.profile:
        for r in results:
            print(f"\n### torch profiler, {r['name']}: one timed step, top ops by self CPU time\n")
            print(r["profile"])
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "args": vars(args), "results": results}, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
