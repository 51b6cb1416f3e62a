"""Do T-REG's token rewards carry signal on the demo's pairs? Diagnostics per template (docs/treg.md).

    python tools/treg_signal.py [--split validation] [--prompts 96] [--samples 3] \
        [--templates revision,generation,task] [--taus 1,0.25]

Builds (or loads from the cache) on-policy pairs with the demo's settings on the chosen split's prompts (validation
for choosing a setting: never test), scores the token rewards of every pair with the reference under each
template, rescales them at each contrast temperature tau (alignlab.losses.treg.rescale_token_rewards), and prints
the diagnostics of alignlab.eval.treg_diagnostics with the correlation of Σr̂(chosen) − Σr̂(rejected) against the
gold's per-term differences and the binomial s.e. of the preference share. Writes <out>/diagnostics.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignlab.eval.treg_diagnostics import format_diagnostics, token_reward_diagnostics  # noqa: E402
from alignlab.models.loading import load_model_and_tokenizer, model_fingerprint  # noqa: E402
from alignlab.precompute.token_rewards import cached_token_rewards, rescale_rewards  # noqa: E402
from alignlab.rollout.generate import SamplingParams  # noqa: E402
from alignlab.rollout.onpolicy import build_onpolicy_pairs  # noqa: E402
from alignlab.task.gold import GoldReward  # noqa: E402
from alignlab.task.prompts import balanced, load_task_prompts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--templates", default="revision,generation,task")
    ap.add_argument("--taus", default="1")
    ap.add_argument("--split", default="validation", choices=["train", "validation"])
    ap.add_argument("--out", default="runs/treg_signal")
    args = ap.parse_args()
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    gold = GoldReward()
    prompts = [p.instruction for p in balanced(load_task_prompts(args.split), args.prompts)]
    params = SamplingParams(args.max_new_tokens, 0.8, 1.0, args.samples, 32, 0)  # the demo's pair settings
    pairs, _, rep = build_onpolicy_pairs(model, tok, prompts, gold, gold.name, model_fingerprint(model), params)
    print(f"[pairs] {len(pairs)} pairs from {rep.prompts} {args.split} prompts ({rep.dropped_ties} ties dropped)")
    sc = gold.score([p.prompt for p in pairs] * 2, [p.chosen_text for p in pairs] + [p.rejected_text for p in pairs])
    n = len(pairs)
    terms = {k: [(v[i], v[n + i]) for i in range(n)] for k, v in sc.terms().items()}
    terms["total"] = [(sc.total[i], sc.total[n + i]) for i in range(n)]
    out = {}
    for name in args.templates.split(","):
        res = cached_token_rewards(model, tok, pairs, name, batch_size=8, max_length=1024)
        for tau in [float(t) for t in args.taus.split(",")]:
            rw = rescale_rewards(res.rewards, tau)
            d = token_reward_diagnostics(rw, terms)
            d["pref_chosen_se"] = math.sqrt(d["pref_chosen"] * (1 - d["pref_chosen"]) / max(d["pairs"], 1))
            out[f"{name}/tau={tau:g}"] = d
            print(f"[{name} tau={tau:g}] {format_diagnostics(d)} (s.e. {100 * d['pref_chosen_se']:.1f}%)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "diagnostics.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
