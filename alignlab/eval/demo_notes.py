"""The demo's words around its tables (``alignlab demo``, ``alignlab rlaif``): the notes under the results table
and the generations file."""

from __future__ import annotations

import json
from pathlib import Path

from alignlab.eval.harness import MethodResult


def demo_notes(cfg, prep, rows, train_info, timings) -> list[str]:
    """The notes under the demo's table (``cfg``: a DemoConfig, or a config with the same keys)."""
    notes = [
        f"{rows[0]['n_prompts']} {cfg.eval_split} prompts (balanced over categories), one sample each at "
        f"temperature {cfg.eval_temperature} (sampling seed {cfg.seed + 1}), max {cfg.eval_max_new_tokens} new "
        f"tokens; base cut by the budget: {100 * rows[0]['cut']:.0f}%; training seeds {cfg.seeds}"
    ]
    for r in rows[1:]:
        seeds = (
            "seed and prompt variance (two-level bootstrap)"
            if r["seed_variance_included"]
            else "prompt variance only: ONE seed, seed variance not included"
        )
        verdict = "exceeds" if r["exceeds_2se"] else "does NOT exceed"
        notes.append(
            f"{r['method']}: Δgold vs base = {r['diff']:+.4f} ± {r['diff_se']:.4f} (95% CI "
            f"[{r['diff_ci'][0]:+.4f}, {r['diff_ci'][1]:+.4f}]; {seeds}) -> {verdict} 2 s.e.; largest "
            f"term: {r.get('breakdown_dominant', '-')}; win rate {r['win_rate']:.3f} ± {r['win_se']:.3f}; "
            f"cut by the budget {100 * r['cut']:.0f}%"
        )
    notes += [
        f"pairs: {prep.pairs} on-policy pairs ({cfg.samples_per_prompt} samples/prompt at T={cfg.pair_temperature}, "
        f"max {cfg.pair_max_new_tokens} new tokens, best vs worst by the gold), {prep.dropped_ties} tie "
        f"prompts dropped; {'cached' if prep.cache_hit else 'built'} at {prep.path}",
    ]
    offline = {k: v for k, v in train_info.items() if "final_loss" in v}
    online = {k: v for k, v in train_info.items() if "final_proxy" in v}
    lora = f"LoRA r={cfg.lora_r} on the top {cfg.lora_top_layers} blocks"
    if offline:
        notes.append(
            f"training (same pairs and budget for every method): {lora}, lr {cfg.learning_rate}, beta {cfg.beta}, "
            f"{cfg.epochs} epochs; "
            + "; ".join(f"{k}: {v['steps']} steps, final loss {v['final_loss']:.3f}" for k, v in offline.items())
        )
    if online:
        notes.append(
            f"RL (`alignlab rl` against the proxy RM, on the pairs' {cfg.train_prompts} train prompts): {lora}, lr "
            f"{cfg.rl_learning_rate}{_ppo_lr(cfg)}, {cfg.rl_steps} steps of {cfg.rl_prompts_per_step} prompts x the "
            f"algorithm's group size, max {cfg.rl_max_new_tokens} new tokens, TRL's defaults otherwise (KL "
            "coefficient 0.05; ppo samples at T = 0.7, 4 epochs; rloo at T = 1, 2 samples per prompt); last step: "
            + "; ".join(
                f"{k}: proxy {v['final_proxy']:+.3f}, gold {v['final_gold']:.3f}, KL to init {v['final_kl_init']:.2f}"
                for k, v in online.items()
            )
        )
    notes += [
        "KL(π‖π_ref): nats per response (and per token), log π − log π_ref summed over the policy's own samples, "
        "both at T = 1 (samples drawn at T = 1, the budget truncates both distributions); base is π_ref itself",
        "timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
    ]
    return notes


def dump_generations(run_dir: Path, prompts, *results: MethodResult) -> None:
    """generations.jsonl: one row per method and prompt (the text, its gold, whether it ended with EOS)."""
    with open(run_dir / "generations.jsonl", "w") as fh:
        for res in results:
            for j, text in enumerate(res.texts):
                fh.write(
                    json.dumps(
                        {
                            "method": res.name,
                            "prompt_id": prompts[j].id,
                            "text": text,
                            "gold": res.gold[j],
                            "finished": res.finished[j],
                        }
                    )
                    + "\n"
                )


def _ppo_lr(cfg) -> str:
    """PPO's own learning rate, where it differs (DemoConfig.ppo_learning_rate)."""
    return f" (PPO {cfg.ppo_learning_rate})" if cfg.ppo_learning_rate is not None and "ppo" in cfg.methods else ""
