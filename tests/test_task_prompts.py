"""The packaged prompt set: size, uniqueness, the fixed split, and loader validation."""
import collections

import pytest

from alignlab.task.prompts import TaskPrompt, load_task_prompts, parse_task_prompts


@pytest.fixture(scope="module")
def prompts():
    return load_task_prompts()


def test_size_and_unique_ids(prompts):
    assert len(prompts) >= 340
    assert all(isinstance(p, TaskPrompt) for p in prompts)
    assert len({p.id for p in prompts}) == len(prompts)
    norm = [" ".join(p.instruction.lower().split()) for p in prompts]
    assert len(set(norm)) == len(norm), "duplicate instructions"


def test_split_counts_and_loader_filter(prompts):
    train, ev = load_task_prompts("train"), load_task_prompts("eval")
    assert len(ev) == 80
    assert len(train) + len(ev) == len(prompts)
    assert {p.split for p in train} == {"train"} and {p.split for p in ev} == {"eval"}
    with pytest.raises(ValueError, match="split"):
        load_task_prompts("test")


def test_every_category_in_both_splits(prompts):
    counts = collections.Counter((p.category, p.split) for p in prompts)
    cats = {p.category for p in prompts}
    assert len(cats) >= 10
    for c in cats:
        assert counts[(c, "eval")] >= 5, c
        assert counts[(c, "train")] >= 15, c


def test_split_follows_documented_rule(prompts):
    # Item i of N is eval iff floor((i+1)*80/N) > floor(i*80/N) (see alignlab/task/prompts.py).
    n = len(prompts)
    assert [p.split == "eval" for p in prompts] == [(i + 1) * 80 // n > i * 80 // n for i in range(n)]


def test_instructions_are_short(prompts):
    for p in prompts:
        assert 3 <= len(p.instruction.split()) <= 60, p.id
        assert p.instruction == p.instruction.strip(), p.id


def test_duplicate_id_error_names_line():
    text = (
        '{"id": "a", "category": "c", "instruction": "x", "split": "train"}\n'
        '\n'
        '{"id": "a", "category": "c", "instruction": "y", "split": "eval"}\n'
    )
    with pytest.raises(ValueError, match=r"f\.jsonl:3: duplicate id 'a' \(first seen on line 1\)"):
        parse_task_prompts(text, source="f.jsonl")


@pytest.mark.parametrize(
    "line, msg",
    [
        ("{not json", "not valid JSON"),
        ('{"id": "a", "category": "c", "split": "train"}', "instruction"),
        ('{"id": "a", "category": "c", "instruction": "x", "split": "dev"}', "split must be"),
    ],
)
def test_bad_lines_name_the_line(line, msg):
    with pytest.raises(ValueError, match=f"f.jsonl:1: .*{msg}"):
        parse_task_prompts(line, source="f.jsonl")
