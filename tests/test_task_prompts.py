"""The packaged prompt set: layout, the fixed train/validation/test split and its rule, uniqueness and
near-duplicates, line validity, and loader/parser errors (see docs/task_prompts.md)."""

import collections
import hashlib
import itertools
import json
import re
from importlib import resources

import pytest

from alignlab.task.prompts import (
    CATEGORIES,
    PER_CATEGORY,
    SPLITS,
    TEST_PER_CATEGORY,
    TRAIN_PER_CATEGORY,
    V1_PER_CATEGORY,
    VALIDATION_PER_CATEGORY,
    TaskPrompt,
    assign_split,
    load_task_prompts,
    parse_task_prompts,
    spread,
)

# sha256 of "id\tcategory\tinstruction" lines of the original 360 prompts (p0001-p0360): they must
# never change, or results reported on the old eval set (now inside test) stop being comparable.
V1_DIGEST = "33ec0ee91d435a55b70c840c5056b3c0ddbb96395851fa785180eb71bd107725"
# sha256 of "id\tsplit" lines of all 600 prompts: a change to the rule or the file that moves any
# prompt between splits must be deliberate (update this, the docs, and say so in the changelog).
SPLIT_DIGEST = "f46f1f84f9db3b066e997ff227ec33810b817c2145e88fed7f695505dfa801e3"


def _raw_text():
    return resources.files("alignlab.task").joinpath("prompts.jsonl").read_text(encoding="utf-8")


def _digest(lines):
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
def prompts():
    return load_task_prompts()


@pytest.fixture(scope="module")
def index_in_category(prompts):
    seen = collections.Counter()
    out = []
    for p in prompts:
        out.append(seen[p.category])
        seen[p.category] += 1
    return out


# --- layout -----------------------------------------------------------------------------------------


def test_size_categories_and_id_layout(prompts):
    n_cat = len(CATEGORIES)
    assert len(prompts) == PER_CATEGORY * n_cat == 600
    assert all(isinstance(p, TaskPrompt) for p in prompts)
    assert collections.Counter(p.category for p in prompts) == {c: PER_CATEGORY for c in CATEGORIES}
    # File order = id order p0001..p0600.
    assert [p.id for p in prompts] == [f"p{i:04d}" for i in range(1, len(prompts) + 1)]
    # v1 block: 30 per category, category-major; then the v2 extension: 20 per category, category-major.
    n_v2 = PER_CATEGORY - V1_PER_CATEGORY
    expected = [c for c in CATEGORIES for _ in range(V1_PER_CATEGORY)] + [c for c in CATEGORIES for _ in range(n_v2)]
    assert [p.category for p in prompts] == expected


def test_v1_prompts_unchanged(prompts):
    v1 = prompts[: V1_PER_CATEGORY * len(CATEGORIES)]
    assert _digest(f"{p.id}\t{p.category}\t{p.instruction}" for p in v1) == V1_DIGEST


# --- splits -----------------------------------------------------------------------------------------


def test_counts_per_split_and_category(prompts):
    counts = collections.Counter((p.category, p.split) for p in prompts)
    per = {"train": TRAIN_PER_CATEGORY, "validation": VALIDATION_PER_CATEGORY, "test": TEST_PER_CATEGORY}
    assert per == {"train": 29, "validation": 8, "test": 13}
    for c in CATEGORIES:
        for s in SPLITS:
            assert counts[(c, s)] == per[s], (c, s)
    totals = collections.Counter(p.split for p in prompts)
    assert totals == {"train": 348, "validation": 96, "test": 156}


def test_loader_filters_disjoint_splits(prompts):
    parts = {s: load_task_prompts(s) for s in SPLITS}
    for s, ps in parts.items():
        assert ps and {p.split for p in ps} == {s}
    ids = [p.id for s in SPLITS for p in parts[s]]
    assert len(ids) == len(set(ids)) == len(prompts)
    assert set(ids) == {p.id for p in prompts}
    # file order is kept inside each split
    assert [p.id for p in parts["test"]] == [p.id for p in prompts if p.split == "test"]


def test_file_matches_the_rule(prompts, index_in_category):
    bad = [
        (p.id, p.split, assign_split(p.category, i))
        for p, i in zip(prompts, index_in_category)
        if p.split != assign_split(p.category, i)
    ]
    assert not bad, f"split differs from assign_split (id, file, rule): {bad[:10]}"


def test_split_assignment_frozen(prompts):
    assert _digest(f"{p.id}\t{p.split}" for p in prompts) == SPLIT_DIGEST


def test_rule_counts_for_every_category():
    for c in CATEGORIES:
        got = collections.Counter(assign_split(c, i) for i in range(PER_CATEGORY))
        assert got == {"train": 29, "validation": 8, "test": 13}, c
        # validation is spread over both blocks: 5 from v1 (index < 30), 3 from v2
        v1_val = sum(assign_split(c, i) == "validation" for i in range(V1_PER_CATEGORY))
        assert v1_val == 5, c


