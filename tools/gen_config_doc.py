"""Regenerate docs/config.md from the config dataclasses and the choices table (alignlab.choices, the one behind
`alignlab <cmd> --help`): python tools/gen_config_doc.py > docs/config.md"""

import dataclasses
import inspect
import re
import typing

from alignlab.choices import choices_for
from alignlab.recipes.compare import CompareConfig
from alignlab.recipes.demo import DemoConfig
from alignlab.recipes.diagnose import DiagnoseConfig
from alignlab.recipes.export import ExportConfig
from alignlab.recipes.generate import GenerateConfig
from alignlab.recipes.heatmap import HeatmapConfig
from alignlab.recipes.label import LabelConfig
from alignlab.recipes.rl import RLConfig
from alignlab.recipes.rlaif import RLAIFConfig
from alignlab.recipes.rm import RMConfig
from alignlab.recipes.score import ScoreConfig
from alignlab.recipes.study import StudyConfig
from alignlab.recipes.train import TrainConfig


def comments(cls):
    src = inspect.getsource(cls)
    out = {}
    for line in src.splitlines():
        m = re.match(r"\s+(\w+): [^=]+= (.+?)(?:\s+#\s*(.*))?$", line)
        if m:
            out[m.group(1)] = m.group(3) or ""
    return out


def table(cls):
    hints = typing.get_type_hints(cls)
    c = comments(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        t = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "").replace(" | ", " or ")
        meaning = c.get(f.name, "").replace(" | ", " or ")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        rows.append(f"| `{f.name}` | {t} | `{default!r}` | {meaning} |")
    return "\n".join(rows) + choices(cls)


def choices(cls):
    """The enumerated keys of ``cls``, each choice on one line (the same table as `alignlab <cmd> --help`)."""
    table = choices_for(cls.__name__)
    if not table:
        return ""
    lines = ["", "", "Choices of the enumerated keys:", ""]
    for key, ch in table.items():
        lines.append(f"- `{key}`")
        lines += [f"  - `{v}`: {d}" if v else f'  - `""`: {d}' for v, d in ch.values.items()]
        lines += [f"  - {ch.other}"] if ch.other else []
    return "\n".join(lines)


