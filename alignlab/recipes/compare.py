"""`alignlab compare RUN_DIR [RUN_DIR ...] [output_dir=DIR]`: finished runs side by side.

1. read every run directory (config.yaml; metrics.jsonl, or a demo's results.json; report.md when present): a
   missing directory or file stops here with its path;
2. print one table, a column per run: the config keys that differ between the runs (the keys equal in all of them
   are listed once below it), the last training row (loss, rewards/accuracies, rewards/margins), the last held-out
   evaluation row (eval_*) and, for demo runs, each method's Δgold;
3. write ``compare.html`` (self-contained: the table and every run's training curves overlaid, eval curves dashed),
   ``compare_curves.png`` and ``compare.json`` (the data) into ``output_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alignlab.config import ConfigError
from alignlab.eval.runs import Comparison, compare_runs
from alignlab.eval.runs_report import format_comparison, write_compare


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)  # run directories (`alignlab compare RUN_DIR RUN_DIR ...`)
    output_dir: str = "runs/compare"  # where compare.html, compare.json and compare_curves.png go

    def validate(self) -> None:
        if not self.runs:
            raise ConfigError("compare needs run directories: alignlab compare RUN_DIR [RUN_DIR ...]")


def main(cfg: CompareConfig) -> Comparison:
    comparison = compare_runs(cfg.runs)
    print(format_comparison(comparison))
    for kind, path in write_compare(comparison, cfg.output_dir).items():
        print(f"[alignlab] compare {kind}: {path}")
    return comparison
