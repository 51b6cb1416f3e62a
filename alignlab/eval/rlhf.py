"""The RLHF loop's pieces that are not recipes (``alignlab demo methods=dpo,rloo,ppo``, docs/demo.md): the
gold-labelled pairs written for ``alignlab rm`` (split by prompt into the RM's training and held-out files), the RL
prompts, LoRA targets restricted to the top blocks, each RL run's proxy-vs-gold curve and their plot, and the proxy
RM's held-out accuracy beside the length-only baselines."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.eval.decoding_rows import DecodingEvalSettings, DecodingRows, decoding_rows
from alignlab.eval.report import Section, plot_proxy_gold
from alignlab.training.rm_step import LENGTH_BASELINE, SHORTER_BASELINE

CURVES_FILE = "rl_curves.jsonl"
CURVES_PNG = "report_rl.png"
GUIDES = ("gold", "proxy", "both")  # what the decoding methods optimise (DemoConfig.decoding_guide)


@dataclass(frozen=True)
class RLHFInputs:
    """The files the RM and the RL runs read, all in the demo's run directory."""

    rm_train: Path  # TRL-format pairs (prompt / chosen / rejected): the RM's training data
    rm_heldout: Path  # the same format, prompts disjoint from rm_train: the RM's eval_data
    rm_normalize: Path  # prompt / response rows (both sides of every pair): the base policy's samples
    prompts: Path  # the RL prompts (the train prompts the pairs came from), one {"prompt": ...} per line
    n_train: int
    n_heldout: int


