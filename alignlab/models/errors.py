"""Model-loading failures as one typed error whose message is one line that says what to do.

``load_model_and_tokenizer`` raises ``ModelLoadError`` (a ValueError) for a hub id that cannot be reached (offline,
unknown, gated), a local path that does not exist or is not a model directory, an architecture this transformers
does not know or that is not a causal LM, pickle-only weights, and running out of memory while loading. The CLI
prints the message as one line and exits with code 2; ``alignlab --debug ...`` shows the traceback instead
(README, "Errors").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformers

ALIAS_HINT = "the built-in alias smollm2-135m-instruct"
LOCAL_HINT = "a local model directory (config.json + *.safetensors)"
_TRUE = ("1", "true", "yes", "on")


class ModelLoadError(ValueError):
    """A model that cannot be loaded; the message names the model and what to do instead, on one line."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A local path that does not exist, is not a model directory or holds no weights (also a FileNotFoundError)."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids downloads, read at call time."""
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(name: str) -> bool:
    """A name that can only be a filesystem path, never a hub id (``name`` or ``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def check_local_model(path: Path, trust_remote_code: bool = False) -> None:
    """Fail early, saying what to do, for a local path that is not a loadable causal-LM (or LoRA adapter) dir."""
    if not path.exists():
        raise ModelNotFoundError(f"model {path}: no such directory; pass {LOCAL_HINT}, a hub id, or {ALIAS_HINT}")
    if not path.is_dir():
        raise ModelNotFoundError(f"model {path}: not a directory; pass {LOCAL_HINT}, a hub id, or {ALIAS_HINT}")
    config = path / "config.json"
    if config.is_file():
        check_architecture(_read_json(config), str(path), trust_remote_code)
        return
    if (path / "adapter_config.json").is_file():  # a LoRA adapter dir: transformers loads base + adapter (peft)
        return
    run = "; for a training run pass RUN/final or `alignlab export RUN`" if (path / "final").is_dir() else ""
    raise ModelNotFoundError(f"model {path}: no config.json, not a Hugging Face model dir{run}; pass {LOCAL_HINT}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"model {path.parent}: unreadable config.json ({_first_line(e)})") from e
    return data if isinstance(data, dict) else {}


def check_architecture(config: dict, name: str, trust_remote_code: bool = False) -> None:
    """A ``model_type`` transformers knows and can build a causal LM for; a config without one, or with remote code
    the user trusts, is left to transformers."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type is None or (trust_remote_code and "auto_map" in config):
        return
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelLoadError(
            f"model {name}: architecture model_type={model_type!r} is unknown to transformers "
            f"{transformers.__version__}; upgrade transformers, set trust_remote_code=true if the model ships its own "
            f"code and you trust it, or use {ALIAS_HINT}"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelLoadError(
            f"model {name}: model_type={model_type!r} is not a causal language model (transformers has no "
            f"AutoModelForCausalLM for it); alignlab needs a decoder LM, e.g. {ALIAS_HINT}"
        )


def oom_error(name: str, dtype: str, device: str | None) -> ModelLoadError:
    where = f" on {device}" if device else ""
    return ModelLoadError(
        f"model {name}: out of memory while loading it in {dtype}{where}; use dtype=bfloat16 (half the memory), "
        f"a smaller model such as {ALIAS_HINT}, or free memory"
    )


def hub_error(name: str, exc: BaseException) -> ModelLoadError:
    """A hub id that could not be fetched: offline and not cached, or unknown / gated / unreachable."""
    if hub_offline():
        return ModelLoadError(
            f"model {name!r}: no local directory of that name, and the hub id is not in the Hugging Face cache while "
            f"HF_HUB_OFFLINE=1 forbids downloading; use {ALIAS_HINT}, {LOCAL_HINT}, or unset HF_HUB_OFFLINE to "
            "download it"
        )
    return ModelLoadError(
        f"model {name!r}: cannot fetch it from the Hugging Face hub ({_first_line(exc)}); check the id (gated or "
        f"private models need `hf auth login`), or use {ALIAS_HINT} or {LOCAL_HINT}"
    )


def explain_load_failure(name: str, exc: BaseException, dtype: str, device: str | None) -> ModelLoadError | None:
    """The ModelLoadError for an exception raised while loading ``name``; None for one that is not about the model
    (a bug to show with its traceback)."""
    if isinstance(exc, ModelLoadError):
        return exc
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return oom_error(name, dtype, device)
    if isinstance(exc, OSError):
        if Path(name).expanduser().exists():
            return ModelLoadError(f"model {name}: cannot read it ({_first_line(exc)}); pass {LOCAL_HINT}")
        return hub_error(name, exc)
    if isinstance(exc, ValueError) and ("model type" in str(exc) or "model_type" in str(exc)):
        return ModelLoadError(
            f"model {name}: transformers {transformers.__version__} cannot build it ({_first_line(exc)}); upgrade "
            f"transformers or use {ALIAS_HINT}"
        )
    return None
