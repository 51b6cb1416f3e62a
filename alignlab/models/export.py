"""Export a finished `alignlab train` run as a plain Hugging Face model directory with a model card (docs/export.md).

``RUN/final`` holds the whole model (``lora=false``) or a LoRA adapter (``adapter_config.json`` +
``adapter_model.safetensors``). ``export_run`` writes ``output_dir`` with
- an adapter and ``merge=True``: the base model (config.yaml's ``model``, loaded in fp32) with the adapter merged into
  its weights, cast to the saved dtype: ``AutoModelForCausalLM.from_pretrained(output_dir)`` needs no peft;
- an adapter and ``merge=False``: the adapter as it is (transformers loads it through peft, fetching the base);
- a full model: its files copied, or re-saved when another ``dtype`` is asked for;
and always the tokenizer, weights as safetensors only, ``README.md`` (the model card: the run's config, data, final
metrics and report) and ``alignlab_export.json`` (where it came from; it marks a directory a later export may
replace).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from alignlab.models.errors import ModelLoadError, looks_like_path
from alignlab.models.loading import DTYPES, MODEL_ALIASES, load_model_and_tokenizer
from alignlab.models.lora import load_policy_adapter

MARKER = "alignlab_export.json"
KINDS = {
    "merged": "LoRA adapter merged into the base weights",
    "adapter": "LoRA adapter (load with peft; the base model is fetched from adapter_config.json)",
    "full": "full fine-tuned model",
}


class ExportError(ValueError):
    """A run directory that cannot be exported, or an output directory that must not be overwritten."""


@dataclass(frozen=True)
class RunInfo:
    """What a training run directory holds: config.yaml, final/, the last metrics row and report.md."""

    run_dir: Path
    config: dict
    final_dir: Path
    adapter: bool
    metrics: dict
    report: str


@dataclass(frozen=True)
class ExportResult:
    output_dir: Path
    kind: str  # a key of KINDS
    dtype: str


def read_run(run_dir: str | Path) -> RunInfo:
    """The run's config, its final model directory and results; ExportError naming what is missing and what to do."""
    run = Path(run_dir)
    config_path, final = run / "config.yaml", run / "final"
    if not config_path.is_file():
        raise ExportError(f"{run}: no config.yaml, not a directory written by `alignlab train`")
    if not final.is_dir():
        raise ExportError(
            f"{run}: no final/ (the run did not finish); resume it with "
            f"`alignlab train --config {config_path} resume_from=latest`"
        )
    config = yaml.safe_load(config_path.read_text()) or {}
    report = run / "report.md"
    return RunInfo(
        run_dir=run,
        config=config,
        final_dir=final,
        adapter=(final / "adapter_config.json").is_file(),
        metrics=last_metrics(run / "metrics.jsonl"),
        report=report.read_text() if report.is_file() else "",
    )


def last_metrics(path: Path) -> dict:
    """The last training row of metrics.jsonl, with the held-out ``eval_*`` metrics of the same step when the run
    evaluated there ({} when there is no row)."""
    if not path.is_file():
        return {}
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    is_eval = [any(k.startswith("eval_") for k in r) for r in rows]
    train = [r for r, e in zip(rows, is_eval) if not e]
    if not train:
        return rows[-1] if rows else {}
    same_step = [r for r, e in zip(rows, is_eval) if e and r.get("step") == train[-1].get("step")]
    return train[-1] | (same_step[-1] if same_step else {})


def export_run(run_dir: str | Path, output_dir: str | Path = "", merge: bool = True, dtype: str = "") -> ExportResult:
    """Write the run's model, tokenizer and model card into ``output_dir`` (default ``RUN/export``); see the module
    docstring. ``dtype`` empty: the run's dtype. The directory appears complete or not at all (written beside it,
    then renamed); an existing one is replaced only if an earlier export wrote it."""
    run = read_run(run_dir)
    dtype = dtype or run.config.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    out = Path(output_dir) if output_dir else run.run_dir / "export"
    _check_replaceable(out)
    kind = "full" if not run.adapter else "merged" if merge else "adapter"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        WRITERS[kind](run, tmp, dtype)
        (tmp / "README.md").write_text(model_card(run, kind, dtype))
        marker = {"run_dir": str(run.run_dir.resolve()), "kind": kind, "dtype": dtype, "merge": merge}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(out, kind, dtype)


