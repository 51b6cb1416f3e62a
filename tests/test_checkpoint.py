"""Checkpoints (alignlab/training/checkpoint.py, docs/checkpoints.md): exact round trip, atomicity when a save
fails, what `latest` may resolve to, pruning, refusal of tampered / pickled state, and a 2-rank run that
saves 20 times and resumes from each of the 20 checkpoints (slow: one `accelerate launch`)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from launch import launch, write_pairs

import alignlab.training.checkpoint as C
from alignlab.training.checkpoint import CheckpointError, find_resume_dir, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "ckpt_worker.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"


# ---------------------------------------------------------------- single-process helpers


class Run:
    """A tiny model/optimizer/scheduler prepared by accelerate; ``step()`` uses every RNG the state covers."""

    def __init__(self, tmp_path: Path, seed: int = 0):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        self.acc = Accelerator(cpu=True)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=10)
        self.model, self.opt, self.sched = self.acc.prepare(model, opt, sched)
        self.run_dir = tmp_path / "run"

    def step(self) -> float:
        x = torch.randn(8, 4) * (1 + random.random()) + float(np.random.rand())
        loss = self.model(x).pow(2).mean()
        self.acc.backward(loss)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad()
        return loss.item()

    def snapshot(self) -> dict:
        return {
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "opt": copy.deepcopy(self.opt.state_dict()),
            "sched": self.sched.state_dict(),
            "torch": torch.get_rng_state(),
            "py": random.getstate(),
            "np": np.random.get_state(),
        }

    def save(self, step: int, keep: int = 0) -> Path:
        return save_checkpoint(self.acc, self.run_dir, step, keep)

    def ckpt(self, step: int) -> Path:
        return self.run_dir / "checkpoints" / f"step_{step}"


def _assert_same(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])) for i in sa for k in sa[i])
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
    assert a["sched"] == b["sched"]
    assert torch.equal(a["torch"], b["torch"]) and a["py"] == b["py"]
    assert a["np"][0] == b["np"][0] and np.array_equal(a["np"][1], b["np"][1]) and a["np"][2:] == b["np"][2:]


def _tree_hash(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(d).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def _dirs(run: Run) -> list[str]:
    return sorted(p.name for p in (run.run_dir / "checkpoints").iterdir())


# ---------------------------------------------------------------- round trip


def test_round_trip_is_exact_and_pickle_free(tmp_path):
    run = Run(tmp_path)
    for _ in range(3):
        run.step()
    run.save(3)
    saved = run.snapshot()
    next_loss = run.step()  # what the uninterrupted run does next
    after = run.snapshot()
    run.step()
    assert load_checkpoint(run.acc, run.ckpt(3)) == 3
    _assert_same(run.snapshot(), saved)
    assert run.step() == next_loss  # same batch (RNG) and same update (optimizer, scheduler)
    _assert_same(run.snapshot(), after)
    names = {p.name for p in run.ckpt(3).iterdir()}
    assert names == {
        "model.safetensors",
        "optimizer.bin",
        "scheduler.bin",
        "rng_state_0.safetensors",
        "alignlab_state.json",
    }
    marker = json.loads((run.ckpt(3) / "alignlab_state.json").read_text())
    assert marker["step"] == 3 and marker["world_size"] == 1 and set(marker["files"]) == names - {"alignlab_state.json"}


# ---------------------------------------------------------------- atomicity


def test_failed_save_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch):
    run = Run(tmp_path)
    run.step()
    good = run.save(1)
    before = _tree_hash(good)
    run.step()

    def partial_then_fail(out_dir, **kw):  # writes part of the new checkpoint, then the disk "fills up"
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise OSError("No space left on device (simulated)")

    monkeypatch.setattr(run.acc, "save_state", partial_then_fail)
    for step in (2, 1):  # a new step, and a re-save over the existing step_1
        with pytest.raises(CheckpointError, match="writing failed on rank 0.*No space left"):
            run.save(step)
        assert _dirs(run) == ["step_1"]  # no step_2, no temp dir left behind
        assert _tree_hash(good) == before
        assert find_resume_dir("latest", run.run_dir) == good


def test_failed_swap_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    run = Run(tmp_path)
    run.step()
    good = run.save(1)
    before = _tree_hash(good)
    run.step()
    real_replace, calls = os.replace, []

    def replace(src, dst):  # 1st: old step_1 set aside (real); 2nd: new one into place (fails)
        calls.append(Path(src).name)
        if len(calls) == 2:
            raise OSError("simulated crash during the swap")
        return real_replace(src, dst)

    monkeypatch.setattr(C.os, "replace", replace)
    with pytest.raises(CheckpointError, match="finalizing failed"):
        run.save(1)
    monkeypatch.setattr(C.os, "replace", real_replace)
    assert calls[:2] == ["step_1", ".tmp_step_1"]
    assert _dirs(run) == ["step_1"] and _tree_hash(good) == before


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    """Killed after step_N was set aside and before the new one was renamed in: `latest` still finds the
    complete set-aside copy, and the next save moves it back to step_N."""
    run = Run(tmp_path)
    run.save(1)
    run.step()
    run.save(2)
    before = _tree_hash(run.ckpt(2))
    root = run.run_dir / "checkpoints"
    os.replace(root / "step_2", root / ".old_step_2")
    shutil.copytree(root / ".old_step_2", root / ".tmp_step_2")  # the complete-but-unrenamed new copy
    assert find_resume_dir("latest", run.run_dir) == root / ".old_step_2"
    assert load_checkpoint(run.acc, root / ".old_step_2") == 2
    run.step()
    run.save(3)
    assert _dirs(run) == ["step_1", "step_2", "step_3"] and _tree_hash(run.ckpt(2)) == before


# ---------------------------------------------------------------- what `latest` may be


def test_latest_ignores_temp_and_incomplete_dirs(tmp_path):
    run = Run(tmp_path)
    good = run.save(2)
    root = run.run_dir / "checkpoints"
    shutil.copytree(good, root / ".tmp_step_9")  # complete, but never renamed in
    shutil.copytree(good, root / "step_5", ignore=shutil.ignore_patterns("alignlab_state.json"))  # no marker
    shutil.copytree(good, root / "step_6")
    (root / "step_6" / "alignlab_state.json").write_text(json.dumps({"step": 6}))  # old format: pickled RNG
    shutil.copytree(good, root / "step_7")
    (root / "step_7" / "alignlab_state.json").write_text('{"format": 2, "step": 7, "fi')  # truncated marker
    assert find_resume_dir("latest", run.run_dir) == good
    with pytest.raises(FileNotFoundError, match="no complete alignlab checkpoint"):
        find_resume_dir(str(root / "step_5"), run.run_dir)
    with pytest.raises(CheckpointError, match="older alignlab"):
        load_checkpoint(run.acc, root / "step_6")
    assert find_resume_dir(None, run.run_dir) is None
    assert find_resume_dir("latest", tmp_path / "nothing") is None


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    run = Run(tmp_path)
    for step in range(1, 6):
        run.save(step, keep=2)
    assert _dirs(run) == ["step_4", "step_5"]
    (run.run_dir / "checkpoints" / "step_3").mkdir()  # incomplete: neither counted nor deleted
    run.save(6, keep=2)
    assert _dirs(run) == ["step_3", "step_5", "step_6"]
    run.save(7, keep=0)  # 0: keep everything
    assert _dirs(run) == ["step_3", "step_5", "step_6", "step_7"]
    run.save(2, keep=1)  # the checkpoint just written is never pruned, even if older-numbered ones exist
    assert _dirs(run) == ["step_2", "step_3"]


# ---------------------------------------------------------------- refusal: tampering and pickles


class _Evil:
    """Unpickling this runs code (writes a file): the canonical malicious pickle."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def _rewrite_manifest(ckpt: Path) -> None:
    """What an attacker with write access would do: make the manifest match the tampered files."""
    marker = json.loads((ckpt / "alignlab_state.json").read_text())
    marker["files"] = C._manifest(ckpt)
    (ckpt / "alignlab_state.json").write_text(json.dumps(marker))