def split_by_prompt(rows: list[dict], heldout_share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a seeded share of the distinct prompts, with every row of theirs, is held out (at least
    one prompt, and at least one left to train on)."""
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(seed).shuffle(prompts)
    n_out = min(max(1, round(heldout_share * len(prompts))), len(prompts) - 1)
    held = set(prompts[:n_out])
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_rlhf_inputs(
    run_dir: Path, pair_rows: list[dict], prompts: list[str], heldout_share: float, seed: int
) -> RLHFInputs:
    """The pairs (rows of ``alignlab.rollout.onpolicy``) as the RM's train / held-out JSONL, both sides of every
    pair as the RM's normalisation rows (offset and scale from the base policy's own samples), and the prompts."""
    train, held = split_by_prompt(pair_rows, heldout_share, seed)
    # rows with a soft label (p_chosen: an AI judge's, alignlab rlaif) train on it; the held-out rows keep the gold's
    trl = lambda rs, keep=(): [{k: r[k] for k in ("prompt", "chosen", "rejected", *keep) if k in r} for r in rs]  # noqa: E731
    both = [{"prompt": r["prompt"], "response": r[side]} for r in pair_rows for side in ("chosen", "rejected")]
    return RLHFInputs(
        write_jsonl(run_dir / "rm_pairs_train.jsonl", trl(train, ("p_chosen",))),
        write_jsonl(run_dir / "rm_pairs_heldout.jsonl", trl(held)),
        write_jsonl(run_dir / "rm_normalize.jsonl", both),
        write_jsonl(run_dir / "rl_prompts.jsonl", [{"prompt": p} for p in prompts]),
        len(train),
        len(held),
    )


def top_layer_targets(model: torch.nn.Module, top_layers: int) -> str:
    """An ``alignlab rl`` ``lora_target``: the full names of the linear modules in the last ``top_layers`` blocks
    (the output head excluded), comma-separated; "all-linear" for ``top_layers`` <= 0. peft matches a listed name
    exactly, so the value model (a sequence-classification model of the same architecture) gets the same blocks."""
    if top_layers <= 0:
        return "all-linear"
    n = model.config.num_hidden_layers
    keep = {str(i) for i in range(max(0, n - top_layers), n)}
    head = model.get_output_embeddings()
    names = []
    for name, mod in model.named_modules():
        block = next((p for p in name.split(".") if p.isdigit()), None)
        if isinstance(mod, torch.nn.Linear) and mod is not head and block in keep:
            names.append(name)
    if not names:
        raise ValueError(f"no linear modules found in the last {top_layers} blocks")
    return ",".join(names)


def rl_curve(metrics: list[dict]) -> list[dict]:
    """Per RL step: the proxy reward (the RM's, normalised on the base policy's samples), the gold of the same
    rollouts, the summed KL to the initial policy and the response length (``alignlab rl``'s metrics rows)."""
    keys = {"proxy": "reward", "gold": "gold", "kl": "kl_init_seq", "length": "response_length"}
    return [{"step": m["step"]} | {k: m.get(src) for k, src in keys.items()} for m in metrics]


def write_curves(run_dir: Path, curves: dict[str, list[dict]]) -> tuple[Path, Path]:
    """rl_curves.jsonl (one row per run and step) and its plot, report_rl.png."""
    path = write_jsonl(run_dir / CURVES_FILE, [{"run": name} | row for name, rows in curves.items() for row in rows])
    return path, plot_proxy_gold(curves, run_dir / CURVES_PNG)


def _acc(p: float | None, n: int) -> str:
    if p is None:
        return "-"
    return f"{p:.3f} ± {math.sqrt(p * (1 - p) / n):.3f}" if n else f"{p:.3f}"


def rlhf_section(
    inputs: RLHFInputs, evals: list[dict], train_metrics: list[dict], curves: dict[str, list[dict]], png: Path | None
) -> Section:
    """The report's RLHF section: the proxy RM's held-out accuracy (before training, trained) beside the length-only
    baselines, and the proxy / gold reward per RL step (first and last step per run; the plot has every step)."""
    first, last = evals[0], evals[-1]
    n = inputs.n_heldout
    body = [
        ["proxy RM, trained (final)", _acc(last.get("eval_accuracy"), n)],
        ["proxy RM, untrained head (step 0)", _acc(first.get("eval_accuracy"), n)],
        ["length only: the longer response wins", _acc(first.get(LENGTH_BASELINE), n)],
        ["length only: the shorter response wins", _acc(first.get(SHORTER_BASELINE), n)],
    ]
    train_acc = train_metrics[-1]["accuracy"] if train_metrics else None
    notes = [
        f"proxy RM: `alignlab rm` on {inputs.n_train} gold-labelled pairs ({inputs.rm_train.name}); held out: "
        f"{n} pairs of other train prompts ({inputs.rm_heldout.name}); accuracy ± binomial s.e. over {n} pairs; "
        f"ties count as wrong; last training step's batch accuracy {_acc(train_acc, 0)}",
        "RL reward: that RM, normalised to mean 0 / std 1 on both sides of every pair (the base policy's samples); "
        f"proxy and gold per step are the means over the step's rollouts on train prompts ({CURVES_FILE})",
    ]
    for name, rows in curves.items():
        a, b = rows[0], rows[-1]
        gold = f"gold {a['gold']:.3f} -> {b['gold']:.3f}" if a.get("gold") is not None else "gold not tracked"
        notes.append(
            f"{name}: {len(rows)} steps; proxy {a['proxy']:+.3f} -> {b['proxy']:+.3f}, {gold}, "
            f"KL to the initial policy {a['kl']:.2f} -> {b['kl']:.2f} nats"
        )
    return Section(
        "RLHF: proxy reward model and RL", notes, (["held-out pairs", "accuracy ± se"], body), png, "proxy vs gold"
    )


def guided_decoding_rows(
    model, tok, prompts: list[str], gold, aligned, settings: DecodingEvalSettings, guide: str, proxy_reward=None
) -> DecodingRows:
    """The decoding table, its methods guided by the gold (optimistic: the guide is the judge), by the proxy RM
    (the honest setting: a learned reward, judged by the gold it was trained to imitate), or both: the proxy-guided
    rows follow the gold-guided ones under the same greedy baseline (their ``guide`` column names the RM)."""
    guides = ["gold", "proxy"] if guide == "both" else [guide]
    out = None
    for g in guides:
        reward = None if g == "gold" else proxy_reward
        kw = dict(rollout_model=aligned, guide_reward=reward, settings=settings)
        rows = decoding_rows(model.eval(), tok, prompts, gold, **kw)
        if out is None:
            out = rows
            continue
        # "both": the greedy baseline (first row) is shared; the proxy-guided rows are named as such
        for row, res in zip(rows[1:], rows.results[1:]):
            row["method"] = f"{row['method']} [proxy]"
            out.append(row)
            out.results.append(res)
        out.outputs |= {f"{k} [proxy]": v for k, v in rows.outputs.items() if k != "greedy"}
        out.timings |= {f"{k} [proxy]": v for k, v in rows.timings.items()}
        out.notes.extend(f"[proxy] {n}" for n in rows.notes if n not in out.notes)
    return out
