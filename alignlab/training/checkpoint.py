"""Checkpoints: accelerate's save_state (safetensors weights, optimizer, scheduler) plus our own pickle-free RNG
state and the step counter, made complete on every rank before they become visible. See docs/checkpoints.md.

Save protocol (all ranks call save_checkpoint); each phase ends with an all-reduce of "did every rank succeed",
which is also the barrier, so every rank raises CheckpointError together if any rank failed:
  1. prepare (main): clear stale temp dirs, create ``.tmp_step_N``;
  2. write (every rank): its RNG state as safetensors, then save_state; accelerate's pickled
     ``random_states_{rank}.pkl`` is deleted. Nothing is renamed before every rank is through this phase;
  3. finalize (main): hash every file into the manifest, write ``alignlab_state.json`` last, fsync, swap the
     dir in with os.replace (an existing ``step_N`` is renamed aside first and deleted only after the swap),
     then prune.
A failure anywhere discards the temp dir; the last complete checkpoint is never touched.

Load: the manifest (size + sha256 of every file, no unlisted file, no .pkl at all) is verified on every rank
before anything is read; the RNG state is read from safetensors (no pickle); optimizer/scheduler go through
accelerate's load with weights_only=True (torch's restricted unpickler).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

FORMAT = 2  # 1: the racy pre-manifest layout with pickled RNG state (refused on load)
MARKER = "alignlab_state.json"  # written last: its presence (with a manifest) means "complete"
_TMP, _OLD, _STEP = ".tmp_step_", ".old_step_", "step_"


class CheckpointError(RuntimeError):
    """A save that did not complete, or a checkpoint directory that is refused for loading."""


# ---------------------------------------------------------------- directory layout


def _root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_of(name: str, prefix: str) -> int | None:
    tail = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def _rng_name(rank: int) -> str:
    return f"rng_state_{rank}.safetensors"


def _read_marker(d: Path) -> dict | None:
    """The completion marker of ``d`` if it is one of ours (format 2, with a manifest), else None."""
    try:
        marker = json.loads((d / MARKER).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and marker.get("format") == FORMAT and isinstance(marker.get("files"), dict)
    return marker if ok and isinstance(marker.get("step"), int) else None


def _complete(root: Path) -> dict[int, Path]:
    """step -> complete checkpoint dir. Temp dirs and step dirs without a valid marker are ignored; a complete
    ``.old_step_N`` counts only when no complete ``step_N`` exists (a crash between the two renames of a swap)."""
    if not root.is_dir():
        return {}
    found: dict[int, Path] = {}
    for prefix in (_STEP, _OLD):  # step_N first, so it wins over its set-aside copy
        for d in root.iterdir():
            n = _step_of(d.name, prefix)
            if n is not None and n not in found and d.is_dir() and _read_marker(d) is not None:
                found[n] = d
    return dict(sorted(found.items()))


def _ckpt_dirs(run_dir: Path) -> list[Path]:
    """Complete ``step_N`` dirs, oldest first (what pruning may delete)."""
    return [d for d in _complete(_root(run_dir)).values() if d.name.startswith(_STEP)]


def checkpoint_at(run_dir: Path, step: int) -> Path | None:
    """The complete ``step_N`` checkpoint of ``run_dir`` at ``step``, or None (never saved, or pruned)."""
    return next((d for d in _ckpt_dirs(run_dir) if _step_of(d.name, _STEP) == step), None)


def _clean_stale(root: Path) -> None:
    """Main only, before a save: temp dirs left by a crash go; a set-aside ``.old_step_N`` goes back to
    ``step_N`` when the swap that moved it aside never finished, else it is a leftover and goes too."""
    for d in root.iterdir():
        if _step_of(d.name, _TMP) is not None:
            shutil.rmtree(d, ignore_errors=True)
        n = _step_of(d.name, _OLD)
        if n is not None:
            live = root / f"{_STEP}{n}"
            if _read_marker(live) is None and _read_marker(d) is not None:
                if live.exists():
                    shutil.rmtree(live)  # a half-written step_N cannot come from this protocol; be safe anyway
                os.replace(d, live)
            else:
                shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- collectives


def _all_ok(accelerator, ok: bool) -> bool:
    """True iff ``ok`` on every rank. An all-reduce: no rank returns before every rank got here, so it is
    also the barrier that keeps main from renaming a directory another rank is still writing."""
    if accelerator.num_processes == 1:
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], device=accelerator.device)
    return accelerator.reduce(flag, reduction="sum").item() == 0.0


def _phase(accelerator, what: str, fn, main_only: bool = False, cleanup=None) -> None:
    """Run ``fn`` (on every rank or on main), then agree; on any failure clean up (main) and raise on every rank."""
    err = None
    if accelerator.is_main_process or not main_only:
        try:
            fn()
        except Exception as e:  # reported to every rank below, re-raised as the cause
            err = e
    if _all_ok(accelerator, err is None):
        return
    if accelerator.is_main_process and cleanup is not None:
        cleanup()
    where = f"on rank {accelerator.process_index}: {err!r}" if err is not None else "on another rank"
    raise CheckpointError(f"{what} failed {where}") from err


def _refuse_custom_objects(accelerator) -> None:
    # accelerate saves register_for_checkpointing() objects as custom_checkpoint_*.pkl and loads them with
    # weights_only=False (arbitrary unpickling): not supported here.
    if getattr(accelerator, "_custom_objects", None):
        raise CheckpointError(
            "accelerator.register_for_checkpointing() objects are pickled by accelerate and "
            "unpickled with weights_only=False; alignlab checkpoints do not support them"
        )


# ---------------------------------------------------------------- RNG state without pickle


def _accel_modules():
    """(name, module) of accelerator RNGs with per-device state we save (CPU is always saved)."""
    mods = []
    for name in ("cuda", "xpu"):
        mod = getattr(torch, name, None)
        if mod is not None and mod.is_available():
            mods.append((name, mod))
    return mods


def _rng_tensors(accelerator) -> tuple[dict[str, torch.Tensor], dict]:
    """Every RNG the training loop could touch, as plain tensors + JSON scalars (exact round trip)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {
        "torch_cpu": torch.get_rng_state(),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
    }
    n_dev = {}
    for name, mod in _accel_modules():
        states = mod.get_rng_state_all()
        n_dev[name] = len(states)
        tensors.update({f"torch_{name}_{i}": s.cpu() for i, s in enumerate(states)})
    meta = {
        "python_version": version,
        "python_gauss": gauss,
        "numpy_kind": kind,
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached": float(cached),
        "devices": n_dev,
        "accelerator_step": int(getattr(accelerator, "step", 0)),
    }
    return tensors, meta