def test_crafted_pickle_is_never_unpickled(tmp_path, monkeypatch):
    run = Run(tmp_path)
    ckpt = run.save(1)
    pwned = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Evil(tmp_path / "sanity")))  # the payload is live under plain pickle
    assert (tmp_path / "sanity").exists()

    # accelerate would torch.load this RNG file; alignlab refuses the directory before anything is read
    (ckpt / "random_states_0.pkl").write_bytes(pickle.dumps(_Evil(pwned)))
    for manifest_rewritten in (False, True):
        if manifest_rewritten:
            _rewrite_manifest(ckpt)
        with monkeypatch.context() as m:
            m.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on a refused checkpoint"))
            with pytest.raises(CheckpointError, match="random_states_0.pkl"):
                load_checkpoint(run.acc, ckpt)
    (ckpt / "random_states_0.pkl").unlink()

    # optimizer.bin is a pickle by format: replaced (manifest updated too), it meets weights_only=True
    torch.save({"state": _Evil(pwned), "param_groups": []}, ckpt / "optimizer.bin")
    _rewrite_manifest(ckpt)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(run.acc, ckpt)
    assert not pwned.exists()


def test_tampered_or_foreign_checkpoint_is_refused_before_loading(tmp_path, monkeypatch):
    run = Run(tmp_path)
    ckpt = run.save(1)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called on a refused checkpoint"))
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors differs from the manifest"):
        load_checkpoint(run.acc, ckpt)
    ckpt = run.save(2)
    marker = json.loads((ckpt / "alignlab_state.json").read_text())
    (ckpt / "alignlab_state.json").write_text(json.dumps(marker | {"world_size": 2}))
    with pytest.raises(CheckpointError, match="saved by 2 process"):
        load_checkpoint(run.acc, ckpt)


