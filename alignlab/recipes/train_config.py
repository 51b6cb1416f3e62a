"""TrainConfig: the one flat config of `alignlab train` (YAML + key=value overrides)."""
from __future__ import annotations

from dataclasses import dataclass

from alignlab.losses import LOSSES

DEFAULT_BETA = {"simpo": 2.0, "simpo_treg": 2.0}  # every other loss: 0.1 (TRL's default); SimPO reference implementation: 2.0


@dataclass
class TrainConfig:
    # model and data
    model: str = "smollm2-135m-instruct"  # hub id, local path, or built-in alias
    data: str = ""  # preference JSONL(.gz) (TRL or HH format), or hf:org/name[:config]
    split: str = "train"
    limit: int | None = None  # use at most this many pairs
    on_bad: str = "error"  # malformed rows: "error" (default) or "skip" (counted)
    max_length: int = 1024  # prompt + completion tokens
    max_prompt_length: int = 512  # prompts keep their last tokens
    trust_remote_code: bool = False
    dtype: str = "float32"
    # objective
    loss: str = "dpo"  # dpo | dpo_norm | cdpo | ipo | slic | hinge | rdpo | simpo | dpo_treg | simpo_treg
    beta: float | None = None  # None: 0.1 (2.0 for simpo)
    label_smoothing: float = 0.0  # cdpo / simpo epsilon
    beta_convention: str = "azar"  # ipo: azar | gpo
    ipo_reduction: str = "mean"  # ipo: mean (TRL parity) | sum (Eq. 17 as written, OpenRLHF)
    length_alpha: float | None = None  # rdpo: required
    gamma_beta_ratio: float = 0.25  # simpo gamma / beta
    sft_weight: float = 0.0  # + token-mean NLL on chosen
    reference_free: bool = False
    # T-REG (loss=dpo_treg | simpo_treg; specs/treg.md)
    alpha: float = 0.25  # T-REG regulariser weight (paper grid 0.1/0.25/0.5); 0 = plain DPO/SimPO
    treg_template: str = "revision"  # contrastive prompts: revision | generation | a .json/.yaml with better/worse
    treg_scorer: str | None = None  # model scoring the token rewards (same tokenizer); None = the reference
    treg_weighting: str = "dpo"  # sequence weight: dpo (sigma(r_l - r_w), detached) | static (0.5, ablation)
    # parameter-efficient fine-tuning
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target: str = "all-linear"  # or comma list, e.g. q_proj,v_proj
    lora_top_layers: int = 0  # > 0: adapters only in the last N blocks (backward stops there: cheaper steps)
    # optimisation
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # any transformers.get_scheduler name
    warmup_ratio: float = 0.1
    epochs: int = 1
    max_steps: int = -1  # > 0 overrides epochs
    per_device_batch_size: int = 4  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = True
    seed: int = 42
    # reference
    ref_batch_size: int = 8
    # output
    output_dir: str = "runs/train"
    logging_steps: int = 1
    save_steps: int = 0  # 0: only the final checkpoint
    save_total_limit: int = 1
    resume_from: str | None = None  # "latest" or a checkpoint directory
    stop_after_steps: int | None = None  # stop (as if killed) after this step; the schedule is unchanged
    report_to: str = "tensorboard"  # tensorboard | none
    cpu: bool = False  # force CPU even when a GPU is visible

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss: unknown {self.loss!r}; choose one of {sorted(LOSSES)}")
        if self.loss == "rdpo" and self.length_alpha is None:
            raise ValueError("loss=rdpo requires length_alpha (no default; specs/preference_losses.md §3.5)")
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        if self.per_device_batch_size < 1 or self.grad_accum < 1:
            raise ValueError("per_device_batch_size and grad_accum must be >= 1")
        if self.on_bad not in ("error", "skip"):
            raise ValueError("on_bad must be 'error' or 'skip'")
        self._validate_treg()

    def _validate_treg(self) -> None:
        from alignlab.losses.treg import WEIGHTINGS
        from alignlab.precompute.token_rewards import resolve_template

        if not (self.alpha >= 0.0 and self.alpha < float("inf")):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha}")
        if self.treg_weighting not in WEIGHTINGS:
            raise ValueError(f"treg_weighting must be one of {WEIGHTINGS}, got {self.treg_weighting!r}")
        resolve_template(self.treg_template)  # unknown name, missing {prompt}, unequal placeholders: error now

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(self.loss, 0.1)

    def loss_params(self) -> dict:
        return dict(beta=self.resolved_beta, label_smoothing=self.label_smoothing, beta_convention=self.beta_convention,
                    ipo_reduction=self.ipo_reduction, length_alpha=self.length_alpha,
                    gamma_beta_ratio=self.gamma_beta_ratio, alpha=self.alpha, weighting=self.treg_weighting)
