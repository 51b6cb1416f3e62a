"""Load raw preference data into ``PreferenceRecord``s, counting everything that is not kept.

Inputs (``spec``)
-----------------
* ``path.jsonl`` / ``path.jsonl.gz``: one JSON object per line. A row range may follow the path, Python slice
  style over the file's non-blank rows (0-based, ``stop`` excluded, negative counts from the end):
  ``hh.jsonl.gz[:1800]`` (the first 1,800 rows), ``hh.jsonl.gz[-512:]`` (the last 512). Sources keep the file's
  own line numbers. Same for prompt files.
* ``hf:org/name`` or ``hf:org/name:config`` (a Hub dataset, with ``split``), ``hf:/some/dir`` or a bare
  directory path (a ``save_to_disk`` directory, or a data directory ``load_dataset`` understands).
  Any failure inside ``datasets`` (e.g. the dataset is not cached and ``HF_DATASETS_OFFLINE=1``) is
  re-raised as ``DataError`` naming the spec. Rows are handled exactly like JSONL rows.

Row formats (detected per row; extra fields are ignored; a field that is ``None`` counts as missing)
---------------------------------------------------------------------------------------------------
* TRL explicit: ``prompt``, ``chosen``, ``rejected``; each a string or a list of chat messages
  ``{"role": "system"|"user"|"assistant", "content": str}``. A message-list prompt must end with a
  user turn; message-list completions hold the assistant turn(s) only. If the completions are instead
  whole conversations (e.g. UltraFeedback-binarized: ``prompt`` string + ``chosen`` = [user, assistant]),
  the prompt is taken from the conversations and must agree with ``prompt`` (else "prompt_mismatch").
* TRL implicit prompt: no ``prompt``; ``chosen`` and ``rejected`` are whole conversations (message lists).
  Each splits into prefix (up to and including the last non-assistant turn) + final assistant turn(s);
  the two prefixes must be identical (else skip "prompt_mismatch"), and the prefix is the prompt.
* Anthropic HH: no ``prompt``; ``chosen``/``rejected`` are strings containing ``"\\n\\nHuman:"``. The prompt
  is everything up to and including the last ``"\\n\\nAssistant:"``, parsed by ``parse_hh_dialogue`` into
  user/assistant messages; the completion is the text after it, stripped. Prompts that differ between
  chosen and rejected (5 rows of the HH harmless-base test split) are skipped as "prompt_mismatch".

Bad input (never silent)
------------------------
Errors raise ``DataError`` (a ``ValueError``) whose message starts with the source ``file:line``
(1-based) or ``hf:name[split][i]`` (0-based) and names the field; ``err.reason`` is the skip reason:
  "malformed_json"  the line is not JSON (or not UTF-8); the JSON error is quoted.
  "missing_field"   a required field is absent or null.
  "bad_type"        a field (or the row) has the wrong type, e.g. a number, or chosen/rejected differ in kind.
  "bad_messages"    a message is not an object, its role is not system/user/assistant, or its content
                    is not a string (the message names the field and the 0-based message index).
  "bad_dialogue"    an HH string that cannot be parsed (no Human first turn, no Assistant turn).
  "bad_label"       optional ``p_chosen`` not a number in [0, 1], or ``margin`` not a number >= 0
                    (alignlab.data.labels; checked on rows that are otherwise usable).
With ``on_bad="skip"`` these rows are counted under that reason instead of raising. Problems with the
whole input (unsupported spec, truncated gzip, ``datasets`` load failure, missing split) always raise
``DataError``; a missing file raises ``FileNotFoundError``. Whatever ``on_bad``
is, these are always counted skips: "prompt_mismatch"; "prompt_not_ending_with_user" (a message prompt
that is empty or whose last turn is not user); "empty_response" (a completion that is blank after
stripping, or has no assistant text); and "identical_pair" (chosen == rejected after stripping).
Checks run in that order, one reason per row. Blank lines are ignored and not counted. The optional label
fields must be in every kept row of an input or in none ("mixed_labels", always raised).
Consecutive same-role HH turns (4 kept rows of the HH harmless-base test split have two Assistant turns
in a row mid-dialogue) are merged, joined by a blank line, so roles alternate and no text is lost.
Invariant: ``report.read == report.kept + sum(report.skipped.values())``.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from pathlib import Path
from typing import Iterator

from alignlab.data.labels import LABEL_FIELDS, check_presence, read_labels
from alignlab.data.types import LoadReport, PreferenceRecord, ScoredRow

ROLES = ("system", "user", "assistant")
HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
PROMPT_FIELDS = ("prompt", "instruction", "messages")


class DataError(ValueError):
    """Bad input data; ``reason`` is the LoadReport skip reason used when ``on_bad="skip"``."""

    def __init__(self, message: str, reason: str = "bad_input"):
        super().__init__(message)
        self.reason = reason


class _Skip(Exception):
    """A well-formed row that cannot be used; always counted, never raised to the caller."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------- public API