def test_register_for_checkpointing_is_refused(tmp_path):
    run = Run(tmp_path)

    class Counter:
        def state_dict(self):
            return {"n": 1}

        def load_state_dict(self, sd):
            pass

    run.acc.register_for_checkpointing(Counter())  # accelerate would unpickle it with weights_only=False
    with pytest.raises(CheckpointError, match="register_for_checkpointing"):
        run.save(1)


# ---------------------------------------------------------------- 2 ranks: 20 saves, 20 resumes


def _launch(out: Path, *worker_args: str, timeout_s: int = 240) -> subprocess.CompletedProcess:
    """2 gloo ranks of the checkpoint worker (tests/launch.py)."""
    return launch(WORKER, ["--out", str(out), *worker_args], out, 2, timeout_s)


@pytest.mark.slow
def test_two_ranks_save_every_step_and_resume_from_each(tmp_path):
    """20 steps x 2 ranks, a save after every step (rank 1 deliberately late to write each one); then every
    checkpoint is loaded and must restore exactly the weights, optimizer, scheduler, RNGs and step recorded
    when it was saved; then failing saves on either rank leave `latest` on the last good checkpoint."""
    from tiny_models import save_tiny

    steps = 20
    model = save_tiny(tmp_path / "tiny_model", seed=5)
    data = write_pairs(tmp_path / "pairs.jsonl", 16, seed=2)
    t0 = time.perf_counter()
    cp = _launch(tmp_path, "--model", str(model), "--data", str(data), "--steps", str(steps))
    print(f"2-rank checkpoint run: {time.perf_counter() - t0:.1f}s rc={cp.returncode}")
    assert cp.returncode == 0, cp.stdout[-6000:]
    for rank in range(2):
        done = json.loads((tmp_path / f"done_rank{rank}.json").read_text())
        print(f"rank {rank}: train {done['train_s']}s, 20 reloads {done['reload_s']}s")
        assert done["world"] == 2 and done["steps"] == steps
        assert done["saves"] == list(range(1, steps + 1))
        # each save has its own state to restore (the weights do not move at step 1: warm-up lr 0)
        assert done["distinct"] == {"weights": steps - 1, "optimizer": steps, "scheduler": steps, "rng": steps}
        assert done["layout"] == [] and done["mismatches"] == [] and done["failures"] == [], done
    assert cp.stdout.count("CheckpointError as expected") == 4  # 2 failing saves x 2 ranks
