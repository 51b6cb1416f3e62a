"""What the side-by-side benchmarks (bench_dpo_throughput.py, bench_rloo.py) share: the machine description, RSS
sampling in the children, the child-process runner, the probes timed the same way in every library, and the medians
over repeats.

Imported as a sibling module: the scripts run as ``python bench/bench_x.py`` (and ``run_child`` starts the children
the same way, by the script's path), so ``sys.path[0]`` is this folder. The scripts put the repository root on
``sys.path`` before anything here imports ``alignlab``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


# ----------------------------------------------------------------------------- children: memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RSSSampler(threading.Thread):
    """Samples this process's RSS every ``interval`` s; tracks the overall peak and the peak inside a window."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self.window_peak = 0
        self.window_start_rss = 0
        self.in_window = False
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            self.peak = max(self.peak, rss)
            if self.in_window:
                self.window_peak = max(self.window_peak, rss)
            time.sleep(self.interval)

    def open_window(self) -> None:
        self.window_start_rss = _rss_bytes()
        self.window_peak = self.window_start_rss
        self.in_window = True

    def close_window(self) -> None:
        self.window_peak = max(self.window_peak, _rss_bytes())
        self.in_window = False

    def stop(self) -> None:
        self._stop.set()


def memory_summary(sampler: RSSSampler) -> dict:
    """The child's memory figures for its result: RSS peaks (timed window, overall) and its own ru_maxrss."""
    import resource

    return {
        "rss_peak_steps_mib": sampler.window_peak / 2**20,
        "rss_at_first_timed_step_mib": sampler.window_start_rss / 2**20,
        "rss_peak_mib": sampler.peak / 2**20,
        "ru_maxrss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# ----------------------------------------------------------------------------- children: probes


def install_common_probes(timer) -> None:
    """Backward, clipping and the optimizer step, timed the same way in every library (accelerate + torch).

    ``timer`` has ``wrap(name, fn)`` (``fn`` timed into phase ``name``) and ``start(name)`` / ``stop(name)``."""
    import accelerate
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    accelerate.Accelerator.backward = timer.wrap("backward", accelerate.Accelerator.backward)
    accelerate.Accelerator.clip_grad_norm_ = timer.wrap("grad clip", accelerate.Accelerator.clip_grad_norm_)
    register_optimizer_step_pre_hook(lambda opt, a, k: timer.start("optimizer step"))
    register_optimizer_step_post_hook(lambda opt, a, k: timer.stop("optimizer step"))


def child_common(
    threads: int,
    seed: int,
    make_timer: Callable[[RSSSampler], T],
    probes: Callable[[T], None] = install_common_probes,
) -> tuple[RSSSampler, T]:
    """A child's start: torch threads and seed, the RSS sampler running, the script's timer with its probes."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    sampler = RSSSampler()
    sampler.start()
    timer = make_timer(sampler)
    probes(timer)
    return sampler, timer


def trl_training_args(out_dir: Path, lr: float, max_steps: int, seed: int) -> dict:
    """The ``TrainingArguments`` both TRL children pin to match alignlab's run: CPU, no tracker, no checkpoints, no
    progress bar; torch AdamW at a constant ``lr`` (no warm-up, weight decay 0, grad-norm clipping 1.0); gradient
    checkpointing off (TRL's default is on); a log row every step; ``seed`` for the model and the data; no data
    loader workers. The script adds the trainer's own settings (precision, batch, loss, sampling)."""
    return {
        "output_dir": str(out_dir),
        "report_to": "none",
        "use_cpu": True,
        "fp16": False,
        "gradient_checkpointing": False,
        "max_steps": max_steps,
        "learning_rate": lr,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }


# ----------------------------------------------------------------------------- parent


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def machine_info(
    threads: int,
    cpu_flags: tuple[str, ...],
    packages: tuple[str, ...] = ("torch", "transformers", "trl", "accelerate"),
    optional: tuple[str, ...] = ("trl",),
    avx512_flags: bool = False,
) -> dict:
    """CPU, memory, versions of ``packages`` (those in ``optional`` may be "not installed"), which of ``cpu_flags``
    the CPU has (with ``avx512_flags``: also the list of all its avx512* flags) and torch's CPU capability."""
    import torch

    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:
            if name not in optional:
                raise
            versions[name] = "not installed"
    cpu, flags = platform.processor() or "?", []
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1].split()
            if cpu != "?" and flags:
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory": mem,
        "threads": threads,
        "python": platform.python_version(),
        **versions,
        "platform": platform.platform(),
        "cpu_flags": {f: f in flags for f in cpu_flags},
    }
    if avx512_flags:
        info["avx512_flags"] = sorted(f for f in flags if f.startswith("avx512"))
    info["cpu_flags_all"] = " ".join(flags)
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return info


