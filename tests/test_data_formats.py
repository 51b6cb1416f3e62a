"""Tests for alignlab.data.formats: every input format, every bad-input rule, and the real shared files."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignlab.data.formats import DataError, load_preference_records, load_prompts, parse_hh_dialogue
from alignlab.data.types import LoadReport

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HH_FILE = SHARED / "hh_rlhf_harmless_base_test.jsonl.gz"
ALPACA_FILE = SHARED / "alpaca_eval_instructions.jsonl"


def write_jsonl(path: Path, rows: list) -> Path:
    """rows: objects (dumped as JSON) or raw strings (written verbatim, for malformed lines)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    data = "\n".join(lines) + "\n"
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def hh(*turns: str) -> str:
    """hh("q", "a", "q2", "a2") -> '\\n\\nHuman: q\\n\\nAssistant: a...' (alternating, Human first)."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def consistent(report: LoadReport) -> bool:
    return report.read == report.kept + sum(report.skipped.values())


# ----------------------------------------------------------------------------- real HH file


@pytest.fixture(scope="module")
def hh_real():
    if not HH_FILE.exists():
        pytest.skip(f"shared data file {HH_FILE} not present (see shared/data/README.md)")
    return load_preference_records(str(HH_FILE))


def test_hh_real_counts(hh_real):
    # Counted independently from the raw file: 5 rows whose prompts differ before the last Assistant turn,
    # 4 rows (all with an empty *chosen* reply), no identical pairs, and every prompt ends with a user turn.
    records, report = hh_real
    assert report.read == 2312
    assert report.skipped == {"prompt_mismatch": 5, "empty_response": 4}
    assert report.kept == len(records) == 2303
    assert consistent(report)
    lines = lambda reason: [int(s.rsplit(":", 1)[1]) for s in report.examples[reason]]  # noqa: E731
    assert lines("prompt_mismatch") == [1255, 1689, 1951, 1953, 2037]
    assert lines("empty_response") == [87, 517, 926, 1104]
    assert "read 2312, kept 2303, skipped 9" in report.summary()


def test_hh_real_structure(hh_real):
    records, _ = hh_real
    for r in records:
        roles = [m["role"] for m in r.prompt]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"], r.source
        assert all(m["content"] and m["content"] == m["content"].strip() for m in r.prompt), r.source
        for completion in (r.chosen, r.rejected):
            assert isinstance(completion, str) and completion == completion.strip() and completion
            assert not completion.startswith("Assistant:"), r.source
        assert r.chosen != r.rejected


def test_hh_real_known_row(hh_real):
    records, _ = hh_real
    row = next(r for r in records if r.source == f"{HH_FILE}:1937")
    assert row.prompt == [
        user("You\u2019re not worth my time."),
        assistant("Oh, really?"),
        user("Yes. Because you\u2019re not smart."),
    ]
    assert row.chosen == "I am not, huh?"
    assert row.rejected == "Oh. I don\u2019t like being told that I\u2019m not smart."


def test_hh_real_consecutive_assistant_turns_are_merged(hh_real):
    # Line 764 reads Human, Assistant, Assistant, Human, Assistant: the two middle turns become one.
    records, _ = hh_real
    row = next(r for r in records if r.source == f"{HH_FILE}:764")
    assert [m["role"] for m in row.prompt] == ["user", "assistant", "user"]
    text = row.prompt[1]["content"]
    assert text.startswith("Not especially!") and "Maybe it\u2019s the best choice?\n\nWow, that sounds" in text


# ----------------------------------------------------------------------------- HH parsing


def test_parse_hh_dialogue():
    text = hh("hi", "hello", "say  Human: this stays text", "")
    assert text.endswith("\n\nAssistant: ")
    assert parse_hh_dialogue(text, "x") == [user("hi"), assistant("hello"), user("say  Human: this stays text")]
    assert parse_hh_dialogue(hh("a", "b"), "x") == [user("a"), assistant("b")]  # no cue: keeps last turn
    assert parse_hh_dialogue("Human: a\n\nAssistant:", "x") == [user("a")]  # no leading blank line
    merged = parse_hh_dialogue("\n\nHuman: q\n\nAssistant: one\n\nAssistant: two\n\nHuman: r\n\nAssistant:", "x")
    assert merged == [user("q"), assistant("one\n\ntwo"), user("r")]


@pytest.mark.parametrize("text", ["hello", "preamble\n\nHuman: q\n\nAssistant:", "\n\nAssistant: a\n\nHuman: q"])
def test_parse_hh_dialogue_rejects_non_hh(text):
    with pytest.raises(DataError, match=r"src:3: not an HH dialogue"):
        parse_hh_dialogue(text, "src:3")


def test_hh_file_skips_are_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": hh("q", "good"), "rejected": hh("q", "bad")},
            {"chosen": hh("q", "a", "q2", "good"), "rejected": hh("q", "DIFFERENT", "q2", "bad")},
            {"chosen": hh("q", " "), "rejected": hh("q", "bad")},
            {"chosen": hh("q", "same"), "rejected": hh("q", " same ")},
            {"chosen": "\n\nHuman: q but no assistant", "rejected": hh("q", "bad")},
        ],
    )
    records, report = load_preference_records(str(path), on_bad="skip")
    assert [r.chosen for r in records] == ["good"] and records[0].prompt == [user("q")]
    assert report.skipped == {"prompt_mismatch": 1, "empty_response": 1, "identical_pair": 1, "bad_dialogue": 1}
    assert report.examples["prompt_mismatch"] == [f"{path}:2"]
    with pytest.raises(DataError, match=rf"{path}:5: field 'chosen': HH dialogue has no"):
        load_preference_records(str(path))


# ----------------------------------------------------------------------------- TRL formats


def test_trl_string_format(tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [
            {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5", "extra": 1},
            {"prompt": "Q: sky?", "chosen": " blue", "rejected": " green"},
        ],
    )
    records, report = load_preference_records(str(path))
    assert (records[0].prompt, records[0].chosen, records[0].rejected) == ("Q: 2+2?", " 4", " 5")  # spaces kept
    assert [r.source for r in records] == [f"{path}:1", f"{path}:2"]
    assert (report.read, report.kept, report.skipped, report.spec) == (2, 2, {}, str(path))


def test_trl_message_format(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, user("hi")]
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"prompt": prompt, "chosen": [assistant("hello")], "rejected": [assistant("go away")]},
            {"prompt": [user("hi")], "chosen": "hello", "rejected": "go away"},  # message prompt, text replies
            {"prompt": [user("hi"), assistant("hey")], "chosen": "a", "rejected": "b"},
            {"prompt": [user("hi")], "chosen": [assistant(" ")], "rejected": [assistant("x")]},
        ],
    )
    records, report = load_preference_records(str(path))
    assert records[0].prompt == prompt and records[0].chosen == [assistant("hello")]
    assert records[1].chosen == "hello"
    assert report.skipped == {"prompt_not_ending_with_user": 1, "empty_response": 1}


def test_trl_implicit_prompt_format(tmp_path):
    shared = [{"role": "system", "content": "sys"}, user("q1"), assistant("a1"), user("q2")]
    path = write_jsonl(
        tmp_path / "i.jsonl",
        [
            {"chosen": shared + [assistant("good")], "rejected": shared + [assistant("bad")]},
            {"chosen": shared + [assistant("good")], "rejected": [user("other")] + [assistant("bad")]},
            {"chosen": shared, "rejected": shared + [assistant("bad")]},  # chosen has no reply
            {"chosen": [assistant("no user turn")], "rejected": [assistant("x")]},
        ],
    )
    records, report = load_preference_records(str(path))
    assert len(records) == 1
    assert records[0].prompt == shared
    assert records[0].chosen == [assistant("good")] and records[0].rejected == [assistant("bad")]
    assert report.skipped == {"prompt_mismatch": 1, "empty_response": 1, "prompt_not_ending_with_user": 1}


def test_prompt_with_full_conversations(tmp_path):
    # UltraFeedback-binarized style: prompt string plus chosen/rejected that repeat the user turn.
    path = write_jsonl(
        tmp_path / "u.jsonl",
        [
            {"prompt": "q", "chosen": [user("q"), assistant("good")], "rejected": [user("q"), assistant("bad")]},
            {"prompt": "q", "chosen": [user("not q"), assistant("a")], "rejected": [user("not q"), assistant("b")]},
        ],
    )
    records, report = load_preference_records(str(path))
    assert records[0].prompt == [user("q")] and records[0].chosen == [assistant("good")]
    assert report.skipped == {"prompt_mismatch": 1}


def test_blank_lines_ignored_and_line_numbers_kept(tmp_path):
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "b.jsonl", ["", row, "   ", "", row])
    records, report = load_preference_records(str(path))
    assert [r.source for r in records] == [f"{path}:2", f"{path}:5"]
    assert (report.read, report.kept, report.skipped) == (2, 2, {})


# ----------------------------------------------------------------------------- bad input

GOOD = {"prompt": "p", "chosen": "a", "rejected": "b"}
BAD_ROWS = [  # (line 2 of the file, reason, substrings the error must contain besides file:2)
    ('{"prompt": "p", "chosen": "a",', "malformed_json", ["malformed JSON", "Expecting"]),
    ({"prompt": "p", "chosen": "a"}, "missing_field", ["missing required field 'rejected'"]),
    ({"prompt": "p", "chosen": None, "rejected": "b"}, "missing_field", ["missing required field 'chosen'"]),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "bad_type", ["field 'chosen'", "got int"]),
    ({"prompt": {"x": 1}, "chosen": "a", "rejected": "b"}, "bad_type", ["field 'prompt'", "got dict"]),
    ({"chosen": "a", "rejected": "b"}, "missing_field", ["missing required field 'prompt'"]),
    ([1, 2], "bad_type", ["row must be a JSON object", "got list"]),
    ({"prompt": "p", "chosen": "a", "rejected": [assistant("b")]}, "bad_type", ["field 'rejected'"]),
    (
        {"prompt": "p", "chosen": [assistant("a")], "rejected": [assistant("b")]},
        "bad_type",
        ["field 'chosen'", "'prompt' is a string"],
    ),
    (
        {"prompt": [user("p"), {"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"},
        "bad_messages",
        ["field 'prompt' message 1", "role 'bot'"],
    ),
    (
        {"prompt": [user("p")], "chosen": [{"role": "assistant", "content": 7}], "rejected": "b"},
        "bad_messages",
        ["field 'chosen' message 0", "content must be a string"],
    ),
    ({"prompt": [user("p")], "chosen": ["a"], "rejected": ["b"]}, "bad_messages", ["field 'chosen' message 0"]),
]


@pytest.mark.parametrize("bad,reason,needles", BAD_ROWS)
def test_bad_rows_raise_naming_file_line_field(tmp_path, bad, reason, needles):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(DataError) as info:
        load_preference_records(str(path))
    message = str(info.value)
    assert isinstance(info.value, ValueError) and info.value.reason == reason
    assert message.startswith(f"{path}:2: ")
    for needle in needles:
        assert needle in message


def test_on_bad_skip_counts_every_case(tmp_path):
    rows = [GOOD] + [bad for bad, _, _ in BAD_ROWS] + [GOOD]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    records, report = load_preference_records(str(path), on_bad="skip")
    assert [r.source for r in records] == [f"{path}:1", f"{path}:{len(rows)}"]
    expected: dict[str, int] = {}
    for _, reason, _ in BAD_ROWS:
        expected[reason] = expected.get(reason, 0) + 1
    assert report.skipped == expected
    assert expected == {"malformed_json": 1, "missing_field": 3, "bad_type": 5, "bad_messages": 3}
    assert report.examples["malformed_json"] == [f"{path}:2"]
    assert report.read == len(rows) and consistent(report)


def test_invalid_utf8_is_malformed_line(tmp_path):
    path = tmp_path / "enc.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON: not UTF-8"):
        load_preference_records(str(path))
    _, report = load_preference_records(str(path), on_bad="skip")
    assert report.skipped == {"malformed_json": 1}


def test_argument_and_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="on_bad"):
        load_preference_records("x.jsonl", on_bad="ignore")
    with pytest.raises(DataError, match="unsupported input"):
        load_preference_records(str(tmp_path / "data.csv"))
    with pytest.raises(FileNotFoundError):
        load_preference_records(str(tmp_path / "missing.jsonl"))


# ----------------------------------------------------------------------------- gz and limit


def test_gz_support(tmp_path):
    rows = [GOOD, "", {"chosen": hh("q", "good"), "rejected": hh("q", "bad")}, "{broken"]
    path = write_jsonl(tmp_path / "d.jsonl.gz", rows)
    records, report = load_preference_records(str(path), on_bad="skip")
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"]
    assert records[1].prompt == [user("q")] and records[1].chosen == "good"
    assert report.skipped == {"malformed_json": 1} and report.examples["malformed_json"] == [f"{path}:4"]


def test_truncated_gz_names_file(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl.gz", [GOOD] * 200)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=rf"{path}: unreadable gzip"):
        load_preference_records(str(path))


def test_limit_counts_kept_records(tmp_path):
    path = write_jsonl(tmp_path / "l.jsonl", [GOOD, {**GOOD, "chosen": ""}, GOOD, GOOD, GOOD])
    records, report = load_preference_records(str(path), limit=2)
    assert [r.source for r in records] == [f"{path}:1", f"{path}:3"]
    assert (report.read, report.kept, report.skipped) == (3, 2, {"empty_response": 1})
    assert load_preference_records(str(path), limit=0)[1].read == 0


# ----------------------------------------------------------------------------- prompts


def test_load_prompts_alpaca_eval():
    if not ALPACA_FILE.exists():
        pytest.skip(f"shared data file {ALPACA_FILE} not present (see shared/data/README.md)")
    prompts = load_prompts(str(ALPACA_FILE))
    assert len(prompts) == 805
    assert all(isinstance(p, str) and p.strip() for p, _ in prompts)
    assert prompts[0][1] == f"{ALPACA_FILE}:1" and prompts[-1][1] == f"{ALPACA_FILE}:805"
    assert len(load_prompts(str(ALPACA_FILE), limit=3)) == 3


def test_load_prompts_jsonl_and_txt(tmp_path):
    convo = [{"role": "system", "content": "s"}, user("u")]
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "a"},
            "",
            {"instruction": "b"},
            {"messages": convo},
            {"prompt": [user("c")], "instruction": "ignored"},
        ],
    )
    assert load_prompts(str(path)) == [
        ("a", f"{path}:1"),
        ("b", f"{path}:3"),
        (convo, f"{path}:4"),
        ([user("c")], f"{path}:5"),
    ]
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second\n", encoding="utf-8")
    assert load_prompts(str(txt)) == [("first prompt", f"{txt}:1"), ("  second", f"{txt}:3")]


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"text": "x"}, "missing prompt field"),
        ({"instruction": "  "}, "field 'instruction' is empty"),
        ({"messages": [user("q"), assistant("a")]}, "field 'messages' must end with a user message"),
        ({"messages": "q"}, "field 'messages' must be a list"),
        ({"prompt": 5}, "field 'prompt'"),
        ('{"prompt": ', "malformed JSON"),
    ],
)
def test_load_prompts_errors_name_file_line(tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, bad])
    with pytest.raises(DataError) as info:
        load_prompts(str(path))
    assert str(info.value).startswith(f"{path}:2: ") and needle in str(info.value)


# ----------------------------------------------------------------------------- Hugging Face datasets


def test_hf_local_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {"prompt": [user("q")], "chosen": [assistant("good")], "rejected": [assistant("bad")]},
        {"prompt": [user("q")], "chosen": [assistant("same")], "rejected": [assistant("same")]},
    ]
    directory = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(directory))
    records, report = load_preference_records(f"hf:{directory}")
    assert len(records) == 1 and records[0].source == f"hf:{directory}[train][0]"
    assert records[0].prompt == [user("q")] and records[0].chosen == [assistant("good")]
    assert report.skipped == {"identical_pair": 1}
    assert report.examples["identical_pair"] == [f"hf:{directory}[train][1]"]
    assert load_preference_records(str(directory))[1].kept == 1  # a bare directory path works too


def test_hf_dataset_dict_splits_and_bad_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    hh_rows = [
        {"chosen": hh("q", "good"), "rejected": hh("q", "bad")},
        {"chosen": hh("q", "a"), "rejected": "plain text"},
    ]
    directory = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(hh_rows[:1]), "test": datasets.Dataset.from_list(hh_rows)}
    ).save_to_disk(str(directory))
    assert load_preference_records(f"hf:{directory}")[1].kept == 1
    with pytest.raises(DataError, match=rf"hf:{directory}\[test\]\[1\]: field 'rejected'"):
        load_preference_records(f"hf:{directory}", split="test")
    _, report = load_preference_records(f"hf:{directory}", split="test", on_bad="skip")
    assert report.skipped == {"bad_dialogue": 1}
    with pytest.raises(DataError, match="has no split 'validation'"):
        load_preference_records(f"hf:{directory}", split="validation")


def test_hf_offline_error_names_spec(tmp_path):
    pytest.importorskip("datasets")
    env = {
        **os.environ,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "OMP_NUM_THREADS": "1",
    }
    code = (
        "from alignlab.data.formats import load_preference_records, DataError\n"
        "try:\n    load_preference_records('hf:alignlab-test/no-such-dataset:cfg')\n"
        "except DataError as e:\n    print('DataError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert "DataError: could not load 'hf:alignlab-test/no-such-dataset:cfg' (split 'train')" in out.stdout, out


def test_jsonl_row_range(tmp_path):
    """``path[a:b]`` selects rows Python-slice style over non-blank rows; sources keep the file's line numbers."""
    from alignlab.data.formats import load_preference_records

    p = tmp_path / "pairs.jsonl"
    rows = [json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}) for i in range(10)]
    p.write_text(rows[0] + "\n\n" + "\n".join(rows[1:]) + "\n")  # a blank line 2: not a row
    first, rep = load_preference_records(f"{p}[:3]")
    assert [r.prompt for r in first] == ["q0", "q1", "q2"] and rep.read == 3
    assert first[1].source.endswith(":3")  # the file's own line number, after the blank line
    last, _ = load_preference_records(f"{p}[-2:]")
    assert [r.prompt for r in last] == ["q8", "q9"]
    mid, _ = load_preference_records(f"{p}[4:6]")
    assert [r.prompt for r in mid] == ["q4", "q5"]
    assert load_preference_records(f"{p}[20:]")[0] == []
