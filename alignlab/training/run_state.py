"""What every training recipe (train, rm, rl) does between ``accelerator.prepare`` and its first step: resume from
a checkpoint when asked, start the trackers, open metrics.jsonl (appended to when resuming)."""

from __future__ import annotations

from pathlib import Path

from alignlab.config import config_dict
from alignlab.training.checkpoint import find_resume_dir, load_checkpoint
from alignlab.training.metrics import MetricsLogger
from alignlab.training.trackers import DEFAULT_PROJECT, tracker_config


def start_run(accelerator, cfg, run_dir: Path, trackers: list[str]) -> tuple[int, MetricsLogger]:
    """(the step to start from, the metrics logger). ``cfg.resume_from``: "latest", a checkpoint directory or
    None; the prepared objects' state (weights, optimizer, scheduler, RNG) is restored in place."""
    start = 0
    resume_dir = find_resume_dir(cfg.resume_from, run_dir)
    if resume_dir is not None:
        start = load_checkpoint(accelerator, resume_dir)
        if accelerator.is_main_process:
            print(f"[alignlab] resumed from {resume_dir} at step {start}")
    if trackers:
        accelerator.init_trackers(DEFAULT_PROJECT, config=tracker_config(config_dict(cfg)))
    return start, MetricsLogger(Path(run_dir) / "metrics.jsonl", accelerator, append=start > 0)