def load_preference_records(
    spec: str, split: str = "train", limit: int | None = None, on_bad: str = "error"
) -> tuple[list[PreferenceRecord], LoadReport]:
    """Read ``spec`` into records plus a report of what was read, kept and skipped (see module doc)."""
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    report, records = LoadReport(spec=spec), []
    for source, row in _iter_rows(spec, split):
        if limit is not None and len(records) >= limit:
            break
        report.read += 1
        try:
            pair = _row_to_pair(row, source)
            records.append(PreferenceRecord(*pair, source=source, **dict(zip(LABEL_FIELDS, read_labels(row, source)))))
        except _Skip as skip:
            report.skip(skip.reason, source)
        except DataError as err:
            if on_bad == "error":
                raise
            report.skip(err.reason, source)
    report.kept = len(records)
    check_presence(records, spec)
    report.labelled = {f: sum(getattr(r, f) is not None for r in records) for f in LABEL_FIELDS}
    return records, report


def iter_preference_rows(spec: str, split: str = "train") -> Iterator[tuple[str, dict, bool]]:
    """(source, raw row, usable) for each row of ``spec``; a malformed row raises DataError as loading does, and
    ``usable`` is False for a row that loading would skip (alignlab.data.labels rewrites rows with it)."""
    for source, row in _iter_rows(spec, split):
        try:
            _row_to_pair(row, source)
        except _Skip:
            yield source, row, False
            continue
        yield source, row, True


def parse_hh_dialogue(text: str, source: str) -> list[dict]:
    """Parse ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` into chat messages with stripped contents.

    Consecutive same-role turns are merged; a trailing empty Assistant turn (the generation cue that
    ends an HH prompt) is dropped. Only ``\\n\\nHuman:``/``\\n\\nAssistant:`` start turns: "Human:" inside
    a turn without the blank line before it is text (HH has such rows).
    """
    if text.startswith("Human:"):
        text = "\n\n" + text
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3 or parts[1] != "Human":
        raise DataError(f"{source}: not an HH dialogue (must start with '\\n\\nHuman:')", "bad_dialogue")
    turns = list(zip(parts[1::2], parts[2::2]))
    if turns[-1][0] == "Assistant" and not turns[-1][1].strip():
        turns.pop()  # the generation cue; dropped before merging so it can't merge into a previous turn
    messages: list[dict] = []
    for tag, body in turns:
        role = "user" if tag == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = (messages[-1]["content"] + "\n\n" + body.strip()).strip()
        else:
            messages.append({"role": role, "content": body.strip()})
    return messages


def load_prompts(spec: str, limit: int | None = None) -> list[tuple[str | list[dict], str]]:
    """(prompt, source) pairs for generation/eval.

    ``.txt``: one prompt per line (blank lines ignored). ``.jsonl[.gz]`` / ``hf:``: each row needs one of
    ``prompt`` (string or messages), ``instruction`` (string, AlpacaEval) or ``messages`` (a message list
    ending with a user turn), looked up in that order. Anything unusable raises ``DataError`` naming the
    source (file:line) and field: there is no report here, so nothing may be dropped.
    """
    rows = _iter_txt(Path(spec)) if spec.endswith(".txt") else _iter_rows(spec, "train")  # "f.jsonl[a:b]" too
    out: list[tuple[str | list[dict], str]] = []
    for source, row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append((_prompt_of(row, source), source))
    return out


# ----------------------------------------------------------------------------- reading rows


_ROW_RANGE = re.compile(r"^(?P<path>.+\.jsonl(?:\.gz)?)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")


def _row_range(spec: str) -> tuple[str, slice | None]:
    """``"f.jsonl.gz[a:b]"`` -> ("f.jsonl.gz", slice(a, b)); any other spec -> (spec, None)."""
    m = _ROW_RANGE.match(spec)
    if not m:
        return spec, None
    start, stop = (int(v) if v else None for v in (m["start"], m["stop"]))
    return m["path"], slice(start, stop)


def _iter_rows(spec: str, split: str) -> Iterator[tuple[str, object]]:
    """Yield (source, row) where row is the parsed object or the DataError reading it raised."""
    path, rows = _row_range(spec)
    if rows is not None:
        return iter(list(_iter_jsonl(Path(path)))[rows])  # a negative bound needs the row count: read them all
    if spec.startswith("hf:"):
        return _iter_hf(spec, split)
    if os.path.isdir(spec):
        return _iter_hf("hf:" + spec, split)
    if spec.endswith((".jsonl", ".jsonl.gz")):
        return _iter_jsonl(Path(spec))
    raise DataError(
        f"{spec!r}: unsupported input; expected .jsonl, .jsonl.gz, hf:org/name[:config] or a dataset directory",
        "unsupported",
    )


