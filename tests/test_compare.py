"""`alignlab compare`: runs side by side (the differing config keys, the final metrics, the curves), and the demo's
report as report.html; both pages checked in headless Chromium (no console errors, every table row present)."""

import json
import re
import shutil
from pathlib import Path

import pytest
from browser import CHROMIUM, MISSING, load_page, screenshot
from conftest import make_pairs
from launch import write_pairs
from tiny_models import tiny_causal_lm, tiny_tokenizer

from alignlab.cli import main
from alignlab.eval.report import write_report
from alignlab.eval.runs import RunDirError, compare_runs, table_rows
from alignlab.eval.runs_report import format_comparison, write_compare
from alignlab.recipes.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "runs" / "compare_test"
FETCH = re.compile(r"https?:|href=|@import|url\(|<script|<link")  # nothing may be fetched or run


def _train(out: Path, **kw) -> Path:
    """A 3-step tiny run (as tests/test_train.py builds them) in ``out``."""
    tok = tiny_tokenizer()
    cfg = dict(model="tiny", lora=False, report_to="none", cpu=True, gradient_checkpointing=False, max_steps=3)
    cfg |= dict(per_device_batch_size=4, learning_rate=3e-3, warmup_ratio=0.0, lr_scheduler="constant")
    cfg |= dict(max_length=128, max_prompt_length=64, output_dir=str(out))
    train(TrainConfig(**(cfg | kw)), tiny_causal_lm(tok, seed=0), tok, make_pairs(tok, 12))
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """DPO (beta 0.1, held-out eval rows) and IPO (beta 0.5): a comma in the first path, which must survive the CLI."""
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNLAB_CACHE", str(root / "cache"))  # the reference caches stay in this test's directory
        evals = write_pairs(root / "eval.jsonl", 6, seed=3)
        a = _train(root / "a,dpo", loss="dpo", beta=0.1, eval_data=str(evals))
        b = _train(root / "b_ipo", loss="ipo", beta=0.5)
    return a, b


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_compare_shows_differing_keys_and_the_last_rows(two_runs, tmp_path, capsys):
    a, b = two_runs
    c = compare_runs([a, b])
    assert set(c.differing) == {"loss", "beta", "eval_data"}
    assert "learning_rate" in c.shared and "max_steps" in c.shared and "output_dir" not in c.shared
    for run, final in zip((a, b), c.finals):  # the last training row of metrics.jsonl, its own numbers
        last = [r for r in _rows(run) if "eval_loss" not in r][-1]
        assert {k: final[k] for k in ("step", "loss", "rewards/accuracies", "rewards/margins")} == {
            k: last[k] for k in ("step", "loss", "rewards/accuracies", "rewards/margins")
        }
    last_eval = [r for r in _rows(a) if "eval_loss" in r][-1]
    assert c.finals[0]["eval_loss"] == last_eval["eval_loss"] and c.finals[0]["eval_step"] == 3
    assert not any(k.startswith("eval_") for k in c.finals[1])

    head, body, _ = table_rows(c)
    keys = [row[1] for row in body]
    assert head[2:] == ["a,dpo", "b_ipo"] and {"loss", "beta", "eval_data", "eval_loss"} <= set(keys)
    assert "learning_rate" not in keys and "max_steps" not in keys  # shared: listed once below, not in the table
    beta = next(row for row in body if row[1] == "beta")
    assert beta[2:] == ["0.1", "0.5"]
    assert next(row for row in body if row[1] == "eval_loss")[3] == "-"  # the IPO run has no eval rows

    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), f"output_dir={out}"]) == 0  # two bare arguments: runs=[A, B]
    printed = capsys.readouterr().out
    assert printed.startswith(format_comparison(c)) and "learning_rate=0.003" in printed
    data = json.loads((out / "compare.json").read_text())
    assert [r["path"] for r in data["runs"]] == [str(a), str(b)] and data["differing"] == c.differing
    assert data["runs"][0]["curves"]["loss"]["step"] == [1, 2, 3] and "eval_loss" in data["runs"][0]["curves"]


