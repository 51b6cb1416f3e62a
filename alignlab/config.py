"""Flat config dataclasses: YAML file + ``key=value`` command-line overrides, saved into the run directory.

Every entry point owns one flat dataclass (no nesting), so a run's whole configuration is one YAML page.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclass (names the key and the source)."""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except (ConfigError, ValueError, TypeError):
                continue
        raise ConfigError(f"config key {key!r}: cannot interpret {value!r} as {annotation}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        elif not isinstance(value, (list, tuple)):  # one YAML scalar (betas=0.1, seeds=0): a list of one
            value = [value]
        inner = args[0] if args else str
        return [_coerce(v, inner, key) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}") from None
    if annotation is str:
        return str(value)
    return value


def build_config(cls: type[T], yaml_path: str | None = None, overrides: list[str] | None = None) -> T:
    """Instantiate ``cls`` from defaults, then a YAML file, then ``key=value`` overrides (later wins).

    Unknown keys are errors (a typo must not silently fall back to a default).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if yaml_path:
        with open(yaml_path) as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of config keys")
        for k, v in loaded.items():
            if k not in names:
                raise ConfigError(f"{yaml_path}: unknown config key {k!r} for {cls.__name__}")
            values[k] = _coerce(v, hints[k], k)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        k = k.strip().lstrip("-").replace("-", "_")
        if k not in names:
            raise ConfigError(f"override {item!r}: unknown config key {k!r} for {cls.__name__}")
        values[k] = _coerce(yaml.safe_load(v) if v.strip() else v, hints[k], k)
    cfg = cls(**values)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def field_default(cls_or_cfg: Any, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls_or_cfg) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def reject_unread(cfg: Any, keys: Iterable[str], why: str) -> None:
    """A key that the chosen method does not read must stay at its default (docs/conventions.md R11): raise a
    ConfigError naming each offending key and value, and ``why`` (the method and the keys it does read)."""
    bad = [k for k in keys if getattr(cfg, k) != field_default(cfg, k)]
    if bad:
        got = ", ".join(f"{k}={getattr(cfg, k)!r}" for k in bad)
        raise ConfigError(f"{got} is set but not read: {why}")


def save_config(cfg: Any, run_dir: Path) -> Path:
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        yaml.safe_dump(config_dict(cfg), fh, sort_keys=False)
    return path
