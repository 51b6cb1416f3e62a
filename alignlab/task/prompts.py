"""The embedded default prompt set: 360 short instructions written for alignlab, 12 categories.

Stored as ``alignlab/task/prompts.jsonl`` (package data), one object per line:
``{"id": "p0001", "category": "explanation", "instruction": "...", "split": "train"|"eval"}``.
The split is fixed in the file, not drawn at load time, so every run evaluates the same 80 prompts.
It was assigned once, in file (category-major) order, by the rule: item i (0-based) of N is "eval"
iff floor((i+1)*80/N) > floor(i*80/N) -- exactly 80 evenly spaced items, every 4th-5th, so each
category has 6-7 eval prompts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

SPLITS = ("train", "eval")
_FIELDS = ("id", "category", "instruction", "split")


@dataclass(frozen=True)
class TaskPrompt:
    id: str
    category: str
    instruction: str
    split: str


def _parse_line(line: str, where: str) -> TaskPrompt:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from e
    missing = [k for k in _FIELDS if not isinstance(obj.get(k), str) or not obj[k].strip()]
    if missing:
        raise ValueError(f"{where}: missing or empty string field(s) {missing}")
    if obj["split"] not in SPLITS:
        raise ValueError(f"{where}: split must be one of {SPLITS}, got {obj['split']!r}")
    return TaskPrompt(**{k: obj[k] for k in _FIELDS})


def parse_task_prompts(text: str, source: str = "prompts.jsonl") -> list[TaskPrompt]:
    """Parse and validate JSONL text; errors name ``source:line``. Ids must be unique."""
    out: list[TaskPrompt] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{lineno}"
        p = _parse_line(line, where)
        if p.id in seen:
            raise ValueError(f"{where}: duplicate id {p.id!r} (first seen on line {seen[p.id]})")
        seen[p.id] = lineno
        out.append(p)
    return out


def load_task_prompts(split: str | None = None) -> list[TaskPrompt]:
    """The packaged prompts in file order; ``split`` = "train", "eval" or None for all."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    text = resources.files("alignlab.task").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    prompts = parse_task_prompts(text, source="alignlab/task/prompts.jsonl")
    return [p for p in prompts if split is None or p.split == split]