def test_missing_run_or_file_names_its_path(two_runs, tmp_path, capsys):
    a, _ = two_runs
    with pytest.raises(RunDirError, match=re.escape(str(tmp_path / "nope"))):
        compare_runs([a, tmp_path / "nope"])
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(a / "config.yaml", half / "config.yaml")
    with pytest.raises(RunDirError, match=re.escape(str(half / "metrics.jsonl"))):
        compare_runs([a, half])
    (half / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\nnot json\n')
    with pytest.raises(RunDirError, match=re.escape(f"{half / 'metrics.jsonl'}:2")):
        compare_runs([half])
    (half / "config.yaml").unlink()
    assert main(["compare", str(a), str(half)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(half / "config.yaml") in err


def _page_rows(dom: str) -> int:
    return len(re.findall(r"<tr[ >]", dom))


def _self_contained(page: str) -> None:
    assert "Content-Security-Policy" in page and not FETCH.search(page)
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', page))


def test_compare_html_in_headless_chromium(two_runs, tmp_path):
    c = compare_runs(list(two_runs))
    paths = write_compare(c, tmp_path / "cmp")
    page = paths["html"].read_text()
    _self_contained(page)
    _, body, _ = table_rows(c)
    assert page.count("<img ") == 1 and paths["png"].stat().st_size > 10000
    if CHROMIUM is None:
        pytest.skip(MISSING)
    dom = load_page(paths["html"], tmp_path)
    assert _page_rows(dom) == 1 + len(body)  # the head and every row of the one table
    for row in body:
        assert all(f">{cell}<" in dom for cell in row if cell), row
    screenshot(paths["html"], SHOTS / "compare.png", tmp_path, "1280,1500")


def _method(name: str, gold: float, diff: float, **kw) -> dict:
    row = dict(method=name, n_prompts=8, gold=gold, gold_se=0.02, diff=diff, diff_se=0.03, win_rate=0.5 + diff)
    return row | dict(win_se=0.07, kl=abs(diff) * 3, kl_se=0.05, kl_per_token=0.002, length=90.0, finished=0.5) | kw


def _decoding(name: str, diff: float, n: int = 8) -> dict:
    b = {"relevance": diff / 4, "length": diff / 2, "copy": diff / 4}
    row = dict(method=name, gold=0.6 + diff, gold_se=0.02, win_rate=0.5, diff=diff, diff_se=0.02, n_prompts=n)
    return row | dict(ms_per_token=3.5, lm_tokens_per_token=1.0, guide="gold", breakdown=b, breakdown_dominant="length")


def test_report_html_in_headless_chromium(tmp_path):
    terms = {"relevance": 0.02, "length": 0.05, "copy": 0.01}
    rows = [
        _method("base", 0.6, 0.0, diff_se=0.0, kl=0.0, kl_se=0.0, cut=0.5),
        _method("dpo (1 seed)", 0.68, 0.08, diff_ci=[0.02, 0.14], breakdown=terms, breakdown_dominant="length"),
        _method("dpo_treg (3 seeds)", 0.66, 0.06, gold_sd=0.01, breakdown=terms, breakdown_dominant="length"),
    ]
    drows = [_decoding("greedy", 0.0), _decoding("args", 0.04), _decoding("tq-direct (rollouts: aligned)", -0.02, 4)]
    samples = [{"prompt": "Say <script>alert(1)</script>", "base": "a & b", "dpo": "ok"}]
    md = write_report(
        tmp_path,
        rows,
        "demo report",
        ["note <b>1</b>"],
        samples,
        decoding_rows=drows,
        decoding_notes=["decoding note"],
        breakdown="| method | Δgold |\n|---|---|\n| dpo (1 seed) | +0.0800 |",
    )
    assert md.name == "report.md" and "## Decoding-time alignment" in md.read_text()
    assert (tmp_path / "report_decoding.png").stat().st_size > 5000
    page = (tmp_path / "report.html").read_text()
    _self_contained(page)
    assert page.count("<img ") == 2 and "1 seeds" not in page and "note &lt;b&gt;1&lt;/b&gt;" in page
    if CHROMIUM is None:
        pytest.skip(MISSING)
    dom = load_page(tmp_path / "report.html", tmp_path)
    # main table, gain by term (2 methods), decoding table, decoding gain by term (2 methods): each with its head
    assert _page_rows(dom) == (1 + 3) + (1 + 2) + (1 + 3) + (1 + 2)
    for name in [r["method"] for r in rows + drows]:
        assert f">{name}<" in dom, name
    assert "<script" not in dom and "decoding note" in dom and "a &amp; b" in dom
    screenshot(tmp_path / "report.html", SHOTS / "report.png", tmp_path, "1280,2000")
