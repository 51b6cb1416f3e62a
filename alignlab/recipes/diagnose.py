"""`alignlab diagnose run_dir=RUN`: read RUN/metrics.jsonl and say what the reward curves mean.

Writes the text to ``output_dir/diagnosis.md`` (default: RUN/diagnose) beside the resolved config, and prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignlab.config import ConfigError, save_config
from alignlab.eval.diagnose import diagnose


@dataclass
class DiagnoseConfig:
    run_dir: str = ""  # a run directory of `alignlab train` (holds metrics.jsonl)
    output_dir: str = ""  # where diagnosis.md goes; empty = <run_dir>/diagnose

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("diagnose needs run_dir=RUN_DIR (a directory written by `alignlab train`)")
        if not (Path(self.run_dir) / "metrics.jsonl").is_file():
            raise ConfigError(f"{Path(self.run_dir) / 'metrics.jsonl'}: no such file (not a training run directory)")


def main(cfg: DiagnoseConfig) -> str:
    out = Path(cfg.output_dir or Path(cfg.run_dir) / "diagnose")
    save_config(cfg, out)
    text = diagnose(cfg.run_dir)
    (out / "diagnosis.md").write_text(text + "\n")
    print(text)
    return text
