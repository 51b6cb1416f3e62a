"""What every training recipe (train, rm, rl) does between ``accelerator.prepare`` and its first step: resume from
a checkpoint when asked, start the trackers, open metrics.jsonl (appended to when resuming); and what each does after
its last step (``end_run``)."""

from __future__ import annotations

import gc
from pathlib import Path

import torch

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


def end_run(accelerator) -> int:
    """Finish a run on every rank: wait for all ranks, release the wrapped (DDP) modules, then destroy the process
    group (``accelerator.end_training``). Returns how many DDP wrappers were still alive and had to be detached.

    Why the order matters: DDP's C++ Reducer owns a reference to the process group. If the group is destroyed while
    a DDP wrapper is still alive, the Reducer becomes the group's last owner, and when the recipe's locals are freed
    the gloo group's destructor runs with the GIL held; it joins gloo's worker threads, one of which may be waiting
    for the GIL to free a tensor of the last all-reduce, and the process never exits (seen on 2 CPU ranks: the rank
    finished its work and hung in ``~ProcessGroupGloo``). Callers drop their own references to the prepared modules
    before calling this; anything still alive (a closure, a cached attribute) has its Reducer released here, while
    the group is still registered.
    """
    accelerator.wait_for_everyone()
    accelerator.free_memory()  # accelerate's own references to the prepared model, optimizer and scheduler
    gc.collect()
    detached = 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from torch.nn.parallel import DistributedDataParallel

        for obj in gc.get_objects():
            if isinstance(obj, DistributedDataParallel) and getattr(obj, "reducer", None) is not None:
                obj.logger = None  # the C++ Logger shares ownership of the Reducer
                obj.reducer = None
                detached += 1
        gc.collect()
        if detached:
            print(f"[alignlab] rank {accelerator.process_index}: released {detached} DDP wrapper(s) still referenced")
    accelerator.end_training()
    return detached
