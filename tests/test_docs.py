"""The config reference is generated from the dataclasses; this fails when it is stale."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_config_doc.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert (ROOT / "docs" / "config.md").read_text() == out, "run: python tools/gen_config_doc.py > docs/config.md"


def test_cli_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    for cmd in ("train", "demo", "setup", "diagnose"):
        assert cmd in out
    out = subprocess.run(
        [sys.executable, "-m", "alignlab.cli", "train", "--help"], capture_output=True, text=True, cwd=ROOT
    ).stdout
    assert "length_alpha" in out and "gamma_beta_ratio" in out