def test_v1_eval_prompts_are_exactly_the_v1_part_of_test(prompts):
    # The v1 rule, written out independently: v1 item g of 360 was "eval" iff
    # floor((g+1)*80/360) > floor(g*80/360). Every one of those is test; no v1 train prompt is.
    n_v1 = V1_PER_CATEGORY * len(CATEGORIES)
    old_eval = {f"p{g + 1:04d}" for g in range(n_v1) if (g + 1) * 80 // n_v1 > g * 80 // n_v1}
    assert len(old_eval) == 80
    v1_test = {p.id for p in prompts[:n_v1] if p.split == "test"}
    assert v1_test == old_eval


def test_spread_picks_exactly_m_evenly():
    for n in range(1, 40):
        for m in range(0, n + 1):
            picks = [k for k in range(n) if spread(k, n, m)]
            assert len(picks) == m
            gaps = [b - a for a, b in zip(picks, picks[1:])]
            assert not gaps or max(gaps) - min(gaps) <= 1


def test_assign_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown category"):
        assign_split("poetry", 0)
    with pytest.raises(ValueError, match="index"):
        assign_split("tips", PER_CATEGORY)
    with pytest.raises(ValueError, match="index"):
        assign_split("tips", -1)


def test_old_split_name_eval_is_refused_with_guidance():
    with pytest.raises(ValueError, match=r"'eval'.*'test'.*reported.*'validation'.*tuning"):
        load_task_prompts("eval")
    with pytest.raises(ValueError, match="split must be one of"):
        load_task_prompts("dev")


# --- content ----------------------------------------------------------------------------------------


def test_unique_normalised_instructions(prompts):
    norm = collections.defaultdict(list)
    for p in prompts:
        norm[" ".join(_words(p.instruction))].append(p.id)
    dups = [ids for ids in norm.values() if len(ids) > 1]
    assert not dups, f"duplicate instructions (after lower-casing and dropping punctuation): {dups}"


def test_no_near_duplicates(prompts):
    sets = [(p.id, set(_words(p.instruction))) for p in prompts]
    close = [
        (a, b, round(len(x & y) / len(x | y), 2))
        for (a, x), (b, y) in itertools.combinations(sets, 2)
        if len(x & y) / len(x | y) > 0.8
    ]
    assert not close, f"word-set Jaccard > 0.8: {close}"


def test_no_prompt_is_another_plus_a_few_words(prompts):
    # Overlap coefficient |A & B| / min(|A|, |B|): catches padding a prompt with extra words
    # ("Explain why X." vs "Explain in simple terms why X."), which Jaccard lets through.
    # The set's largest value is 6/7 (templates such as 'Define "..." in one or two sentences.').
    sets = [(p.id, set(_words(p.instruction))) for p in prompts]
    close = [(a, b) for (a, x), (b, y) in itertools.combinations(sets, 2) if len(x & y) / min(len(x), len(y)) > 0.9]
    assert not close, f"one prompt's words are (almost) all inside another's: {close}"


def test_instructions_are_short_and_clean(prompts):
    for p in prompts:
        assert 3 <= len(p.instruction.split()) <= 60, p.id
        assert p.instruction == p.instruction.strip() and "  " not in p.instruction, p.id
        assert p.instruction[-1] in '.?!"', p.id


def test_summary_and_rewrite_carry_their_text(prompts):
    # The text to summarise / rewrite is inside the instruction, quoted after a colon.
    for p in prompts:
        if p.category not in ("summary", "rewrite"):
            continue
        m = re.search(r':\s*"(.+)"$', p.instruction)
        assert m, p.id
        assert len(m.group(1).split()) >= (15 if p.category == "summary" else 3), p.id


def test_every_line_is_a_valid_record():
    text = _raw_text()
    assert text.endswith("\n")
    pattern = re.compile(r"p\d{4}")
    for lineno, line in enumerate(text.split("\n")[:-1], start=1):
        assert line.strip(), f"blank line {lineno}"
        obj = json.loads(line)
        assert set(obj) == {"id", "category", "instruction", "split"}, lineno
        assert pattern.fullmatch(obj["id"]), lineno
        assert obj["category"] in CATEGORIES, lineno
        assert obj["split"] in SPLITS, lineno
        assert isinstance(obj["instruction"], str) and obj["instruction"].strip(), lineno
    assert len(parse_task_prompts(text)) == lineno


# --- parser errors name file:line and field ----------------------------------------------------------


def test_duplicate_id_error_names_line():
    text = (
        '{"id": "a", "category": "c", "instruction": "x", "split": "train"}\n'
        "\n"
        '{"id": "a", "category": "c", "instruction": "y", "split": "test"}\n'
    )
    with pytest.raises(ValueError, match=r"f\.jsonl:3: field 'id': duplicate id 'a' \(first seen on line 1\)"):
        parse_task_prompts(text, source="f.jsonl")


@pytest.mark.parametrize(
    "line, msg",
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"id": "a", "category": "c", "split": "train"}', r"field\(s\) \['instruction'\]"),
        ('{"id": "a", "category": "", "instruction": "x", "split": "train"}', r"field\(s\) \['category'\]"),
        ('{"id": "a", "category": "c", "instruction": "x", "split": "dev"}', "field 'split': split must be"),
        ('{"id": "a", "category": "c", "instruction": "x", "split": "eval"}', "field 'split': .*'test'.*'validation'"),
    ],
)
def test_bad_lines_name_the_line(line, msg):
    text = '{"id": "z", "category": "c", "instruction": "ok", "split": "train"}\n' + line
    with pytest.raises(ValueError, match=f"f.jsonl:2: .*{msg}"):
        parse_task_prompts(text, source="f.jsonl")


def test_balanced_subsets_cover_every_category():
    from alignlab.task.prompts import balanced

    test = load_task_prompts("test")
    first = balanced(test, 24)
    assert len(first) == 24 and {p.category for p in first} == {p.category for p in test}
    assert sorted(p.id for p in balanced(test)) == sorted(p.id for p in test)  # a permutation
