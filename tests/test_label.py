"""`alignlab label`: pairs in -> labeled.jsonl (chosen = the judge's pick, p_chosen) + agreement numbers, with a
tiny local judge and with the stand-in HTTP server; the cache makes a re-run free; errors are one line."""

import json

import pytest
from judge_server import StandIn, completion
from tiny_models import save_tiny

from alignlab.cli import main as cli
from alignlab.data.formats import load_preference_records

HH = [
    {
        "chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt, knead, let it rise.",
        "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: No.",
    },
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Fine, thanks.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How are you?\n\nAssistant: Why?",
    },
]
TRL = [
    {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "A colour is a colour."},
    {"prompt": "2+2?", "chosen": "4", "rejected": "22"},
    {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("judge") / "tiny", seed=5)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_with_a_local_judge_then_the_cache(tmp_path, judge_dir):
    data = _write(tmp_path / "hh.jsonl", HH)
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["label", f"data={data}", f"judge={judge_dir}", f"output_dir={out}", f"cache_dir={cache}"]
    assert cli(args) == 0
    rows = _rows(out / "labeled.jsonl")
    assert len(rows) == 2
    for r in rows:
        assert set(r) == {
            "prompt",
            "chosen",
            "rejected",
            "p_chosen",
            "position_consistent",
            "tie",
            "original_label_agrees",
            "source",
        }
        assert 0.5 <= r["p_chosen"] <= 1.0 and isinstance(r["prompt"], list)
    s = json.loads((out / "agreement.json").read_text())
    assert s["pairs"] == s["labeled"] == 2 and s["judge_stats"]["requested"] == 4
    for key in ("agreement", "agreement_pass1", "position_consistency", "tie_rate", "longer_wins", "shorter_wins"):
        assert s[key] is not None and f"{key}_se" in s
    assert s["longer_wins"] == 1.0  # the data's chosen is the longer response in both rows
    assert (out / "config.yaml").is_file() and "agreement, pass 1 only" in (out / "report.md").read_text()
    records, report = load_preference_records(str(out / "labeled.jsonl"))  # the rows train / rm read
    assert report.kept == 2 and [r.p_chosen for r in records] == [r["p_chosen"] for r in rows]
    # the same pairs again: every order comes from the cache, nothing is asked
    assert cli(args + [f"output_dir={tmp_path / 'run2'}"]) == 0
    s2 = json.loads((tmp_path / "run2" / "agreement.json").read_text())
    assert s2["judge_stats"]["requested"] == 0 and s2["judge_stats"]["cache_hits"] == 4
    assert _rows(tmp_path / "run2" / "labeled.jsonl") == rows


def test_swapping_the_datas_labels_keeps_the_judges_pick_exactly(tmp_path, judge_dir):
    data = _write(tmp_path / "trl.jsonl", TRL)
    swapped = _write(tmp_path / "swapped.jsonl", [r | {"chosen": r["rejected"], "rejected": r["chosen"]} for r in TRL])
    common = [f"judge={judge_dir}", f"cache_dir={tmp_path / 'cache'}", "batch_size=2"]
    assert cli(["label", f"data={data}", f"output_dir={tmp_path / 'a'}", *common]) == 0
    assert cli(["label", f"data={swapped}", f"output_dir={tmp_path / 'b'}", "seed=7", *common]) == 0
    a, b = _rows(tmp_path / "a" / "labeled.jsonl"), _rows(tmp_path / "b" / "labeled.jsonl")
    for x, y in zip(a, b):
        assert (x["chosen"], x["rejected"], x["p_chosen"]) == (y["chosen"], y["rejected"], y["p_chosen"])
        if x["original_label_agrees"] is not None:
            assert x["original_label_agrees"] != y["original_label_agrees"]
    sa, sb = (json.loads((tmp_path / d / "agreement.json").read_text()) for d in "ab")
    assert sa["agreement"] == pytest.approx(1.0 - sb["agreement"])
    assert sb["judge_stats"]["requested"] == 0  # the swapped data asks the same orders: all cached


def test_agreement_mode_writes_numbers_only(tmp_path, judge_dir):
    data = _write(tmp_path / "trl.jsonl", TRL)
    out = tmp_path / "run"
    assert cli(["label", f"data={data}[1:]", f"judge={judge_dir}", "mode=agreement", f"output_dir={out}"]) == 0
    assert not (out / "labeled.jsonl").exists()
    s = json.loads((out / "agreement.json").read_text())
    assert s["pairs"] == 2 and s["mode"] == "agreement" and "labeled_file" not in s


def test_label_over_http_counts_skips_and_never_writes_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_TEST_KEY", "sk-never-logged-789")

    def script(path, payload):
        if "Blue." in payload["prompt"]:
            return 500, {"error": "boom"}, 0
        return 200, completion({"1": 0.9, "2": 0.1}), 0

    data = _write(tmp_path / "trl.jsonl", TRL)
    out = tmp_path / "run"
    with StandIn(script) as srv:
        args = ["label", f"data={data}", f"judge={srv.url}", "judge_model=m", "api=completions", f"output_dir={out}"]
        args += ["api_key_env=LABEL_TEST_KEY", "max_retries=1", "backoff_s=0", "requests_per_second=0"]
        assert cli(args) == 0
    s = json.loads((out / "agreement.json").read_text())
    assert s["skipped"] == 1 and s["skipped_by_reason"] == {"http_error": 1} and s["labeled"] == 2
    assert s["judge_stats"]["backend"]["retries/http_error"] == 2  # both orders of the failing pair, once each
    assert "http_error" in (out / "report.md").read_text()
    assert s["position_consistency"] == 0.0  # always "1": a pure position bias is never consistent
    for f in out.rglob("*"):
        assert f.is_dir() or "sk-never-logged" not in f.read_text()


def test_bad_configs_are_one_line_errors(tmp_path, judge_dir, capsys):
    data = _write(tmp_path / "trl.jsonl", TRL)
    assert cli(["label", f"judge={judge_dir}"]) == 2
    assert "label needs data=" in capsys.readouterr().err
    assert cli(["label", f"data={data}", "judge=http://127.0.0.1:9/v1", "batch_size=4"]) == 2
    assert "batch_size=4 is set but not read" in capsys.readouterr().err
    assert cli(["label", f"data={data}", f"judge={judge_dir}", "timeout_s=5"]) == 2
    assert "timeout_s=5.0 is set but not read" in capsys.readouterr().err
    assert cli(["label", f"data={data}", f"judge={judge_dir}", "template=nope", f"output_dir={tmp_path}/r"]) == 2
    assert "unknown judge template 'nope'" in capsys.readouterr().err
    # an endpoint that is not there: one line at start, before any pair is judged
    assert cli(["label", f"data={data}", "judge=http://127.0.0.1:9/v1", f"output_dir={tmp_path}/r2"]) == 2
    assert "judge endpoint http://127.0.0.1:9/v1" in capsys.readouterr().err
