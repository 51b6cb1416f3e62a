"""LoRA adapters and the reference policy without a second copy of the weights (docs/conventions.md R9).

Mode 1 (``apply_lora``): fresh adapter; the reference is the base model, i.e. the adapter disabled.
Mode 2 (``load_lora``): training continues from an existing adapter; the reference is a frozen copy
of that adapter under the name ``"ref"`` (disabling would wrongly give the base model).
Mode 3 (explicit reference model) needs nothing from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model

TRAIN_ADAPTER = "default"
REF_ADAPTER = "ref"


def apply_lora(
    model: torch.nn.Module,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    top_layers: int = 0,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
) -> PeftModel:
    """Wrap ``model`` with a fresh trainable LoRA adapter (B=0, so outputs equal the base at init).

    ``"all-linear"`` targets every linear layer except the output head; pass an explicit list for
    models with non-standard module names (e.g. mixture-of-experts). ``top_layers`` > 0 restricts the
    adapters to the last N transformer blocks. ``task_type="SEQ_CLS"`` with ``modules_to_save=["score"]`` is the
    reward-model set-up (alignlab.models.reward_model): adapters on the backbone, the new scalar head trained in
    full; modules listed there never get an adapter.
    """
    layers = None
    if top_layers > 0:
        # Adapters only in the last N blocks: nothing below them needs gradients, so autograd never
        # back-propagates through the lower blocks (the backward pass costs ~N/L of a full one).
        n_layers = model.config.num_hidden_layers
        layers = list(range(max(0, n_layers - top_layers), n_layers))
        if target_modules == "all-linear":  # peft needs explicit names together with layers_to_transform
            head = model.get_output_embeddings()
            target_modules = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not head
                }
                - set(modules_to_save or [])
            )
    config = LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        layers_to_transform=layers,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


def _require_safetensors_adapter(adapter_path: str | Path) -> None:
    path = Path(adapter_path)
    if path.is_dir() and not (path / "adapter_model.safetensors").is_file():
        raise ValueError(f"{path} has no adapter_model.safetensors; alignlab does not unpickle adapter weights")


def load_policy_adapter(model: torch.nn.Module, adapter_path: str | Path) -> PeftModel:
    """A saved adapter on top of ``model``, frozen, for evaluation (safetensors only)."""
    _require_safetensors_adapter(adapter_path)
    return PeftModel.from_pretrained(model, str(adapter_path)).eval()


def load_lora(model: torch.nn.Module, adapter_path: str | Path) -> PeftModel:
    """Continue training from an existing adapter (R9 mode 2).

    The adapter is loaded twice: trainable as ``"default"`` and frozen as ``"ref"``, which
    ``reference_mode`` activates. Only the (small) adapter is duplicated, never the base weights.
    """
    _require_safetensors_adapter(adapter_path)
    peft_model = PeftModel.from_pretrained(model, str(adapter_path), adapter_name=TRAIN_ADAPTER, is_trainable=True)
    peft_model.load_adapter(str(adapter_path), adapter_name=REF_ADAPTER, is_trainable=False)
    peft_model.set_adapter(TRAIN_ADAPTER)  # also re-freezes "ref"
    return peft_model


def save_lora(model: PeftModel, dirpath: str | Path) -> Path:
    """Save the trainable adapter only (safetensors); loadable with ``load_lora``."""
    model.save_pretrained(str(dirpath), selected_adapters=[TRAIN_ADAPTER], safe_serialization=True)
    return Path(dirpath)


@contextlib.contextmanager
def reference_mode(model: PeftModel) -> Iterator[PeftModel]:
    """Inside the context ``model`` computes the reference policy; use under ``torch.no_grad()``.

    Fresh adapter: the adapter is disabled. Adapter loaded with ``load_lora``: the frozen ``"ref"``
    copy is made active, and the previous adapter and every ``requires_grad`` flag are restored on exit.
    """
    if not isinstance(model, PeftModel):
        raise TypeError("reference_mode needs a PeftModel; without LoRA pass an explicit reference model")
    if REF_ADAPTER not in model.peft_config:
        with model.disable_adapter():
            yield model
        return
    active = model.active_adapter
    # peft's set_adapter toggles requires_grad of whole adapters; restore the exact flags afterwards.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.set_adapter(REF_ADAPTER, inference_mode=True)
    try:
        yield model
    finally:
        model.set_adapter(active)
        for p, flag in flags:
            p.requires_grad_(flag)


def merge_lora(model: PeftModel) -> torch.nn.Module:
    """Fold the trainable adapter into the base weights and return the plain model.

    In place: ``model`` must not be used afterwards. Extra adapters (``"ref"``) are dropped.
    """
    if model.active_adapter != TRAIN_ADAPTER and TRAIN_ADAPTER in model.peft_config:
        model.set_adapter(TRAIN_ADAPTER)
    return model.merge_and_unload(adapter_names=[model.active_adapter]).eval()


def trainable_parameter_report(model: torch.nn.Module) -> str:
    """One line: trainable vs total parameters, plus each adapter's LoRA settings."""
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    line = f"trainable params: {trainable:,} / {total:,} ({100 * trainable / max(total, 1):.4f}%)"
    for name, cfg in (getattr(model, "peft_config", None) or {}).items():
        targets = sorted(cfg.target_modules) if isinstance(cfg.target_modules, set) else cfg.target_modules
        frozen = " frozen" if cfg.inference_mode else ""
        line += (
            f"; adapter {name!r}{frozen}: r={cfg.r} alpha={cfg.lora_alpha} dropout={cfg.lora_dropout} targets={targets}"
        )
    return line
