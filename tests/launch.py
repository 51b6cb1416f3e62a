"""Helpers shared by the multi-process tests: toy preference data and a bounded launch of 1 or N CPU ranks.

`accelerate launch --cpu --num_processes 2` does NOT start 2 processes (accelerate 1.15's simple launcher starts
one python process unless an mpirun hostfile is given); `--multi_gpu --num_processes 2` goes through torchrun
and, with Accelerator(cpu=True), gives 2 gloo CPU ranks even on a machine without GPUs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
WORDS = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]


def write_pairs(path: Path, n: int, seed: int = 0) -> Path:
    """n TRL-style rows with random prompts and completions of unequal lengths."""
    rng = random.Random(seed)

    def text(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = [
        {
            "prompt": f"q{i} " + text(rng.randint(1, 4)),
            "chosen": text(rng.randint(1, 6)),
            "rejected": text(rng.randint(1, 6)),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every descendant. torchrun starts each rank in a session of its own,
    so killing the launcher's group alone leaves the ranks alive, holding the output pipe open (a test that waits
    on that pipe then hangs for ever)."""
    for p in [pid, *_descendants(pid)]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launch(worker: Path, args: list[str], out: Path, nproc: int, timeout_s: int) -> subprocess.CompletedProcess:
    """Run ``worker`` as a plain process (nproc = 1) or nproc gloo ranks, with its own cache under ``out``; the
    whole process group is killed on timeout so a hung rank never outlives the test. Output in out/log.txt."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        ALIGNLAB_CACHE=str(out / "cache"),
        PYTHONUNBUFFERED="1",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, str(worker), *args]
    if nproc > 1:
        cmd = [
            str(ACCELERATE),
            "launch",
            "--multi_gpu",
            "--num_processes",
            str(nproc),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(worker),
            *args,
        ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        stdout, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # something still holds the pipe: fail anyway, never wait forever
            stdout = "(no output: the pipe stayed open after the kill)"
        pytest.fail(f"{nproc}-process run hung (> {timeout_s}s):\n{stdout[-4000:]}")
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    (out / "log.txt").write_text(stdout)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout)
