"""Worker for tests/test_checkpoint.py, run under `accelerate launch --multi_gpu --num_processes 2` (2 gloo ranks).

One launch does everything, so the test pays for one start-up:
1. `alignlab train` for ``--steps`` steps with a checkpoint after every step. ``save_checkpoint`` is wrapped to
   record, per step and per rank, a digest of the state being saved (weights, optimizer, scheduler, RNGs,
   step). Rank 1 sleeps before writing each save, so a save that does not wait for every rank before its
   rename would publish a directory without rank 1's files;
2. every checkpoint is loaded (in a shuffled order, so nothing carries over from the previous load) and the
   digest of the restored state must equal the one recorded when it was saved;
3. a save that fails on rank 1 mid-write, then one that fails on rank 0 while finalizing: both ranks must
   raise CheckpointError, no ``step_N`` / temp dir may appear, and ``latest`` must still be the last good one;
   then a normal save must work again.
Every rank writes ``<out>/done_rank<r>.json`` (its mismatches and failures; empty lists == pass).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _h(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:16]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def digest(accelerator) -> dict[str, str]:
    """Per component, a hash of everything that must survive a save/load round trip exactly."""
    model = accelerator.unwrap_model(accelerator._models[0])
    weights = _h(*(k.encode() + _tensor_bytes(v) for k, v in sorted(model.state_dict().items())))
    osd = accelerator._optimizers[0].state_dict()
    opt_tensors = [
        f"{i}.{k}".encode() + _tensor_bytes(v if torch.is_tensor(v) else torch.tensor(v))
        for i, s in sorted(osd["state"].items())
        for k, v in sorted(s.items())
    ]
    optimizer = _h(*opt_tensors, json.dumps(osd["param_groups"], sort_keys=True, default=str).encode())
    scheduler = _h(json.dumps(accelerator._schedulers[0].state_dict(), sort_keys=True, default=str).encode())
    np_state = np.random.get_state()
    rng = _h(
        _tensor_bytes(torch.get_rng_state()),
        repr(random.getstate()).encode(),
        np_state[1].tobytes(),
        repr(np_state[2:]).encode(),
    )
    return {
        "weights": weights,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "rng": rng,
        "accelerator_step": str(accelerator.step),
    }


def _train(args, T, C, recorded: dict, holder: dict):
    real_save = C.save_checkpoint

    def recording_save(accelerator, run_dir, step, keep=1):
        if "acc" not in holder:  # first save: remember the accelerator, slow rank 1 down for every save
            holder["acc"] = accelerator
            # train() ends with end_run(): free_memory() drops the prepared objects, end_training() destroys the
            # process group; the checks after it need both
            holder["end_training"] = accelerator.end_training
            accelerator.end_training = lambda: None
            accelerator.free_memory = lambda *objects: None
            if accelerator.process_index == args.slow_rank:
                inner = accelerator.save_state

                def slow_save_state(*a, **kw):
                    time.sleep(args.slow_s)
                    return inner(*a, **kw)

                accelerator.save_state = slow_save_state
        # This loop draws no random numbers (no dropout); draw some so each save has its own RNG state to restore
        torch.rand(step), random.random(), np.random.rand(step)
        recorded[step] = digest(accelerator)
        return real_save(accelerator, run_dir, step, keep)

    T.save_checkpoint = recording_save  # train.py calls the name it imported
    out = Path(args.out)
    cfg = T.TrainConfig(
        model=args.model,
        data=args.data,
        output_dir=str(out / "run"),
        lora=False,
        report_to="none",
        cpu=True,
        gradient_checkpointing=False,
        per_device_batch_size=2,
        grad_accum=1,
        max_steps=args.steps,
        learning_rate=1e-3,
        lr_scheduler="cosine",
        warmup_ratio=0.2,
        max_length=128,
        max_prompt_length=64,
        ref_batch_size=4,
        seed=11,
        save_steps=1,
        save_total_limit=args.steps + 5,
    )
    return T.train(cfg)


def _check_layout(run_dir: Path, steps: int, world: int) -> list[str]:
    root = run_dir / "checkpoints"
    bad = [f"left over: {d.name}" for d in root.iterdir() if d.name.startswith(".")]
    for k in range(1, steps + 1):
        names = {p.name for p in (root / f"step_{k}").iterdir()}
        want = {f"rng_state_{r}.safetensors" for r in range(world)} | {"alignlab_state.json", "model.safetensors"}
        bad += [f"step_{k}: missing {n}" for n in sorted(want - names)]
        bad += [f"step_{k}: pickle {n}" for n in sorted(names) if n.endswith(".pkl")]
    return bad


def _reload_all(C, acc, run_dir: Path, recorded: dict, steps: int) -> list[str]:
    bad = []
    order = sorted(range(1, steps + 1), key=lambda k: (k * 7) % (steps + 1))  # a fixed shuffle
    for k in order:
        got_step = C.load_checkpoint(acc, run_dir / "checkpoints" / f"step_{k}")
        now = digest(acc)
        if got_step != k:
            bad.append(f"step_{k}: load returned step {got_step}")
        bad += [f"step_{k}: {part} differs" for part in now if now[part] != recorded[k][part]]
    return bad


def _expect_failed_save(C, acc, run_dir: Path, step: int, latest_before: Path, what: str) -> list[str]:
    marker = (latest_before / "alignlab_state.json").read_bytes()
    bad = []
    try:
        C.save_checkpoint(acc, run_dir, step, 100)
        bad.append(f"{what}: save did not raise")
    except C.CheckpointError as e:
        print(f"[ckpt_worker] rank {acc.process_index} {what}: CheckpointError as expected: {e}", flush=True)
    acc.wait_for_everyone()  # main cleans up after the collective; look only once it is done
    root = run_dir / "checkpoints"
    bad += [f"{what}: {d.name} exists" for d in root.iterdir() if d.name in (f"step_{step}", f".tmp_step_{step}")]
    if C.find_resume_dir("latest", run_dir) != latest_before:
        bad.append(f"{what}: latest is {C.find_resume_dir('latest', run_dir)}, not {latest_before}")
    if (latest_before / "alignlab_state.json").read_bytes() != marker:
        bad.append(f"{what}: {latest_before.name} was modified")
    acc.wait_for_everyone()  # and no rank starts the next save (a new temp dir) while another still looks
    return bad


def _failures(C, acc, run_dir: Path, steps: int) -> list[str]:
    latest = run_dir / "checkpoints" / f"step_{steps}"
    bad = [] if C.find_resume_dir("latest", run_dir) == latest else ["latest is not the last step"]
    inner = acc.save_state
    if acc.process_index == 1:  # rank 1 writes part of its state, then its disk "fills up"

        def failing(out_dir, **kw):
            (Path(out_dir) / "optimizer.bin").write_bytes(b"partial")
            raise OSError("No space left on device (simulated)")

        acc.save_state = failing
    bad += _expect_failed_save(C, acc, run_dir, steps + 1, latest, "rank-1 write failure")
    acc.save_state = inner
    real_manifest = C._manifest
    if acc.is_main_process:  # main fails after every rank wrote, before the marker
        C._manifest = lambda d: (_ for _ in ()).throw(OSError("simulated failure while hashing"))
    bad += _expect_failed_save(C, acc, run_dir, steps + 1, latest, "main finalize failure")
    C._manifest = real_manifest
    good = C.save_checkpoint(acc, run_dir, steps + 1, 100)  # nothing left behind blocks the next save
    if C.find_resume_dir("latest", run_dir) != good:
        bad.append("save after the failures is not latest")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--slow-rank", type=int, default=1)
    ap.add_argument("--slow-s", type=float, default=0.1)
    args = ap.parse_args(argv)

    import alignlab.recipes.train as T
    import alignlab.training.checkpoint as C

    recorded: dict[int, dict] = {}
    holder: dict = {}
    t0 = time.perf_counter()
    res = _train(args, T, C, recorded, holder)
    t_train = time.perf_counter() - t0
    acc = holder["acc"]
    run_dir = Path(args.out) / "run"
    rank, world = acc.process_index, acc.num_processes
    acc.wait_for_everyone()
    layout = _check_layout(run_dir, args.steps, world)
    moved = {part: len({d[part] for d in recorded.values()}) for part in ("weights", "optimizer", "scheduler", "rng")}
    t1 = time.perf_counter()
    mismatches = _reload_all(C, acc, run_dir, recorded, args.steps)
    t_load = time.perf_counter() - t1
    failures = _failures(C, acc, run_dir, args.steps)
    done = {
        "rank": rank,
        "world": world,
        "steps": res.steps,
        "saves": sorted(recorded),
        "distinct": moved,
        "layout": layout,
        "mismatches": mismatches,
        "failures": failures,
        "train_s": round(t_train, 2),
        "reload_s": round(t_load, 2),
    }
    (Path(args.out) / f"done_rank{rank}.json").write_text(json.dumps(done, indent=1))
    print(f"[ckpt_worker] rank {rank}/{world}: {json.dumps(done)}", flush=True)
    holder["end_training"]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
