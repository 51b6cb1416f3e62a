"""The embedded default prompt set: 600 short instructions written for alignlab, 50 in each of 12 categories.

Stored as ``alignlab/task/prompts.jsonl`` (package data), one object per line:
``{"id": "p0001", "category": "explanation", "instruction": "...", "split": "train"|"validation"|"test"}``.
Full description: docs/task_prompts.md.

Layout. Lines 1-360 are the original set (v1): 30 prompts per category, category-major in the order
of ``CATEGORIES``, ids p0001-p0360. Lines 361-600 are the extension (v2): 20 more per category, again
category-major, ids p0361-p0600 (category c's block is p{361+20c}..p{380+20c}). A prompt's
*index in its category* is its position among that category's prompts in file order, so 0-29 are
the v1 prompts and 30-49 the v2 ones.

Splits (fixed in the file, never drawn at load time; per category 29 train / 8 validation / 13 test,
in all 348 / 96 / 156):

* ``train``      -- preference pairs, reward-model data, RL prompts.
* ``validation`` -- every choice made by looking at numbers: hyperparameters, checkpoints, early stop.
* ``test``       -- the reported numbers; never tuned on.

The rule, ``assign_split(category, index)``, uses one helper, ``spread(k, n, m)`` = item k of n is
picked iff ``floor((k+1)*m/n) > floor(k*m/n)`` (exactly m of n items, evenly spaced):

1. v1 block (index < 30, global v1 position g = 30*c + index): ``test`` iff ``spread(g, 360, 80)``
   -- exactly the v1 ``eval`` prompts (6 or 7 per category), so every v1 eval prompt is test and no
   v1 train prompt is. Of the remaining v1 prompts (23 or 24), the k-th is ``validation`` iff
   ``spread(k, that count, 5)``; the rest are ``train``.
2. v2 block (index 30-49, j = index - 30): the k-th is ``test`` iff ``spread(j, 20, 13 - v1 test
   count)`` (7 or 6), which tops the category up to 13; of the remaining v2 prompts the k-th is
   ``validation`` iff ``spread(k, that count, 3)``; the rest are ``train``.

The old split name ``"eval"`` is gone: ``load_task_prompts("eval")`` raises a ValueError pointing to
``"test"`` (reported numbers) or ``"validation"`` (tuning).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

SPLITS = ("train", "validation", "test")
CATEGORIES = (
    "explanation",
    "how_to",
    "definition",
    "comparison",
    "tips",
    "summary",
    "rewrite",
    "brainstorm",
    "reasoning",
    "writing",
    "science",
    "history_geography",
)
PER_CATEGORY = 50  # prompts per category in the packaged file
V1_PER_CATEGORY = 30  # the original block of each category (ids p0001-p0360)
TEST_PER_CATEGORY = 13
VALIDATION_PER_CATEGORY = 8
TRAIN_PER_CATEGORY = PER_CATEGORY - TEST_PER_CATEGORY - VALIDATION_PER_CATEGORY  # 29
_V1_VALIDATION = 5  # validation prompts drawn from the v1 block; the other 3 from v2
_V1_TOTAL, _V1_EVAL = 360, 80  # the v1 file and its eval count (the v1 rule)
_FIELDS = ("id", "category", "instruction", "split")
_RETIRED = {
    "eval": "the 'eval' split was replaced: use 'test' for reported numbers or 'validation' "
    "for tuning (hyperparameters, checkpoint choice); see docs/task_prompts.md"
}


@dataclass(frozen=True)
class TaskPrompt:
    id: str
    category: str
    instruction: str
    split: str


def spread(k: int, n: int, m: int) -> bool:
    """Whether item k (0-based) of n is one of m evenly spaced picks (exactly m of the n are)."""
    return (k + 1) * m // n > k * m // n


@functools.lru_cache(maxsize=None)
def _category_splits(category: str) -> tuple[str, ...]:
    c = CATEGORIES.index(category)
    v1_test = [spread(V1_PER_CATEGORY * c + i, _V1_TOTAL, _V1_EVAL) for i in range(V1_PER_CATEGORY)]
    n_v2 = PER_CATEGORY - V1_PER_CATEGORY
    v2_test_count = TEST_PER_CATEGORY - sum(v1_test)
    v2_test = [spread(j, n_v2, v2_test_count) for j in range(n_v2)]
    out: list[str] = []
    for is_test, n_val in ((v1_test, _V1_VALIDATION), (v2_test, VALIDATION_PER_CATEGORY - _V1_VALIDATION)):
        rest, k = len(is_test) - sum(is_test), 0
        for t in is_test:
            if t:
                out.append("test")
            else:
                out.append("validation" if spread(k, rest, n_val) else "train")
                k += 1
    return tuple(out)


def assign_split(category: str, index: int) -> str:
    """The split of the ``index``-th (0-based, file order) prompt of ``category``; see module doc."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if not 0 <= index < PER_CATEGORY:
        raise ValueError(f"index must be in [0, {PER_CATEGORY}), got {index}")
    return _category_splits(category)[index]


def _parse_line(line: str, where: str) -> TaskPrompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _FIELDS if not isinstance(obj.get(k), str) or not obj[k].strip()]
    if missing:
        raise ValueError(f"{where}: missing or empty string field(s) {missing}")
    if obj["split"] in _RETIRED:
        raise ValueError(f"{where}: field 'split': {_RETIRED[obj['split']]}")
    if obj["split"] not in SPLITS:
        raise ValueError(f"{where}: field 'split': split must be one of {SPLITS}, got {obj['split']!r}")
    return TaskPrompt(**{k: obj[k] for k in _FIELDS})


def parse_task_prompts(text: str, source: str = "prompts.jsonl") -> list[TaskPrompt]:
    """Parse and validate JSONL text; errors name ``source:line`` and the field. Ids must be unique."""
    out: list[TaskPrompt] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        p = _parse_line(line, where)
        if p.id in seen:
            raise ValueError(f"{where}: field 'id': duplicate id {p.id!r} (first seen on line {seen[p.id]})")
        seen[p.id] = lineno
        out.append(p)
    return out


def load_task_prompts(split: str | None = None) -> list[TaskPrompt]:
    """The packaged prompts in file order; ``split`` = "train", "validation", "test" or None for all."""
    if split in _RETIRED:
        raise ValueError(f"split {split!r}: {_RETIRED[split]}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    text = resources.files("alignlab.task").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    prompts = parse_task_prompts(text, source="alignlab/task/prompts.jsonl")
    return [p for p in prompts if split is None or p.split == split]


def balanced(prompts: list[TaskPrompt], n: int | None = None) -> list[TaskPrompt]:
    """The first ``n`` prompts taken round-robin over categories (file order within each), so that a small
    subset covers every category instead of the first few of the category-major file."""
    by_cat: dict[str, list[TaskPrompt]] = {}
    for p in prompts:
        by_cat.setdefault(p.category, []).append(p)
    out: list[TaskPrompt] = []
    for k in range(max((len(v) for v in by_cat.values()), default=0)):
        out += [v[k] for v in by_cat.values() if k < len(v)]
    return out if n is None else out[:n]
