"""The judge cache: one JSONL file of answered queries, so that no request is ever repeated (docs/rlaif.md).

One line per answered query: ``{"key": ..., "p1": ..., "mode": ..., "answer": ..., "rationale": ...}``, appended
and flushed as soon as the answer arrives (an interrupted run loses at most the line being written). The key
(alignlab.judge.protocol.query_key) hashes the judge id, the template hash, the context and both responses in the
order shown. Failures are not cached: they are asked again by the next run.

A line that does not parse (a half-written last line, an edited file), or parses but is not an answer (no key, p1
not a number in [0, 1]), is counted in ``corrupt_lines`` and never used; its query is simply asked again and the new
answer appended. Why not trust it: a silently misread cache line would be a label no judge gave.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from alignlab.judge.types import Readout

CACHE_FILE = "judge_cache.jsonl"
_MODES = ("logprobs", "parse")


class JudgeCache:
    """Answers by key, read from ``path`` (a JSONL file; created on the first ``put``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._entries: dict[str, Readout] = {}
        self.corrupt_lines = 0
        self.corrupt_examples: list[int] = []  # 1-based line numbers, first 5
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        with open(self.path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                entry = _parse(raw)
                if entry is None:
                    self.corrupt_lines += 1
                    if len(self.corrupt_examples) < 5:
                        self.corrupt_examples.append(lineno)
                    continue
                key, readout = entry
                self._entries[key] = readout  # later lines win (a re-asked query appends its new answer)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Readout | None:
        return self._entries.get(key)

    def put(self, key: str, r: Readout) -> None:
        if r.p1 is None or not 0.0 <= r.p1 <= 1.0:  # also NaN
            raise ValueError(f"only answers (p1 in [0, 1]) are cached, got {r.p1!r}")
        self._entries[key] = r
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(
            {"key": key, "p1": r.p1, "mode": r.mode, "answer": r.answer, "rationale": r.rationale}, ensure_ascii=False
        )
        with open(self.path, "ab+") as fh:
            fh.seek(0, 2)
            if fh.tell() > 0:  # a half-written last line (a killed run) must not swallow this one
                fh.seek(-1, 2)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()


def _parse(raw: bytes) -> tuple[str, Readout] | None:
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(d, dict):
        return None
    key, p1, mode = d.get("key"), d.get("p1"), d.get("mode")
    if not isinstance(key, str) or not key or mode not in _MODES:
        return None
    if isinstance(p1, bool) or not isinstance(p1, (int, float)) or not math.isfinite(p1) or not 0.0 <= p1 <= 1.0:
        return None
    answer, rationale = d.get("answer", ""), d.get("rationale", "")
    if not isinstance(answer, str) or not isinstance(rationale, str):
        return None
    return key, Readout(float(p1), mode=mode, answer=answer, rationale=rationale)
