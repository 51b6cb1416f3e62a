"""Checkpoints via accelerate's save_state (safetensors weights, optimizer, scheduler, RNG states) plus the
step counter. Written to a temporary directory and renamed, so a crash mid-save never corrupts the last one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def _ckpt_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    return sorted((d for d in root.iterdir() if d.name.startswith("step_") and d.is_dir()),
                  key=lambda d: int(d.name.split("_")[1]))


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int = 1) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step}"
    tmp = root / f".tmp_step_{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / "alignlab_state.json").write_text(json.dumps({"step": step}))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in _ckpt_dirs(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def find_resume_dir(resume_from: str | None, run_dir: Path) -> Path | None:
    if not resume_from:
        return None
    if resume_from == "latest":
        dirs = _ckpt_dirs(run_dir)
        return dirs[-1] if dirs else None
    path = Path(resume_from)
    if not (path / "alignlab_state.json").exists():
        raise FileNotFoundError(f"resume_from={resume_from!r}: no alignlab checkpoint there (alignlab_state.json)")
    return path


def load_checkpoint(accelerator, ckpt_dir: Path) -> int:
    accelerator.load_state(str(ckpt_dir))
    return int(json.loads((Path(ckpt_dir) / "alignlab_state.json").read_text())["step"])
