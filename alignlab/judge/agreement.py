"""How well an AI judge agrees with existing labels (the data's chosen = the human label), and how it behaves.

Numbers (spec rlhf.md §5.1b gives the published ones to compare with):
- ``agreement``: the two-order label (p) picks the data's chosen; a pair at exactly p = 0.5 counts one half.
- ``agreement_pass1``: pass 1 alone (one order per pair, no swap). The order of pass 1 is drawn per pair (``seed``),
  so position bias cannot inflate it: with the data's chosen always first, a judge that always says "1" would score
  100%.
- ``agreement_non_tie``: the two-order label on the pairs that are not ties.
- ``soft_agreement``: the mean P(the data's chosen is better): the expected agreement of a label drawn from p.
- ``position_consistency``: both passes prefer the same candidate (Lee et al.: 82% PaLM 2 L ... 44% XS).
- ``first_position_rate``: the share of passes that prefer whichever response is shown first (0.5 = no bias).
- ``tie_rate``: |p - 0.5| < tie_threshold.
- length baselines on the same pairs: ``longer_wins`` (the longer response is the data's chosen; equal length one
  half) and ``shorter_wins`` = 1 - longer_wins. A judge below ``longer_wins`` is adding nothing a length count can't.
Each rate comes with its binomial standard error (``*_se``) over the pairs it is computed on.
"""

from __future__ import annotations

import math
from typing import Sequence

from alignlab.judge.types import PairVerdict


def _rate(hits: Sequence[float]) -> tuple[float | None, float | None]:
    n = len(hits)
    if n == 0:
        return None, None
    m = sum(hits) / n
    return m, math.sqrt(max(m * (1 - m), 0.0) / n)


def _pick(p: float) -> float:
    """1 when p prefers the candidate it is stated for, 0 when it prefers the other, 1/2 at exactly 0.5."""
    return 1.0 if p > 0.5 else (0.0 if p < 0.5 else 0.5)


def _longer(chosen: int, rejected: int) -> float:
    """The length-only judge: 1 when the data's chosen is the longer response, 0 shorter, 1/2 equal."""
    return 1.0 if chosen > rejected else (0.0 if chosen < rejected else 0.5)


def agreement_stats(
    verdicts: Sequence[PairVerdict],
    a_is_chosen: Sequence[bool],
    chosen_chars: Sequence[int],
    rejected_chars: Sequence[int],
) -> dict:
    """The numbers of the module doc. ``verdicts`` are stated for candidate A (the one shown first in pass 1);
    ``a_is_chosen[i]`` says whether A was the data's chosen; lengths in characters of the data's chosen and
    rejected responses. Skipped pairs are counted (``skipped``) and left out of every rate."""
    n = len(verdicts)
    if not (len(a_is_chosen) == len(chosen_chars) == len(rejected_chars) == n):
        raise ValueError("verdicts, a_is_chosen and the lengths must have one entry per pair")
    keep = [i for i in range(n) if not verdicts[i].skip]
    oriented = [verdicts[i] if a_is_chosen[i] else verdicts[i].flipped() for i in keep]
    out: dict = {"pairs": n, "labeled": len(keep), "skipped": n - len(keep)}
    rates = {
        "agreement": [_pick(v.p) for v in oriented],
        "agreement_pass1": [_pick(v.pass1) for v in oriented],
        "agreement_non_tie": [_pick(v.p) for v in oriented if not v.tie],
        "position_consistency": [float(v.consistent) for v in oriented],
        "tie_rate": [float(v.tie) for v in oriented],
        # pass 1 shows A first (prefers it: pass1 > 0.5); pass 2 shows B first (prefers it: pass2 < 0.5)
        "first_position_rate": [h for i in keep for h in (_pick(verdicts[i].pass1), 1.0 - _pick(verdicts[i].pass2))],
        "longer_wins": [_longer(chosen_chars[i], rejected_chars[i]) for i in keep],
    }
    for name, hits in rates.items():
        out[name], out[name + "_se"] = _rate(hits)
    out["non_tie_pairs"] = len(rates["agreement_non_tie"])
    out["shorter_wins"] = None if out["longer_wins"] is None else 1.0 - out["longer_wins"]
    out["shorter_wins_se"] = out["longer_wins_se"]
    soft = [v.p for v in oriented]
    out["soft_agreement"] = sum(soft) / len(soft) if soft else None
    return out
