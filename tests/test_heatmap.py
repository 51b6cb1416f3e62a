"""`alignlab heatmap`: T-REG token rewards and the trained policy's implicit token rewards, as a self-contained HTML
page (checked in headless Chromium: loads without console errors, shows the token spans) and a PNG."""

import html
import json
import re
from pathlib import Path

import pytest
from browser import CHROMIUM, MISSING, load_page, screenshot
from test_treg import text_pairs
from tiny_models import save_tiny, tiny_causal_lm, tiny_tokenizer

from alignlab.eval.heatmap import heatmap_data, render_html

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "runs" / "heatmap_test" / "screenshot.png"


def test_heatmap_reference_only_is_self_contained():
    tok = tiny_tokenizer()
    pairs = text_pairs(tok, 2)
    heats = heatmap_data(tiny_causal_lm(tok), tok, pairs, "revision")
    assert heats[0].chosen.implicit is None and len(heats[0].chosen.rhat) == len(pairs[0].chosen_ids)
    page = render_html(heats, "t", ["note <b>"])
    assert page.count('class="tok"') == sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert "note &lt;b&gt;" in page and "β·log π/π_ref" not in page
    assert not re.search(r"https?:|src=|href=|@import|url\(|<script|<link", page)  # nothing to fetch


def test_cli_heatmap_after_training_in_headless_chromium(tmp_path):
    from alignlab.cli import main

    model_dir = save_tiny(tmp_path / "tiny_model")
    data = tmp_path / "prefs.jsonl"
    rows = [
        {"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad <{i}> & worse"} for i in range(6)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                f"model={model_dir}",
                f"data={data}",
                "loss=dpo_treg",
                "alpha=0.25",
                "lora=true",
                "max_steps=3",
                "learning_rate=0.05",
                "report_to=none",
                "per_device_batch_size=3",
                "gradient_checkpointing=false",
                f"output_dir={run}",
                "max_length=96",
                "max_prompt_length=48",
            ]
        )
        == 0
    )
    out = tmp_path / "heat"
    assert main(["heatmap", f"run_dir={run}", "n_pairs=3", f"output_dir={out}"]) == 0
    heats = json.loads((out / "heatmap.json").read_text())
    assert len(heats) == 3 and heats[0]["chosen"]["implicit"] is not None
    assert any(abs(v) > 0 for h in heats for v in h["chosen"]["implicit"])  # the adapter moved the policy
    assert all(-0.5 < v < 0.5 for h in heats for v in h["chosen"]["rhat"] + h["rejected"]["rhat"])
    assert (out / "heatmap.png").stat().st_size > 5000
    page = (out / "heatmap.html").read_text()
    n_tok = sum(len(h[s]["tokens"]) for h in heats for s in ("chosen", "rejected"))
    assert page.count('class="tok"') == 2 * n_tok
    assert "bad <0> & worse" in html.unescape(re.sub(r"<[^>]+>", "", page))  # escaped, and the tokens spell the text

    if CHROMIUM is None:
        pytest.skip(MISSING)
    dom = load_page(out / "heatmap.html", tmp_path)
    assert dom.count('class="tok"') == 2 * n_tok
    assert "good answer 0" in html.unescape(re.sub(r"<[^>]+>", "", dom))  # tokens render as the text
    screenshot(out / "heatmap.html", SCREENSHOT, tmp_path)