def machine_line(info: dict, packages: tuple[str, ...]) -> str:
    """The report's "Machine: ..." sentence (without a closing remark)."""
    return (
        f"Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['memory']} RAM; torch threads per run: "
        f"{info['threads']}. Python {info['python']}, " + ", ".join(f"{p} {info[p]}" for p in packages) + "."
    )


def flag_lists(info: dict, cpu_flags: tuple[str, ...]) -> tuple[str, str]:
    """(the CPU flags present, or "none of ...", the flags absent) of ``machine_info``'s ``cpu_flags``."""
    present = " ".join(f for f, on in info["cpu_flags"].items() if on) or "none of " + ", ".join(cpu_flags)
    absent = " ".join(f for f, on in info["cpu_flags"].items() if not on)
    return present, absent


def run_child(
    script: str | Path, name: str, data_path: Path, workdir: Path, rep: int, child_args: list[str], threads: int
) -> tuple[dict, dict, Path]:
    """Runs ``script --child name --data ... --result ... child_args`` in its own process (cwd the repository root,
    ``threads`` OMP/MKL threads, the shared model cache, a fresh alignlab cache) and waits for it.

    Returns (the child's result, the parent's measurements of it: ru_maxrss_mib, child_wall_s, loadavg_before,
    loadavg_after; the child's log file). A failed child ends the benchmark with the tail of its log."""
    result = workdir / f"{name}.{rep}.json"
    log = workdir / f"{name}.{rep}.log"
    script = Path(script).resolve()  # run by path: sys.path[0] of the child is bench/, where this module is
    cmd = [sys.executable, str(script), "--child", name, "--data", str(data_path), "--result", str(result)]
    cmd += child_args
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    from alignlab.models.loading import cache_dir

    env.setdefault("ALIGNLAB_MODEL_CACHE", str(cache_dir() / "models"))  # keep the shared model cache
    env["ALIGNLAB_CACHE"] = str(workdir / f"cache_{name}_{rep}")  # fresh: the reference is really computed
    load_before = loadavg()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(script.parents[1]))
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0 or not result.exists():
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"{name} child failed (exit {code}); log: {log}")
    measured = {
        "ru_maxrss_mib": ru.ru_maxrss / 1024,
        "child_wall_s": wall,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }
    return json.loads(result.read_text()), measured, log


def median_by_config(
    results: list[dict], configs: tuple[str, ...], keys: tuple[str, ...] | list[str], phases: tuple[str, ...] = ()
) -> dict[str, dict]:
    """{config: {key: median over its repeats}} (None where a repeat has no value), plus the median time per step of
    each of ``phases`` (from ``phases_per_step_s``, 0 where absent)."""
    out = {}
    for name in configs:
        rs = [r for r in results if r["name"] == name]
        if not rs:
            continue
        med = {k: statistics.median(r[k] for r in rs) if all(r.get(k) is not None for r in rs) else None for k in keys}
        for p in phases:
            med[p] = statistics.median(r["phases_per_step_s"].get(p, 0.0) for r in rs)
        out[name] = med
    return out


def parse_configs(text: str, known: tuple[str, ...]) -> list[str]:
    """``--configs`` (a comma list) checked against the known configurations."""
    configs = [c for c in text.split(",") if c]
    unknown = sorted(set(configs) - set(known))
    if unknown:
        raise SystemExit(f"unknown config(s) {unknown}; choose from {', '.join(known)}")
    return configs
