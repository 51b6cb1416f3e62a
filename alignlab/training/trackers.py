"""Experiment trackers through accelerate's tracker API: ``report_to`` names them, metrics.jsonl is always written.

``report_to`` is a list (a comma-separated string or a YAML list): ``tensorboard`` (the default; logs in
``output_dir/tb``), ``wandb``, ``mlflow``, or ``none`` alone for no tracker. A tracker whose package is not
importable is a ConfigError naming the package, raised when the config is validated (before any data or model
is read): accelerate itself would silently drop it. Offline use (docs/config.md): ``WANDB_MODE=offline`` (the run
is written under ``output_dir/wandb``; ``wandb sync`` uploads it later) and ``MLFLOW_TRACKING_URI=file:./mlruns``
(a local store; ``mlflow ui`` reads it). ``WANDB_PROJECT`` / ``MLFLOW_EXPERIMENT_NAME`` name the project
(default ``alignlab``); the run is named after ``output_dir``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from alignlab.config import ConfigError

# tracker name -> the packages that provide it (any one of them); accelerate's TensorBoard tracker falls back to
# tensorboardX when torch.utils.tensorboard cannot import tensorboard
TRACKERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
}
NONE = "none"
DEFAULT_PROJECT = "alignlab"


def default_trackers() -> list[str]:
    """``report_to``'s default: TensorBoard only."""
    return ["tensorboard"]


def parse_report_to(value) -> list[str]:
    """``report_to`` as a list of lower-case names: a comma-separated string or a list (YAML), blanks dropped."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(v).strip().lower() for v in items if str(v).strip()]


def package_available(package: str) -> bool:
    """True when ``package`` can be imported here (checked without importing it; tests monkeypatch this)."""
    return importlib.util.find_spec(package) is not None


def active_trackers(names: list[str]) -> list[str]:
    """The trackers to start: ``names`` without ``none`` (``none`` alone, or an empty list: no tracker).

    Raises ConfigError for an unknown name, ``none`` beside a tracker, or a tracker whose package is missing
    (one error naming every missing package)."""
    unknown = [n for n in names if n not in TRACKERS and n != NONE]
    if unknown:
        raise ConfigError(
            f"report_to: unknown tracker(s) {', '.join(unknown)}; choose from {', '.join(TRACKERS)}, or {NONE}"
        )
    if NONE in names and len(names) > 1:
        raise ConfigError(f"report_to: '{NONE}' means no tracker; it cannot be combined with {names}")
    active = list(dict.fromkeys(n for n in names if n != NONE))
    missing = [n for n in active if not any(package_available(p) for p in TRACKERS[n])]
    if missing:
        pkgs = [TRACKERS[n][0] for n in missing]
        raise ConfigError(
            f"report_to={','.join(names)}: the Python package{'s' if len(pkgs) > 1 else ''} {', '.join(pkgs)} "
            f"{'are' if len(pkgs) > 1 else 'is'} not installed; "
            f"pip install {' '.join(pkgs)}, or leave {', '.join(missing)} out of report_to "
            "(metrics.jsonl is always written)"
        )
    return active


def make_trackers(names: list[str], run_dir: Path) -> list:
    """accelerate tracker objects for ``names`` (already checked by ``active_trackers``), logging into ``run_dir``
    where the tracker keeps local files. Nothing is imported or started here (``init_trackers`` starts them on the
    main process)."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    run_dir = Path(run_dir)
    make = {
        "tensorboard": lambda: TensorBoardTracker("tb", str(run_dir)),
        "wandb": lambda: WandBTracker(
            os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), dir=str(run_dir), name=run_dir.resolve().name
        ),
        "mlflow": lambda: MLflowTracker(experiment_name=DEFAULT_PROJECT, run_name=run_dir.resolve().name),
    }
    return [make[n]() for n in names]


def tracker_config(config: dict) -> dict:
    """The run's config as tracker hyperparameters: bool/int/float/str kept, lists comma-joined, None as "None"
    (TensorBoard's hparams accept nothing else)."""

    def plain(v):
        if isinstance(v, (bool, int, float, str)):
            return v
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return {k: plain(v) for k, v in config.items()}