def _check_replaceable(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ExportError(f"{out} exists and was not written by `alignlab export`; choose another output_dir")


def _base_model_name(run: RunInfo) -> str:
    name = run.config.get("model")
    if not name:
        raise ExportError(f"{run.run_dir}/config.yaml names no model; the adapter cannot be merged")
    return str(name)


def write_merged(run: RunInfo, out: Path, dtype: str) -> None:
    """The base model with the adapter merged (in fp32, then cast), and the run's tokenizer."""
    try:
        base, tok = load_model_and_tokenizer(
            _base_model_name(run), dtype="float32", trust_remote_code=bool(run.config.get("trust_remote_code"))
        )
    except ModelLoadError as e:
        raise ModelLoadError(f"base model of {run.run_dir}: {e}") from e
    merged = load_policy_adapter(base, run.final_dir).merge_and_unload()
    merged.to(DTYPES[dtype]).save_pretrained(out, safe_serialization=True)
    _run_tokenizer(run, tok).save_pretrained(out)


def write_adapter(run: RunInfo, out: Path, dtype: str) -> None:
    """The adapter files as they are (dtype is the adapter's; the base is named in adapter_config.json)."""
    _copy_files(run.final_dir, out)


def write_full(run: RunInfo, out: Path, dtype: str) -> None:
    """The full model's files, or the model re-saved in ``dtype`` when the run used another."""
    if dtype == run.config.get("dtype", "float32"):
        _copy_files(run.final_dir, out)
        return
    model, tok = load_model_and_tokenizer(str(run.final_dir), dtype=dtype)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


WRITERS = {"merged": write_merged, "adapter": write_adapter, "full": write_full}


def _copy_files(src: Path, out: Path) -> None:
    for p in src.iterdir():
        if p.is_file() and p.name not in ("README.md", MARKER):
            shutil.copy2(p, out / p.name)


def _run_tokenizer(run: RunInfo, fallback):
    """The tokenizer saved beside the adapter (what training used), else the base model's."""
    if (run.final_dir / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(run.final_dir))
    return fallback


# ------------------------------------------------------------------ the model card


def fmt(value) -> str:
    """A metric value as the card prints it (6 significant digits for floats)."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def is_hub_id(model: str) -> bool:
    """True when a run's ``model`` names a Hub repository (a card's ``base_model``), not an alias or a local path."""
    return bool(model) and model not in MODEL_ALIASES and not looks_like_path(model) and not Path(model).exists()


def _front_matter(run: RunInfo, kind: str) -> str:
    model, loss = str(run.config.get("model", "")), str(run.config.get("loss", ""))
    lines = ["---", f"library_name: {'peft' if kind == 'adapter' else 'transformers'}"]
    if is_hub_id(model):
        lines.append(f"base_model: {model}")
    tags = ["alignlab", loss, {"merged": "lora-merged", "adapter": "lora", "full": "full-fine-tune"}[kind]]
    return "\n".join(lines + ["tags:"] + [f"- {t}" for t in tags if t] + ["---", ""])


def _summary_table(run: RunInfo, kind: str, dtype: str) -> list[str]:
    c = run.config
    beta = c.get("beta")
    beta = "the loss's default" if beta is None else beta
    tuning = (
        f"LoRA r={c.get('lora_r')}, alpha={c.get('lora_alpha')}, target {c.get('lora_target')}"
        if run.adapter
        else "full fine-tuning"
    )
    rows = [
        ("base model", f"`{c.get('model', '')}`"),
        ("loss", f"`{c.get('loss', '')}` (beta = {beta})"),
        ("fine-tuning", f"{tuning}; exported: {KINDS[kind]}"),
        ("data", f"`{c.get('data', '')}`" + (f" (split {c['split']})" if c.get("split") else "")),
        ("steps", fmt(run.metrics.get("step", ""))),
        ("learning rate", fmt(c.get("learning_rate", ""))),
        ("dtype", dtype),
    ]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def metrics_table(metrics: dict) -> list[str]:
    if not metrics:
        return ["(no metrics.jsonl in the run directory)"]
    return ["| metric | value |", "|---|---|"] + [f"| `{k}` | {fmt(v)} |" for k, v in metrics.items()]


def demoted_report(report: str) -> str:
    """report.md under this card's headings: every heading one level deeper."""
    return "\n".join("#" + ln if ln.startswith("#") else ln for ln in report.strip().splitlines())


def write_final_card(run_dir: str | Path) -> Path:
    """Replace the generic card that ``save_pretrained`` leaves in ``RUN/final`` (peft's template) with this run's:
    config, data, final training and held-out metrics, report. Called by `alignlab train` once report.md exists."""
    run = read_run(run_dir)
    kind = "adapter" if run.adapter else "full"
    origin = f"Written by `alignlab train` into `{run.final_dir}`; `alignlab export {run.run_dir}` merges an adapter."
    path = run.final_dir / "README.md"
    path.write_text(model_card(run, kind, str(run.config.get("dtype", "float32")), origin))
    return path


def model_card(run: RunInfo, kind: str, dtype: str, origin: str = "") -> str:
    """README.md of an export (or of RUN/final): what it is, how to load it, the final metrics, the report and
    config. ``origin``: the sentence saying where the directory came from (default: `alignlab export`)."""
    c = run.config
    title = f"# {run.run_dir.resolve().name}: {c.get('loss', 'preference')}-aligned `{c.get('model', '')}`"
    cls, lib = ("AutoPeftModelForCausalLM", "peft") if kind == "adapter" else ("AutoModelForCausalLM", "transformers")
    parts = [
        _front_matter(run, kind),
        title,
        "",
        origin or f"Exported by `alignlab export` from the training run `{run.run_dir}`.",
        "",
        *_summary_table(run, kind, dtype),
        "",
        "## Load",
        "",
        "```python",
        f"from {lib} import {cls}",
        "from transformers import AutoTokenizer",
        "",
        'path = "."  # this directory, or its hub id once uploaded',
        f"model = {cls}.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "```",
        "",
        *card_results(run),
    ]
    return "\n".join(parts)


def card_results(run: RunInfo) -> list[str]:
    """The closing sections of a card: the final metrics, the run's report.md and its config."""
    step = fmt(run.metrics.get("step", "?"))
    parts = [f"## Final metrics (step {step}, the last training row of metrics.jsonl)", "", *metrics_table(run.metrics)]
    if run.report:
        parts += ["", "## Report (report.md)", "", demoted_report(run.report)]
    config = yaml.safe_dump(run.config, sort_keys=False).strip()
    return parts + ["", "## Training config (config.yaml)", "", "```yaml", config, "```", ""]