def _save_rng(path: Path, accelerator) -> None:
    from safetensors.torch import save_file

    tensors, meta = _rng_tensors(accelerator)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"alignlab": json.dumps(meta)})


def _restore_rng(path: Path, accelerator) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["alignlab"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    random.setstate((meta["python_version"], tuple(int(x) for x in t["python_mt"].tolist()), meta["python_gauss"]))
    np.random.set_state(
        (
            meta["numpy_kind"],
            t["numpy_keys"].numpy().astype(np.uint32),
            meta["numpy_pos"],
            meta["numpy_has_gauss"],
            meta["numpy_cached"],
        )
    )
    torch.set_rng_state(t["torch_cpu"])
    for name, mod in _accel_modules():  # devices that exist both now and at save time
        for i in range(min(meta["devices"].get(name, 0), mod.device_count())):
            mod.set_rng_state(t[f"torch_{name}_{i}"], i)
    if hasattr(accelerator, "step"):
        accelerator.step = meta["accelerator_step"]


# ---------------------------------------------------------------- manifest


def _files(d: Path) -> dict[str, Path]:
    """Relative posix path -> path of every file under ``d`` (symlinks included, so they can be refused)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for name in filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]:
            p = Path(dirpath) / name
            out[p.relative_to(d).as_posix()] = p
    return out


def _sha256(path: Path, sync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if sync:  # flushes pages written by any rank (same file), so the marker never outlives its data
            os.fsync(f.fileno())
    return h.hexdigest()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _manifest(d: Path) -> dict[str, dict]:
    return {
        rel: {"size": p.stat().st_size, "sha256": _sha256(p, sync=True)}
        for rel, p in sorted(_files(d).items())
        if rel != MARKER
    }


def _verify(d: Path, marker: dict, rank: int) -> None:
    """Refuse ``d`` unless its files are exactly the manifest's, byte for byte, and nothing is a pickle
    outside optimizer/scheduler state (which only ever meets the restricted unpickler)."""
    files = marker["files"]
    present = _files(d)
    present.pop(MARKER, None)
    problems = [f"unexpected file {r}" for r in sorted(set(present) - set(files))]
    problems += [f"missing file {r}" for r in sorted(set(files) - set(present))]
    problems += [
        f"pickle file {r} (never written by alignlab)" for r in sorted(set(present) | set(files)) if r.endswith(".pkl")
    ]
    problems += [f"symlink {r}" for r, p in present.items() if p.is_symlink()]
    if _rng_name(rank) not in files:
        problems.append(f"no RNG state for rank {rank} (saved with world size {marker.get('world_size')})")
    if not problems:
        for rel, want in files.items():
            p = present[rel]
            if not isinstance(want, dict) or p.stat().st_size != want.get("size") or _sha256(p) != want.get("sha256"):
                problems.append(f"{rel} differs from the manifest (truncated, corrupted or replaced)")
    if problems:
        raise CheckpointError(f"refusing checkpoint {d}: " + "; ".join(problems[:5]))


# ---------------------------------------------------------------- save


def _write_rank_files(accelerator, tmp: Path) -> None:
    """Every rank: its RNG state (pickle-free), then accelerate's state; accelerate's pickled RNG file goes."""
    rank = accelerator.process_index
    _save_rng(tmp / _rng_name(rank), accelerator)  # captured before save_state can touch any RNG
    accelerator.save_state(str(tmp), safe_serialization=True)
    (tmp / f"random_states_{rank}.pkl").unlink(missing_ok=True)


def _swap_in(tmp: Path, final: Path) -> None:
    """Atomically make the complete ``tmp`` the visible ``final``. An existing ``final`` is moved aside (one
    rename) and deleted only once the new one is in place, so some complete copy exists at every instant."""
    aside = final.parent / f"{_OLD}{final.name[len(_STEP) :]}"
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _prune(root: Path, final: Path, keep: int) -> None:
    """Keep the new checkpoint plus the newest keep-1 other complete ones (keep <= 0: keep all)."""
    if keep <= 0:
        return
    others = [d for d in _ckpt_dirs(root.parent) if d != final]
    for old in others[: max(len(others) - (keep - 1), 0)]:
        (old / MARKER).unlink()  # marker first: a deletion cut short leaves a dir `latest` ignores
        shutil.rmtree(old)


def _finalize(accelerator, tmp: Path, final: Path, step: int, keep: int) -> None:
    """Main only, after every rank has written: manifest, marker (last), swap, prune."""
    marker = {"format": FORMAT, "step": step, "world_size": accelerator.num_processes, "files": _manifest(tmp)}
    with open(tmp / MARKER, "w") as f:
        json.dump(marker, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    _swap_in(tmp, final)
    _prune(final.parent, final, keep)


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int = 1) -> Path:
    """Collective: every rank must call it. Returns ``checkpoints/step_{step}``; raises CheckpointError on every
    rank if any rank failed, leaving the previous complete checkpoints as they were."""
    _refuse_custom_objects(accelerator)
    root = _root(run_dir)
    final, tmp = root / f"{_STEP}{step}", root / f"{_TMP}{step}"

    def prepare():
        root.mkdir(parents=True, exist_ok=True)
        _clean_stale(root)
        tmp.mkdir()

    def cleanup():  # best effort: the failure itself is what gets reported
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _clean_stale(root)  # puts a set-aside step_N back if the swap broke half-way
        except OSError:
            pass

    _phase(accelerator, f"checkpoint step {step}: preparing {tmp}", prepare, main_only=True, cleanup=cleanup)
    _phase(
        accelerator, f"checkpoint step {step}: writing", lambda: _write_rank_files(accelerator, tmp), cleanup=cleanup
    )
    _phase(
        accelerator,
        f"checkpoint step {step}: finalizing",
        lambda: _finalize(accelerator, tmp, final, step, keep),
        main_only=True,
        cleanup=cleanup,
    )
    return final


# ---------------------------------------------------------------- resume


def find_resume_dir(resume_from: str | None, run_dir: Path) -> Path | None:
    """``"latest"``: the newest complete checkpoint of ``run_dir`` (None if there is none); else a path that
    must hold a complete alignlab checkpoint."""
    if not resume_from:
        return None
    if resume_from == "latest":
        done = _complete(_root(run_dir))
        return done[max(done)] if done else None
    path = Path(resume_from)
    if _read_marker(path) is None:
        raise FileNotFoundError(
            f"resume_from={resume_from!r}: no complete alignlab checkpoint there "
            f"({MARKER} with a format-{FORMAT} manifest): incomplete, or written by an older alignlab"
        )
    return path


def _check_loadable(accelerator, ckpt_dir: Path) -> dict:
    marker = _read_marker(ckpt_dir)
    if marker is None:
        raise CheckpointError(
            f"refusing checkpoint {ckpt_dir}: no format-{FORMAT} {MARKER} (incomplete, or written "
            "by an older alignlab whose RNG state is pickled)"
        )
    if marker.get("world_size") != accelerator.num_processes:
        raise CheckpointError(
            f"refusing checkpoint {ckpt_dir}: saved by {marker.get('world_size')} process(es), "
            f"resuming with {accelerator.num_processes} would not be exact"
        )
    _verify(ckpt_dir, marker, accelerator.process_index)
    return marker


def load_checkpoint(accelerator, ckpt_dir: Path) -> int:
    """Collective. Verifies ``ckpt_dir`` on every rank, restores model/optimizer/scheduler/RNG, returns the step."""
    _refuse_custom_objects(accelerator)
    ckpt_dir = Path(ckpt_dir)
    marker = {}

    def check():
        marker.update(_check_loadable(accelerator, ckpt_dir))

    _phase(accelerator, f"resume from {ckpt_dir}", check)
    # There is no random_states_*.pkl (verified), so accelerate's RNG branch finds nothing to unpickle; the
    # explicit weights_only=True keeps optimizer/scheduler on the restricted unpickler whatever the default.
    accelerator.load_state(str(ckpt_dir), load_kwargs={"weights_only": True})
    _restore_rng(ckpt_dir / _rng_name(accelerator.process_index), accelerator)
    return int(marker["step"])
