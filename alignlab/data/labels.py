"""Optional per-pair label fields of preference rows: ``p_chosen`` (soft label) and ``margin`` (docs/data.md).

* ``p_chosen``: a number in [0, 1], the probability that ``chosen`` is the better response (an AI judge writes
  it, docs/specs RLAIF §5.2: the mean of the two order-swapped passes). Read by ``alignlab rm`` (soft
  Bradley–Terry loss) and by the ``alignlab train`` losses whose registry entry says ``reads_soft_labels``.
* ``margin``: a number >= 0 (TRL RewardTrainer's column name), the per-pair margin m of the Bradley–Terry loss
  −log σ(r_c − r_r − m). Read by ``alignlab rm`` only; no ``alignlab train`` loss reads it.

A value that is not a finite number in range is a ``DataError`` naming ``file:line`` and the field (reason
"bad_label"; ``on_bad=skip`` counts such rows instead). A field that is ``null`` counts as absent.

Mixed presence: within one input (a file, a row range of it, or a dataset split) either every kept row carries a
field or none does. Anything else is a ``DataError`` naming the first kept row without it and the first with it
(a missing soft label cannot be defaulted to 1 or 0.5 without changing what the data says).

Hard labels from soft ones (the RLAIF protocol, for losses without a soft form): ``harden`` keeps a pair when p > 0.5,
swaps chosen and rejected when p < 0.5, and drops it as a tie when |p − 0.5| < 0.05. As a command::

    python -m alignlab.data.labels IN.jsonl OUT.jsonl

writes the hard-labelled rows (the ``p_chosen`` field removed, every other field kept) and prints the counts.
"""

from __future__ import annotations

import json
import math
import sys

from alignlab.data.types import PreferenceRecord

P_CHOSEN = "p_chosen"
MARGIN = "margin"
LABEL_FIELDS = (P_CHOSEN, MARGIN)
TIE_BAND = 0.05  # |p - 0.5| < TIE_BAND is a tie (the RLAIF protocol; docs/rlaif.md)
_ROUNDING = 1e-9  # so that 0.45 and 0.55 are both outside the band despite binary rounding


def _error(message: str, reason: str = "bad_label"):
    from alignlab.data.formats import DataError  # formats imports this module

    return DataError(message, reason)


def read_labels(row: dict, source: str) -> tuple[float | None, float | None]:
    """(p_chosen, margin) of one row, each None when absent; a bad value raises DataError (file:line, field)."""
    return _number(row, P_CHOSEN, source, 0.0, 1.0), _number(row, MARGIN, source, 0.0, math.inf)


def _number(row: dict, field: str, source: str, lo: float, hi: float) -> float | None:
    value = row.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(f"{source}: field {field!r} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        what = "in [0, 1]" if hi == 1.0 else ">= 0"
        raise _error(f"{source}: field {field!r} must be a finite number {what}, got {value!r}")
    return value


def check_presence(records: list[PreferenceRecord], spec: str) -> None:
    """Every record carries ``p_chosen`` (and ``margin``) or none does; else DataError naming the rows."""
    for field in LABEL_FIELDS:
        has = [getattr(r, field) is not None for r in records]
        if any(has) and not all(has):
            without = next(r.source for r, h in zip(records, has) if not h)
            with_ = next(r.source for r, h in zip(records, has) if h)
            raise _error(
                f"{without}: missing field {field!r}, which {sum(has)} of the {len(has)} usable rows of {spec} carry "
                f"(first at {with_}); a field must be in every row of an input or in none (docs/data.md)",
                "mixed_labels",
            )


def hard_label(p: float) -> int | None:
    """1 (chosen is better), 0 (rejected is better) or None (a tie, |p − 0.5| < 0.05): 1[p > 0.5] (RLAIF)."""
    if abs(p - 0.5) < TIE_BAND - _ROUNDING:
        return None
    return int(p > 0.5)


def harden_row(row: dict) -> dict | None:
    """The row with a hard label: chosen/rejected swapped when p_chosen < 0.5, ``p_chosen`` removed; None for a
    tie. Any row format works (the swap exchanges the two fields whole)."""
    label = hard_label(float(row[P_CHOSEN]))
    if label is None:
        return None
    out = {k: v for k, v in row.items() if k != P_CHOSEN}
    if label == 0:
        out["chosen"], out["rejected"] = row["rejected"], row["chosen"]
    return out


def harden(src: str, dst: str) -> dict[str, int]:
    """Write the rows of ``src`` (validated like training data; every usable row must carry p_chosen) to ``dst`` as
    hard-labelled JSONL; returns the counts read / kept / swapped / ties (dropped) / unusable (dropped, as
    training would skip them)."""
    from alignlab.data.formats import iter_preference_rows

    counts = {"read": 0, "kept": 0, "swapped": 0, "ties": 0, "unusable": 0}
    lines = []
    for source, row, usable in iter_preference_rows(src):  # malformed rows stop here, as in training
        counts["read"] += 1
        if not usable:  # a pair training would skip too: dropped, counted
            counts["unusable"] += 1
            continue
        p, _ = read_labels(row, source)
        if p is None:
            raise _error(f"{source}: missing field {P_CHOSEN!r}: nothing to harden", "missing_field")
        out = harden_row(row)
        if out is None:
            counts["ties"] += 1
            continue
        counts["kept"] += 1
        counts["swapped"] += out["chosen"] is not row["chosen"]
        lines.append(json.dumps(out, ensure_ascii=False) + "\n")
    with open(dst, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return counts


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m alignlab.data.labels IN.jsonl OUT.jsonl  (soft p_chosen -> hard labels)")
    c = harden(sys.argv[1], sys.argv[2])
    print(
        f"{sys.argv[2]}: {c['kept']} of {c['read']} pairs ({c['swapped']} swapped); dropped {c['ties']} ties and "
        f"{c['unusable']} unusable rows"
    )