print(
    """# Configuration reference

Every entry point has one flat config dataclass. Values come from the defaults, then `--config FILE.yaml`,
then `key=value` arguments (later wins); unknown keys are errors. The resolved config is written to
`<output_dir>/config.yaml`, which can be passed back with `--config` to repeat a run.

## `alignlab train` (`alignlab.recipes.train.TrainConfig`)

"""
    + table(TrainConfig)
    + """

Notes
- Effective batch = `per_device_batch_size × grad_accum × number of processes` pairs. Per-pair losses are
  divided by the pairs of the effective batch and the SFT term by its chosen tokens, so the gradient does not
  depend on the split (tested for 1×8, 2×4, 4×2, 8×1 and 2 processes).
- With `lora=true` the reference is the base model without the adapter; its log-probs are computed once before
  training and cached under `~/.cache/alignlab/reflogps/` (key: every token id, the model fingerprint, dtype).
- `gradient_checkpointing` is on by default (memory); turn it off for small models where time is the limit.
- `stop_after_steps` exists to test exact resume: it stops as if killed while keeping the schedule of `max_steps`.
- `eval_data`: held-out pairs evaluated at step 0, every `eval_steps` and at the end (`eval_*` rows in
  metrics.jsonl, `best.json`; [metrics.md](metrics.md#held-out-evaluation-eval_data)). `eval_split`, `eval_steps`
  and `eval_batch_size` without `eval_data` are errors.
- `report_to`: a comma list (`report_to=tensorboard,wandb`) or a YAML list; `none` for no tracker. metrics.jsonl
  is always written. `wandb` / `mlflow` need their package (a missing one is an error before anything loads);
  offline: `WANDB_MODE=offline` (the run lands in `output_dir/wandb`; `wandb sync` later) and
  `MLFLOW_TRACKING_URI=file:./mlruns` (a local store; `mlflow ui --backend-store-uri ./mlruns`).

## `alignlab rm` (`alignlab.recipes.rm.RMConfig`)

Bradley–Terry reward models on the data formats of `train` ([reward_models.md](reward_models.md)).

"""
    + table(RMConfig)
    + """

## `alignlab rl` (`alignlab.recipes.rl.RLConfig`)

Online RL against a reward: PPO, RLOO, GRPO ([rlhf.md](rlhf.md)). Keys marked with an algorithm are read by that
algorithm only; set for another one they are an error. `None` means the algorithm's default.

"""
    + table(RLConfig)
    + """

## `alignlab study` (`alignlab.recipes.study.StudyConfig`)

Reward over-optimization studies ([study.md](study.md)). Keys marked with a mode are read by that mode only; set
for another one they are an error.

"""
    + table(StudyConfig)
    + """

## `alignlab demo` (`alignlab.recipes.demo.DemoConfig`)

"""
    + table(DemoConfig)
    + """

## `alignlab generate` (`alignlab.recipes.generate.GenerateConfig`)

Method parameters left unset take the method's defaults; see [decoding.md](decoding.md).

"""
    + table(GenerateConfig)
    + """

## `alignlab heatmap` (`alignlab.recipes.heatmap.HeatmapConfig`)

"""
    + table(HeatmapConfig)
    + """

## `alignlab score` (`alignlab.recipes.score.ScoreConfig`)

"""
    + table(ScoreConfig)
    + """

## `alignlab label` (`alignlab.recipes.label.LabelConfig`)

AI-feedback labelling: every pair judged in both orders by a local causal LM or an OpenAI-compatible endpoint
([rlaif.md](rlaif.md)). Keys under "local judge" are read by a model judge only, those under "endpoint judge" by an
`http(s)://` judge only; set for the other kind they are an error.

"""
    + table(LabelConfig)
    + """

## `alignlab rlaif` (`alignlab.recipes.rlaif.RLAIFConfig`)

RLAIF end to end on the embedded task ([rlaif.md](rlaif.md#rlaif-end-to-end-alignlab-rlaif)): the demo's on-policy
pairs labelled by the judge, every method of `methods` trained on the same prompts and budget, one table. The RM keys
are read only with an RM method (`rloo_judge_rm`, `rloo_gold_rm`), the RL keys only with an RL method, and
`rating_template` only with `d_rlaif`; set otherwise they are an error.

"""
    + table(RLAIFConfig)
    + """

## `alignlab diagnose` (`alignlab.recipes.diagnose.DiagnoseConfig`)

`alignlab diagnose RUN_DIR` is short for `run_dir=RUN_DIR`.

"""
    + table(DiagnoseConfig)
    + """

## `alignlab export` (`alignlab.recipes.export.ExportConfig`)

`alignlab export RUN_DIR` is short for `run_dir=RUN_DIR`; see [export.md](export.md).

"""
    + table(ExportConfig)
    + """

## `alignlab compare` (`alignlab.recipes.compare.CompareConfig`)

`alignlab compare RUN_DIR RUN_DIR ...` is short for `runs=[RUN_DIR, RUN_DIR, ...]`: the config keys that differ, the
final metrics and the training curves of finished runs side by side (`compare.html`, `compare.json`).

"""
    + table(CompareConfig)
    + """

## Environment

| variable | effect |
|---|---|
| `ALIGNLAB_CACHE` | cache root (default `$XDG_CACHE_HOME/alignlab` or `~/.cache/alignlab`): models, reference \
log-probs, on-policy pairs |
| `ALIGNLAB_MODEL_CACHE` | model cache directory only (default `<cache>/models`) |
| `HF_HUB_OFFLINE=1` | set by the Makefile; the built-in model never needs the hub |
| `WANDB_MODE=offline`, `WANDB_PROJECT` | `report_to=wandb`: log locally (under `output_dir/wandb`); the project \
(default `alignlab`) |
| `MLFLOW_TRACKING_URI=file:./mlruns`, `MLFLOW_EXPERIMENT_NAME` | `report_to=mlflow`: a local store; the experiment \
(default `alignlab`) |
"""
)
