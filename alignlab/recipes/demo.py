"""`alignlab demo`: the whole loop on the embedded task, on a laptop CPU, offline.

1. load the built-in model (SmolLM2-135M-Instruct from its GGUF, cached as safetensors);
2. build on-policy pairs on train prompts: k samples each, ranked by the gold reward (cached);
3. train DPO with LoRA (reference log-probs cached; reference = adapter disabled);
4. evaluate base vs aligned on held-out prompts with the shared harness; print the table; write the report.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from alignlab.config import save_config
from alignlab.eval.harness import MethodResult, result_from_generations, score_generations, summarize
from alignlab.eval.report import format_table, write_report
from alignlab.models.loading import load_model_and_tokenizer, model_fingerprint
from alignlab.models.lora import reference_mode
from alignlab.recipes.onpolicy import build_onpolicy_pairs
from alignlab.recipes.train import train
from alignlab.recipes.train_config import TrainConfig
from alignlab.rollout.generate import SamplingParams, generate
from alignlab.task.gold import GoldReward
from alignlab.task.prompts import load_task_prompts


@dataclass
class DemoConfig:
    model: str = "smollm2-135m-instruct"
    output_dir: str = "runs/demo"
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch default
    # on-policy pairs
    train_prompts: int = 96
    samples_per_prompt: int = 4
    pair_max_new_tokens: int = 48
    pair_temperature: float = 0.8
    gen_batch_size: int = 16
    # training (DPO + LoRA)
    loss: str = "dpo"
    beta: float = 0.1
    learning_rate: float = 2e-4
    epochs: int = 2
    per_device_batch_size: int = 8
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = False  # 135M on CPU: memory is not the constraint, time is
    # evaluation
    eval_prompts: int = 80
    eval_max_new_tokens: int = 48
    eval_temperature: float = 0.7
    eval_samples: int = 1

    def validate(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2 to form pairs")


def _texts(prompts) -> list[str]:
    return [p.instruction for p in prompts]


def run_demo(cfg: DemoConfig) -> dict:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    run_dir = Path(cfg.output_dir)
    save_config(cfg, run_dir)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)

    t = time.perf_counter()
    model, tok = load_model_and_tokenizer(cfg.model)
    fp = model_fingerprint(model)
    gold = GoldReward()
    timings["load"] = time.perf_counter() - t

    train_p = load_task_prompts("train")[: cfg.train_prompts]
    eval_p = load_task_prompts("eval")[: cfg.eval_prompts]
    t = time.perf_counter()
    pair_params = SamplingParams(cfg.pair_max_new_tokens, cfg.pair_temperature, 1.0, cfg.samples_per_prompt,
                                 cfg.gen_batch_size, cfg.seed)
    pairs, pair_rows, prep = build_onpolicy_pairs(model, tok, _texts(train_p), gold, gold.name, fp, pair_params)
    timings["pairs"] = time.perf_counter() - t
    print(f"[demo] on-policy pairs: {prep.pairs} from {prep.prompts} prompts x {cfg.samples_per_prompt} samples "
          f"({'cache hit' if prep.cache_hit else 'built'}; {prep.dropped_ties} prompts dropped as ties); "
          f"gold chosen {prep.chosen_reward_mean:.3f} vs rejected {prep.rejected_reward_mean:.3f}")

    eval_params = SamplingParams(cfg.eval_max_new_tokens, cfg.eval_temperature, 1.0, cfg.eval_samples,
                                 cfg.gen_batch_size, cfg.seed + 1)
    t = time.perf_counter()
    base_gens = generate(model, tok, _texts(eval_p), eval_params, progress="eval base")
    base = result_from_generations("base", base_gens, gold, _texts(eval_p), kl=[0.0] * len(base_gens))
    timings["eval_base"] = time.perf_counter() - t

    t = time.perf_counter()
    tcfg = TrainConfig(model=cfg.model, loss=cfg.loss, beta=cfg.beta, learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                       per_device_batch_size=cfg.per_device_batch_size, grad_accum=cfg.grad_accum, lora=True,
                       lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, gradient_checkpointing=cfg.gradient_checkpointing,
                       seed=cfg.seed, output_dir=str(run_dir / f"train_{cfg.loss}"), report_to="tensorboard",
                       max_length=512, max_prompt_length=256, cpu=True)
    result = train(tcfg, model=model, tokenizer=tok, pairs=pairs)
    timings["train"] = time.perf_counter() - t
    policy = result.model

    t = time.perf_counter()
    gens = generate(policy, tok, _texts(eval_p), eval_params, progress=f"eval {cfg.loss}")
    pad = tok.pad_token_id
    lp = score_generations(policy, gens, pad, cfg.eval_temperature)
    with reference_mode(policy):
        lr = score_generations(policy, gens, pad, cfg.eval_temperature)
    aligned = result_from_generations(f"{cfg.loss} (LoRA)", gens, gold, _texts(eval_p), kl=[a - b for a, b in zip(lp, lr)])
    timings["eval_aligned"] = time.perf_counter() - t

    n = len(eval_p)
    rows = [summarize(base, base, n), summarize(aligned, base, n)]
    timings["total"] = time.perf_counter() - t_start
    notes = _notes(cfg, prep, result, rows, timings)
    samples = [{"prompt": eval_p[i].instruction, "base": base.texts[i], aligned.name: aligned.texts[i],
                "gold base/aligned": f"{base.gold[i]:.3f} / {aligned.gold[i]:.3f}"} for i in range(min(4, n))]
    report = write_report(run_dir, rows, "alignlab demo: DPO on the embedded task", notes, samples)
    _dump_generations(run_dir, eval_p, base, aligned)
    (run_dir / "timings.json").write_text(json.dumps(timings, indent=2))
    print()
    print(format_table(rows))
    print()
    for line in notes:
        print("-", line)
    print(f"\nreport: {report}")
    return {"rows": rows, "timings": timings, "report": str(report)}


def _notes(cfg: DemoConfig, prep, result, rows, timings) -> list[str]:
    d, se = rows[1]["diff"], rows[1]["diff_se"]
    verdict = "exceeds" if d > 2 * se else "does NOT exceed"
    return [
        f"seed {cfg.seed}; {rows[0]['n_prompts']} held-out prompts, {cfg.eval_samples} sample(s) each at temperature "
        f"{cfg.eval_temperature}, max {cfg.eval_max_new_tokens} new tokens",
        f"aligned - base gold = {d:.4f} ± {se:.4f} (s.e. of the paired difference): {verdict} 2 s.e.",
        f"pairs: {prep.pairs} on-policy pairs ({cfg.samples_per_prompt} samples/prompt, best vs worst by gold), "
        f"{prep.dropped_ties} tie prompts dropped; {'cached' if prep.cache_hit else 'built'} at {prep.path}",
        f"training: {cfg.loss}, beta {cfg.beta}, LoRA r={cfg.lora_r}, lr {cfg.learning_rate}, {result.steps} steps; "
        f"reference log-probs {'from cache' if result.ref_cache_hit else 'computed once'}",
        "KL(π‖ref): mean over the aligned model's own samples of log π − log π_ref at the sampling temperature; "
        "the base row is the reference itself (0 by definition)",
        "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
    ]


def _dump_generations(run_dir: Path, prompts, *results: MethodResult) -> None:
    with open(run_dir / "generations.jsonl", "w") as fh:
        for res in results:
            k = len(res.gold) // len(prompts)
            for j, text in enumerate(res.texts):
                fh.write(json.dumps({"method": res.name, "prompt_id": prompts[j // k].id, "text": text,
                                     "gold": res.gold[j], "finished": res.finished[j]}) + "\n")
