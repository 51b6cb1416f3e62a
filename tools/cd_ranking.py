"""Does the CD prefix scorer rank the candidates of one state? Fit V_θ, then check it (docs/decoding.md, CD).

    python tools/cd_ranking.py [--train-prompts 64] [--samples 4] [--max-new-tokens 64] \
        [--check-prompts 16] [--k 5] [--rollouts 4] [--scorer DIR] [--out runs/cd_ranking]

Fits the linear prefix scorer on balanced train prompts (alignlab.decoding.train_prefix_scorer: held-out R² by
prompt, ridge strength chosen by prompt-grouped cross-validation), then runs alignlab.eval.cd_ranking on balanced
validation prompts (never the scorer's training prompts) with the gold reward. Also reports the τ_b of π_ref's
own candidate order (most likely first) against the MC returns: the prior that CD's score log π_ref + w·V
already has. Writes <out>/results.json (and the scorer to <out>/scorer); --scorer DIR checks a saved scorer
instead of fitting one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignlab.decoding import PrefixScorer  # noqa: E402
from alignlab.eval.cd_ranking import CDFitSettings, fit_and_check, kendall_tau_b  # noqa: E402
from alignlab.models.loading import load_model_and_tokenizer  # noqa: E402
from alignlab.task.gold import GoldReward  # noqa: E402
from alignlab.task.prompts import balanced, load_task_prompts  # noqa: E402


def prior_order_tau(check) -> float:
    """Mean τ_b between π_ref's candidate order (top-k order, most likely first) and the MC returns."""
    taus = [kendall_tau_b(list(range(check.k, 0, -1)), s.mc) for s in check.per_state]
    taus = [t for t in taus if not math.isnan(t)]
    return sum(taus) / len(taus) if taus else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--check-prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scorer", default="", help="a saved PrefixScorer dir: check it, skip the fit")
    ap.add_argument("--out", default="runs/cd_ranking")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    gold = GoldReward()
    train = [p.instruction for p in balanced(load_task_prompts("train"), args.train_prompts)]
    check = [p.instruction for p in balanced(load_task_prompts("validation"), args.check_prompts)]
    settings = CDFitSettings(args.samples, args.k, args.rollouts, args.max_new_tokens, args.seed, args.batch_size)
    loaded = PrefixScorer.load(args.scorer) if args.scorer else None
    scorer, rep, res = fit_and_check(model, tok, train, check, gold, settings, scorer=loaded)
    if loaded is None:
        scorer.save(out / "scorer")
    print(f"[fit] {json.dumps(rep)}", flush=True)
    print(f"[check] {res.summary()}")
    prior = prior_order_tau(res)
    print(f"[check] π_ref's own candidate order: τ_b {prior:+.3f}")
    results = {
        "args": vars(args),
        "fit": rep,
        "check": asdict(res),
        "summary": res.summary(),
        "prior_order_tau": prior,
        "seconds": time.perf_counter() - t0,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out / 'results.json'} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
