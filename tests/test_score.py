"""`alignlab score`: any JSONL of prompt/response scored with the gold (per term) or another reward."""

import json

import pytest

from alignlab.cli import main as cli


def _rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_gold_writes_terms_that_add_up(tmp_path):
    data = _rows(
        tmp_path / "in.jsonl",
        [
            {
                "prompt": "Explain why ice floats on water.",
                "response": "Ice is less dense than liquid water because its "
                "molecules lock into an open hexagonal lattice held by hydrogen bonds, so a block of ice "
                "displaces more "
                "water than it weighs and stays at the surface.",
                "finished": True,
            },
            {
                "prompt": "Explain why ice floats on water.",
                "response": "Explain why ice floats on water.",
                "finished": True,
            },
            {"prompt": [{"role": "user", "content": "Name two primary colours."}], "response": "Red and blue."},
        ],
    )
    out = tmp_path / "run"
    assert cli(["score", "reward=gold", f"input={data}", f"output_dir={out}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert summary["n"] == 3 and summary["reward_name"].startswith("gold-v")
    contrib = sum(v for k, v in summary.items() if k.startswith("contribution/"))
    assert contrib == pytest.approx(summary["reward"], rel=1e-9, abs=1e-12)
    assert rows[0]["reward"] > rows[1]["reward"]  # a genuine answer beats an echo of the prompt
    assert (out / "config.yaml").is_file() and "| reward |" in (out / "report.md").read_text()


def test_score_bad_input_names_file_line_and_field(tmp_path, capsys):
    data = _rows(tmp_path / "bad.jsonl", [{"prompt": "hi", "response": "ok"}, {"prompt": "hi", "answer": "x"}])
    assert cli(["score", f"input={data}", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err and "'response'" in err
    assert cli(["score", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "score needs input=" in capsys.readouterr().err
