"""Headless Chromium for the self-contained HTML pages (heatmap.html, compare.html, report.html): load a page with a
fresh profile and no network services, dump its DOM or take a screenshot, and collect the page's console errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = "chromium not installed (apt-get install -y chromium): the browser check did not run"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--enable-logging=stderr",
    "--v=0",
]


def chromium(args: list[str], profile: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium with ``args`` (e.g. ``--dump-dom URL``) and a fresh ``--user-data-dir=profile``."""
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def console_errors(stderr: str) -> list[str]:
    """The page's console output and CSP refusals in Chromium's log ("...:CONSOLE(...)", "Uncaught", "Refused to")."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line or "Refused to" in line]


def load_page(path: Path, profile_dir: Path) -> str:
    """The DOM of the page at ``path`` after Chromium loaded it; asserts that it loaded with no console errors."""
    dom = chromium(["--dump-dom", path.resolve().as_uri()], profile_dir / "profile_dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert console_errors(dom.stderr) == []
    return dom.stdout


def screenshot(path: Path, out: Path, profile_dir: Path, size: str = "1280,1400") -> Path:
    """A PNG of the page at ``path`` (``size``: width,height); asserts it rendered with no console errors."""
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars", path.resolve().as_uri()]
    shot = chromium(args, profile_dir / "profile_shot")
    assert shot.returncode == 0 and out.stat().st_size > 10000, shot.stderr[-2000:]
    assert console_errors(shot.stderr) == []
    return out
