"""`alignlab rlaif`'s pieces that are not the loop: the judge's labels turned into training data (hard labels for DPO,
soft labels for the reward model), the judge's agreement with the gold's labels and what judging cost, as report
sections (docs/rlaif.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignlab.data.tokenize import TokenizedPair
from alignlab.eval.report import Section
from alignlab.judge.types import PairVerdict


@dataclass
class JudgeLabels:
    """The judge's verdicts on the gold-ranked pairs, each stated for the gold's chosen response."""

    verdicts: list[PairVerdict]  # oriented: p = P(the gold's chosen is better) by the judge
    agreement: dict  # alignlab.judge.agreement.agreement_stats on these pairs
    stats: dict  # the judge's JudgeStats (queries, cache hits, requested, failures)
    seconds: float
    counts: dict = field(default_factory=dict)


def judge_dpo_pairs(pairs: list[TokenizedPair], labels: JudgeLabels) -> tuple[list[TokenizedPair], dict]:
    """DPO pairs on the judge's hard labels (docs/rlaif.md): kept when p > 0.5, chosen and rejected swapped when
    p < 0.5, dropped when a tie (|p - 0.5| < tie_threshold) or skipped. Returns (pairs, counts)."""
    out, counts = [], {"kept": 0, "swapped": 0, "ties_dropped": 0, "skipped": 0}
    for pair, v in zip(pairs, labels.verdicts):
        if v.skip:
            counts["skipped"] += 1
        elif v.tie:
            counts["ties_dropped"] += 1
        elif v.p > 0.5:
            counts["kept"] += 1
            out.append(pair)
        else:
            counts["swapped"] += 1
            p = pair
            out.append(TokenizedPair(p.prompt_ids, p.rejected_ids, p.chosen_ids, p.source, p.prompt, p.rejected_text,
                                     p.chosen_text))  # fmt: skip
    return out, counts


def judge_rm_rows(pair_rows: list[dict], labels: JudgeLabels) -> list[dict]:
    """The pairs' rows with the judge's soft label ``p_chosen`` (P(chosen better), ties kept: docs/rlaif.md); pairs the
    judge could not label are left out."""
    return [r | {"p_chosen": v.p} for r, v in zip(pair_rows, labels.verdicts) if not v.skip]


def _pct(s: dict, key: str) -> str:
    v, se = s.get(key), s.get(key + "_se")
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}% ± {100 * se:.1f}" if se is not None else f"{100 * v:.1f}%"


def agreement_section(labels: JudgeLabels, judge: str, template: str, tie_threshold: float) -> Section:
    """The judge against the gold's labels on the training pairs (the gold's best vs worst sample)."""
    a, c = labels.agreement, labels.counts
    body = [
        ["agreement with the gold, both orders averaged", _pct(a, "agreement"), str(a["labeled"])],
        ["agreement, pass 1 only (no swap; order drawn per pair)", _pct(a, "agreement_pass1"), str(a["labeled"])],
        ["agreement, non-tie pairs", _pct(a, "agreement_non_tie"), str(a["non_tie_pairs"])],
        ["soft agreement (mean P(gold's chosen better))", _pct(a, "soft_agreement"), str(a["labeled"])],
        ["position consistency (both passes pick the same)", _pct(a, "position_consistency"), str(a["labeled"])],
        ["passes preferring the first shown (0.5 = no bias)", _pct(a, "first_position_rate"), str(a["labeled"])],
        [f"ties (abs(p - 0.5) < {tie_threshold})", _pct(a, "tie_rate"), str(a["labeled"])],
        ["baseline: the longer response wins", _pct(a, "longer_wins"), str(a["labeled"])],
    ]
    notes = [
        f"judge `{judge}`, template `{template}`: every pair judged in both orders (docs/rlaif.md); {a['labeled']} of "
        f"{a['pairs']} pairs labelled, {a['skipped']} skipped; ± one binomial standard error",
        f"DPO on the judge's labels: {c.get('kept', 0)} pairs as ranked by the gold, {c.get('swapped', 0)} swapped "
        f"(the judge prefers the gold's rejected), {c.get('ties_dropped', 0)} ties dropped; the judge's reward model "
        "trains on the soft labels of every labelled pair, ties included (docs/rlaif.md)",
    ]
    return Section(
        "The judge against the gold's labels (training pairs)", notes, (["quantity", "value", "pairs"], body)
    )


def cost_section(labels: JudgeLabels, rating: dict | None, timings: dict[str, float]) -> tuple[Section, dict]:
    """Judge queries (one order of a pair, or one rating), cache hits, queries asked, failures and seconds; the
    run's time by phase. Returns the section and the numbers (for metrics.json)."""
    st = labels.stats
    cost = {
        "labels": {
            "queries": st["queries"],
            "cache_hits": st["cache_hits"],
            "requested": st["requested"],
            "failed": st["failed"],
            "seconds": labels.seconds,
        }
    }
    body = [
        ["pair labels (2 orders per pair)", st["queries"], st["cache_hits"], st["requested"], f"{labels.seconds:.0f}"]
    ]
    if rating is not None:
        cost["d_rlaif_ratings"] = {k: rating[k] for k in ("queries", "cache_hits", "requested", "failed", "seconds")}
        body.append(
            ["d-RLAIF ratings (1 per rollout)", rating["queries"], rating["cache_hits"], rating["requested"],
             f"{rating['seconds']:.0f}"]
        )  # fmt: skip
    total = [sum(v[k] for v in cost.values()) for k in ("queries", "cache_hits", "requested", "seconds")]
    body.append(["total", *total[:3], f"{total[3]:.0f}"])
    cost["total"] = dict(zip(("queries", "cache_hits", "requested", "seconds"), total))
    cost["timings_s"] = dict(timings)
    failed = {k: v for part in ("labels", "d_rlaif_ratings") for k, v in cost.get(part, {}).get("failed", {}).items()}
    notes = [
        "a query is one order of one pair, or one rating of one response; cache hits were answered from the judge "
        "cache (nothing asked); seconds include the judge's forward passes or requests",
        "failed queries: "
        + (", ".join(f"{k} {v}" for k, v in failed.items()) if failed else "none")
        + " (a failed rating is reward 0, the middle of the scale)",
        "time by phase (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()),
    ]
    head = ["judge work", "queries", "cache hits", "asked", "seconds"]
    return Section("Cost of the judge", notes, (head, [[str(c) for c in r] for r in body])), cost
