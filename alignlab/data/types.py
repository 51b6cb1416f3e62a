"""Typed containers that cross the data -> recipe boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

Messages = list[dict]  # [{"role": "user"|"assistant"|"system", "content": str}, ...]
Text = Union[str, Messages]


@dataclass
class ScoredRow:
    """One (prompt, response) to score with a reward; ``finished`` = ended on EOS (None: unknown)."""

    prompt: str
    response: str
    finished: bool | None
    source: str


@dataclass
class PreferenceRecord:
    """One raw preference example, before tokenization.

    prompt:   a string, or chat messages ending with a user turn.
    chosen / rejected: a string (the assistant reply), or chat messages (the assistant turn(s) only).
    source:   where it came from, for error messages: "path/to/file.jsonl:17" or "hf:org/name[train][17]".
    p_chosen: the row's soft label P(chosen is better) in [0, 1], or None (alignlab.data.labels).
    margin:   the row's Bradley–Terry margin m >= 0, or None.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    source: str
    p_chosen: float | None = None
    margin: float | None = None


@dataclass
class LoadReport:
    """What the loader did, counted (never silent loss). Printed and stored in the run directory."""

    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> up to 5 sources
    spec: str = ""  # what was loaded (file path or hf:...), so a stored report says what it describes
    labelled: dict[str, int] = field(default_factory=dict)  # optional label field -> kept rows carrying it

    @property
    def label_fields(self) -> list[str]:
        """The optional per-pair fields (p_chosen, margin) the kept rows carry (all of them or none, per field)."""
        return [k for k, n in self.labelled.items() if n]

    def skip(self, reason: str, source: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(source)

    def summary(self) -> str:
        """One line for logs, e.g. "x.jsonl: read 10, kept 8, skipped 2 (empty_response=2 e.g. x.jsonl:3)"."""
        head = f"{self.spec or 'data'}: read {self.read}, kept {self.kept}"
        if not self.skipped:
            return head + ", skipped 0"
        parts = [
            f"{reason}={n} e.g. {', '.join(self.examples.get(reason, [])[:2])}"
            for reason, n in sorted(self.skipped.items())
        ]
        return f"{head}, skipped {sum(self.skipped.values())} ({'; '.join(parts)})"
