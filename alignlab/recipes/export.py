"""`alignlab export RUN_DIR [merge=true] [output_dir=DIR] [dtype=...]`: a finished training run as a model directory
that plain ``transformers.AutoModelForCausalLM.from_pretrained`` loads (docs/export.md).

1. read RUN_DIR: config.yaml (the base model, the loss, the data) and final/ (a LoRA adapter or the full model);
2. write the model: with LoRA and ``merge=true`` the adapter merged into the base weights; without LoRA the full
   model; safetensors only, with the tokenizer;
3. write README.md, the model card: the run's config, data, the last training row of metrics.jsonl (with its
   eval_* metrics) and report.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignlab.config import ConfigError
from alignlab.models.export import KINDS, ExportResult, export_run, read_run
from alignlab.models.loading import DTYPES


@dataclass
class ExportConfig:
    run_dir: str = ""  # a finished `alignlab train` run (config.yaml and final/)
    output_dir: str = ""  # the exported model directory; empty = <run_dir>/export
    merge: bool = True  # LoRA runs: merge the adapter into the base (plain transformers); false = the adapter as is
    dtype: str = ""  # saved weights; empty = the run's dtype

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("export needs RUN_DIR (a directory written by `alignlab train`): alignlab export RUN_DIR")
        if self.dtype and self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be empty (the run's) or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        read_run(self.run_dir)  # no config.yaml or no final/: stop here, saying what to do


def main(cfg: ExportConfig) -> ExportResult:
    res = export_run(cfg.run_dir, cfg.output_dir, merge=cfg.merge, dtype=cfg.dtype)
    load = "peft's AutoPeftModelForCausalLM" if res.kind == "adapter" else "transformers.AutoModelForCausalLM"
    print(f"exported {KINDS[res.kind]} ({res.dtype}) to {res.output_dir}; load it with {load}.from_pretrained")
    print(f"model card: {Path(res.output_dir) / 'README.md'}")
    return res