def _iter_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                source = f"{path}:{lineno}"
                try:  # decode per line (not via a text wrapper) so an encoding error names its line
                    text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    yield source, DataError(f"{source}: malformed JSON: not UTF-8 ({e.reason})", "malformed_json")
                    continue
                if text.strip():
                    yield source, _parse_json(text, source)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # not per-row: the rest of the file is unreadable
        raise DataError(f"{path}: unreadable gzip after line {lineno}: {e}", "unreadable") from e


def _parse_json(text: str, source: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return DataError(f"{source}: malformed JSON: {e.msg} (column {e.colno})", "malformed_json")


def _iter_txt(path: Path) -> Iterator[tuple[str, object]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{lineno}", line.rstrip("\r\n")


def _iter_hf(spec: str, split: str) -> Iterator[tuple[str, object]]:
    name = spec[len("hf:") :]
    ds = _open_hf(spec, name, split)
    for i, row in enumerate(ds):
        yield f"hf:{name}[{split}][{i}]", row


def _open_hf(spec: str, name: str, split: str):
    import datasets  # slow import; only paid by hf: users

    try:
        if os.path.isdir(name) and _is_saved_dataset(name):
            ds = datasets.load_from_disk(name)
        elif os.path.isdir(name):
            ds = datasets.load_dataset(name, split=split)
        else:
            path, _, config = name.partition(":")
            ds = datasets.load_dataset(path, config or None, split=split)
    except Exception as e:  # datasets raises many types (offline, not found, bad config); name the spec
        raise DataError(f"could not load {spec!r} (split {split!r}): {type(e).__name__}: {e}", "unreadable") from e
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{spec!r} has no split {split!r} (has {sorted(ds)})", "unreadable")
        return ds[split]
    if ds.split is not None and str(ds.split) != split:  # a saved single split: don't hand back the wrong one
        raise DataError(f"{spec!r} holds split {str(ds.split)!r}, not {split!r}", "unreadable")
    return ds


def _is_saved_dataset(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json"))


# ----------------------------------------------------------------------------- rows -> pairs


def _row_to_pair(row: object, source: str) -> tuple:
    """(prompt, chosen, rejected) for one row; raises DataError (bad) or _Skip (unusable)."""
    if isinstance(row, DataError):
        raise row
    if not isinstance(row, dict):
        raise DataError(f"{source}: row must be a JSON object, got {type(row).__name__}", "bad_type")
    chosen, rejected = _text_field(row, "chosen", source), _text_field(row, "rejected", source)
    if type(chosen) is not type(rejected):
        raise DataError(
            f"{source}: field 'rejected' is a {_kind(rejected)} but 'chosen' is a {_kind(chosen)}", "bad_type"
        )
    if row.get("prompt") is None and isinstance(chosen, str) and (HH_HUMAN in chosen or HH_HUMAN in rejected):
        prompt, chosen, rejected = _from_hh(chosen, rejected, source)
    elif row.get("prompt") is None and isinstance(chosen, list):
        prompt, chosen, rejected = _from_conversations(chosen, rejected)
    else:
        prompt = _text_field(row, "prompt", source)
        prompt, chosen, rejected = _from_explicit(prompt, chosen, rejected, source)
    _check_usable(prompt, chosen, rejected)
    return prompt, chosen, rejected


def _text_field(row: dict, field: str, source: str):
    value = row.get(field)
    if value is None:
        raise DataError(f"{source}: missing required field {field!r}", "missing_field")
    if isinstance(value, list):
        _check_messages(value, field, source)
    elif not isinstance(value, str):
        raise DataError(
            f"{source}: field {field!r} must be a string or a list of messages, got {type(value).__name__}", "bad_type"
        )
    return value


def _check_messages(messages: list, field: str, source: str) -> None:
    for i, m in enumerate(messages):
        where = f"{source}: field {field!r} message {i}"
        if not isinstance(m, dict):
            raise DataError(
                f"{where}: must be an object with 'role' and 'content', got {type(m).__name__}", "bad_messages"
            )
        if m.get("role") not in ROLES:
            raise DataError(f"{where}: role {m.get('role')!r} is not one of {ROLES}", "bad_messages")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: content must be a string, got {type(m.get('content')).__name__}", "bad_messages")


def _from_hh(chosen: str, rejected: str, source: str) -> tuple:
    prompt_c, completion_c = _split_hh(chosen, "chosen", source)
    prompt_r, completion_r = _split_hh(rejected, "rejected", source)
    if prompt_c != prompt_r:
        raise _Skip("prompt_mismatch")
    return parse_hh_dialogue(prompt_c, source), completion_c, completion_r


def _split_hh(text: str, field: str, source: str) -> tuple[str, str]:
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(f"{source}: field {field!r}: HH dialogue has no '\\n\\nAssistant:' turn", "bad_dialogue")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:].strip()


def _from_conversations(chosen: list, rejected: list) -> tuple:
    prompt_c, completion_c = _split_conversation(chosen)
    prompt_r, completion_r = _split_conversation(rejected)
    if _key(prompt_c) != _key(prompt_r):
        raise _Skip("prompt_mismatch")
    return prompt_c, completion_c, completion_r


def _split_conversation(messages: list) -> tuple[list, list]:
    """Split before the trailing run of assistant turns."""
    cut = len(messages)
    while cut and messages[cut - 1]["role"] == "assistant":
        cut -= 1
    return messages[:cut], messages[cut:]


def _from_explicit(prompt, chosen, rejected, source: str) -> tuple:
    if isinstance(chosen, list) and any(m["role"] != "assistant" for m in chosen + rejected):
        # Whole conversations despite an explicit prompt (UltraFeedback style): they must agree with it.
        conv_prompt, chosen, rejected = _from_conversations(chosen, rejected)
        if not _same_prompt(prompt, conv_prompt):
            raise _Skip("prompt_mismatch")
        return conv_prompt, chosen, rejected
    if isinstance(prompt, str) and isinstance(chosen, list):
        raise DataError(f"{source}: field 'chosen' is a message list but 'prompt' is a string", "bad_type")
    return prompt, chosen, rejected


def _same_prompt(given, conv_prompt: list) -> bool:
    if isinstance(given, list):
        return _key(given) == _key(conv_prompt)
    return (
        bool(conv_prompt) and conv_prompt[-1]["role"] == "user" and conv_prompt[-1]["content"].strip() == given.strip()
    )


def _check_usable(prompt, chosen, rejected) -> None:
    if isinstance(prompt, list) and (not prompt or prompt[-1]["role"] != "user"):
        raise _Skip("prompt_not_ending_with_user")
    if _is_empty(chosen) or _is_empty(rejected):
        raise _Skip("empty_response")
    if _key(chosen) == _key(rejected):
        raise _Skip("identical_pair")


def _is_empty(text) -> bool:
    if isinstance(text, str):
        return not text.strip()
    return not any(m["role"] == "assistant" and m["content"].strip() for m in text)


def _key(text):
    """Comparable form: stripped text; messages as (role, content) so extra keys (Arrow nulls) don't matter."""
    if isinstance(text, str):
        return text.strip()
    return [(m["role"], m["content"].strip()) for m in text]


def _kind(value) -> str:
    return "string" if isinstance(value, str) else "message list"


# ----------------------------------------------------------------------------- prompts


def _prompt_of(row: object, source: str):
    if isinstance(row, DataError):
        raise row
    if isinstance(row, str):  # a .txt line
        return row
    if not isinstance(row, dict):
        raise DataError(f"{source}: row must be a JSON object, got {type(row).__name__}", "bad_type")
    field = next((f for f in PROMPT_FIELDS if row.get(f) is not None), None)
    if field is None:
        raise DataError(f"{source}: missing prompt field (one of {PROMPT_FIELDS})", "missing_field")
    value = _text_field(row, field, source)
    if isinstance(value, str):
        if field == "messages":
            raise DataError(f"{source}: field 'messages' must be a list of messages, got str", "bad_type")
        if not value.strip():
            raise DataError(f"{source}: field {field!r} is empty", "empty_prompt")
    elif not value or value[-1]["role"] != "user":
        raise DataError(f"{source}: field {field!r} must end with a user message", "bad_messages")
    return value


def load_scored_rows(spec: str, limit: int | None = None) -> list[ScoredRow]:
    """Rows to score: ``prompt`` (a string, or messages: the last user turn is the prompt text), ``response``
    (string) and optional ``finished`` (bool: ended on EOS; absent = unknown). Anything else stops with
    ``file:line`` and the field; nothing is dropped."""
    out: list[ScoredRow] = []
    for source, row in _iter_rows(spec, "train"):
        if limit is not None and len(out) >= limit:
            break
        prompt = _prompt_of(row, source)
        if not isinstance(prompt, str):
            prompt = prompt[-1]["content"]
        response = row.get("response", row.get("completion"))
        if not isinstance(response, str):
            raise DataError(
                f"{source}: field 'response' must be a string, got {type(response).__name__}", "missing_field"
            )
        finished = row.get("finished")
        if finished is not None and not isinstance(finished, bool):
            raise DataError(f"{source}: field 'finished' must be true/false, got {finished!r}", "bad_type")
        out.append(ScoredRow(prompt, response, finished, source))
    if not out:
        raise DataError(f"{spec}: no rows to score", "empty")
    return out
