"""Run directories side by side (`alignlab compare`): each read into a typed record, then what differs.

A run directory (`alignlab train`, `alignlab demo`) holds ``config.yaml`` (the resolved config) and, from training,
``metrics.jsonl``: training rows (``loss``, ``rewards/*``, ...) and held-out evaluation rows (those with
``eval_loss``: ``eval_*`` metrics); a demo run holds ``results.json`` (its method rows) instead. ``report.md`` is
read when present. A missing directory or file, or a line that is not JSON, is a ``RunDirError`` (a ValueError)
naming the path, raised before anything is compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

EVAL_MARK = "eval_loss"  # a metrics.jsonl row holding it is a held-out evaluation row
TRAIN_KEYS = ("loss", "rewards/accuracies", "rewards/margins")  # the final metrics and the curves
SKIPPED_EVAL_KEYS = ("eval_runtime",)  # seconds, not a metric of the model
NOT_COMPARED = ("output_dir",)  # differs between any two runs by construction; the run's label names it


class RunDirError(ValueError):
    """A run directory that cannot be read: names the directory or file and what is wrong."""


@dataclass(frozen=True)
class Run:
    """One run directory: its config, its training and evaluation rows (file order), report.md, results.json."""

    path: Path
    config: dict
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    report: str = ""
    results: list[dict] = field(default_factory=list)

    @property
    def final_train(self) -> dict:
        """The last training row ({} when there is none)."""
        return self.train[-1] if self.train else {}

    @property
    def final_eval(self) -> dict:
        """The last evaluation row ({} when there is none)."""
        return self.evals[-1] if self.evals else {}


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file; RunDirError naming the file and line of one that is not a JSON object."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}:{i}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise RunDirError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_config(run: Path) -> dict:
    """RUN/config.yaml as a mapping; RunDirError when it is missing or is not one."""
    path = run / "config.yaml"
    if not path.is_file():
        raise RunDirError(f"{path}: no such file; {run} is not a run directory of `alignlab train` or `alignlab demo`")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RunDirError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{path}: expected a mapping of config keys")
    return config


def read_results(path: Path) -> list[dict]:
    """A demo's results.json (a list of method rows); RunDirError when it is not one."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path}: not JSON ({e.msg})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise RunDirError(f"{path}: expected a list of method rows")
    return rows


def read_run(path: str | Path) -> Run:
    """One run directory as a Run: config.yaml is required, and metrics.jsonl or results.json (RunDirError naming
    the missing path otherwise); report.md is read when present."""
    run = Path(path)
    if not run.is_dir():
        raise RunDirError(f"{run}: no such run directory")
    config = read_config(run)
    metrics, results, report = run / "metrics.jsonl", run / "results.json", run / "report.md"
    if not metrics.is_file() and not results.is_file():
        raise RunDirError(f"{metrics}: no such file (nor results.json); {run} holds no metrics to compare")
    rows = read_jsonl(metrics) if metrics.is_file() else []
    return Run(
        path=run,
        config=config,
        train=[r for r in rows if EVAL_MARK not in r and "loss" in r],
        evals=[r for r in rows if EVAL_MARK in r],
        report=report.read_text(encoding="utf-8") if report.is_file() else "",
        results=read_results(results) if results.is_file() else [],
    )


def run_labels(paths: list[Path]) -> list[str]:
    """Short unique names: each path's last part, or as many trailing parts as it takes to tell them apart."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same directory twice: its full path each time


def config_split(configs: list[dict]) -> tuple[list[str], dict]:
    """(keys whose values differ between the configs, in first-seen order; {key: value} of those equal in all).
    A key missing from some config differs; NOT_COMPARED keys are left out of both."""
    keys = [k for k in dict.fromkeys(k for c in configs for k in c) if k not in NOT_COMPARED]
    missing = object()
    differ = [k for k in keys if len({json.dumps(c.get(k, missing), default=str) for c in configs}) > 1]
    shared = {k: configs[0][k] for k in keys if k not in differ}
    return differ, shared


def final_metrics(run: Run) -> dict:
    """The last training row's step and TRL metrics (TRAIN_KEYS), then every ``eval_*`` metric of the last
    evaluation row (``eval_step``: its step); keys the run does not log are absent."""
    out = {"step": run.final_train["step"]} if "step" in run.final_train else {}
    out |= {k: run.final_train[k] for k in TRAIN_KEYS if k in run.final_train}
    last = run.final_eval
    if last:
        out["eval_step"] = last.get("step")
        out |= {k: v for k, v in last.items() if k.startswith("eval_") and k not in SKIPPED_EVAL_KEYS}
    return out


def method_results(run: Run) -> dict:
    """A demo run's gain over the base model per trained method: {method: (Δgold, s.e.)} (trained methods' rows
    carry ``diff_ci``; the base row does not)."""
    return {r["method"]: (r["diff"], r["diff_se"]) for r in run.results if "diff_ci" in r}


@dataclass(frozen=True)
class Comparison:
    """Runs side by side: their labels, the config keys that differ, the shared ones, and each run's final metrics
    and (demo runs) per-method gains."""

    runs: list[Run]
    labels: list[str]
    differing: list[str]
    shared: dict
    finals: list[dict]
    gains: list[dict]


def compare_runs(paths: list[str | Path]) -> Comparison:
    """Read every run (each error names its run and file), then split the configs and take the final metrics."""
    runs = [read_run(p) for p in paths]
    differing, shared = config_split([r.config for r in runs])
    return Comparison(
        runs,
        run_labels([r.path for r in runs]),
        differing,
        shared,
        [final_metrics(r) for r in runs],
        [method_results(r) for r in runs],
    )


def fmt_value(v) -> str:
    """A config or metric value as a short cell: floats to 4 significant digits, lists comma-joined."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ",".join(fmt_value(x) for x in v) or "[]"
    if isinstance(v, dict):
        return json.dumps(v, default=str)
    return str(v) if v != "" else '""'


def table_rows(c: Comparison) -> tuple[list[str], list[list[str]], list[int]]:
    """(head, body, first rows of each section): one row per differing config key, per final metric and per demo
    method; the first column names the section ("config", "final", "eval", "Δgold"), the second the key."""
    missing = "-"  # the run has no such key
    body, starts = [], []

    def section(name: str, keys: list[str], cell) -> None:
        if keys:
            starts.append(len(body))
        body.extend([name if i == 0 else "", k, *(cell(j, k) for j in range(len(c.runs)))] for i, k in enumerate(keys))

    def metric_keys(prefix: bool) -> list[str]:
        return [k for k in dict.fromkeys(k for f in c.finals for k in f) if k.startswith("eval_") == prefix]

    def gain(j, m):
        d, se = c.gains[j].get(m, (None, None))
        return missing if d is None else f"{d:+.4f} ± {se:.4f}"

    def value(d: dict, k: str) -> str:
        return fmt_value(d[k]) if k in d else missing

    section("config", c.differing, lambda j, k: value(c.runs[j].config, k))
    section("final", metric_keys(False), lambda j, k: value(c.finals[j], k))
    section("eval", metric_keys(True), lambda j, k: value(c.finals[j], k))
    section("Δgold", list(dict.fromkeys(m for g in c.gains for m in g)), gain)
    return ["", "key", *c.labels], body, starts


def shared_line(c: Comparison) -> str:
    """The config keys equal in every run, once: ``key=value, ...``."""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in c.shared.items())
