"""Helpers shared by every precomputed table (reference log-probs, T-REG token rewards): a fingerprint of the
training token ids, round-robin rank shards joined by one all-reduce, and atomic writes of the result.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from alignlab.data.tokenize import TokenizedPair


def pairs_fingerprint(pairs: list[TokenizedPair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        for ids in (p.prompt_ids, p.chosen_ids, p.rejected_ids):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def rank_shard(n: int, accelerator=None) -> list[int]:
    """The items this rank computes (round-robin); all of them without an accelerator."""
    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    return list(range(rank, n, world))


def sum_over_ranks(t: torch.Tensor, accelerator=None) -> torch.Tensor:
    """Join per-rank shards that are zero outside their own rows: one all-reduce (sum); a no-op on one process."""
    if accelerator is None or accelerator.num_processes == 1:
        return t
    return accelerator.reduce(t.to(accelerator.device), reduction="sum").cpu()


def store_atomic(path: Path, tensors: dict[str, torch.Tensor], accelerator=None) -> None:
    """The main process writes ``path`` (safetensors) via a temp file + rename, so a crash never leaves a
    half-written cache entry that a later run would trust; the other ranks wait for it."""
    if accelerator is None or accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    if accelerator is not None:
        accelerator.wait_for_everyone()
