"""`alignlab heatmap`: token-reward heatmaps for preference pairs (T-REG, docs/conventions.md T1).

For the chosen and rejected response of each pair, every token is coloured by
- its self-generated T-REG reward r̂_t (contrastive prompting with the reference / ``treg_scorer``), and,
- given a trained policy (``run_dir`` of `alignlab train`, or ``adapter``: a LoRA adapter or a full model dir),
  by the policy's implicit token reward beta * (log pi_theta(y_t|.) - log pi_ref(y_t|.)), side by side.

Writes ``heatmap.html`` (self-contained: inline CSS, no scripts, fonts or other fetches; a Content-Security-Policy
forbids any), ``heatmap.png`` (matplotlib) and ``heatmap.json`` (the values) into ``output_dir``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignlab.config import save_config
from alignlab.eval.heatmap import heatmap_data, write_heatmap
from alignlab.losses import LOSSES
from alignlab.precompute.token_rewards import check_same_tokenizer


@dataclass
class HeatmapConfig:
    run_dir: str | None = (
        None  # a finished `alignlab train` run: its config.yaml fills the None keys, final/ is the policy
    )
    adapter: str | None = None  # policy: LoRA adapter dir or full model dir (overrides run_dir/final)
    model: str | None = None  # base/reference model; None: the run's model, else smollm2-135m-instruct
    data: str | None = None  # preference JSONL or hf:org/name; None: the run's data
    split: str = "train"
    n_pairs: int = 4  # pairs shown
    offset: int = 0  # first pair shown
    template: str | None = None  # T-REG template; None: the run's treg_template, else revision
    treg_scorer: str | None = None  # model for r̂ (same tokenizer); None: the run's, else the reference
    beta: float | None = None  # implicit-reward scale; None: the run's beta, else 0.1
    max_length: int | None = None  # None: the run's, else 512
    max_prompt_length: int | None = None  # None: the run's, else 256
    batch_size: int = 8
    dtype: str = "float32"
    output_dir: str = "runs/heatmap"
    png: bool = True

    def validate(self) -> None:
        if self.n_pairs < 1 or self.offset < 0:
            raise ValueError("n_pairs must be >= 1 and offset >= 0")


# --------------------------------------------------------------------------- command


def _resolve(cfg: HeatmapConfig) -> dict:
    run = {}
    if cfg.run_dir:
        import yaml

        path = Path(cfg.run_dir) / "config.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not an `alignlab train` run directory")
        run = yaml.safe_load(path.read_text()) or {}

    def pick(key, run_key, default):  # the command's value, else the run's, else the default
        return getattr(cfg, key) if getattr(cfg, key) is not None else run.get(run_key) or default

    beta = (
        cfg.beta
        if cfg.beta is not None
        else run.get("beta") or (LOSSES[run["loss"]].default_beta if run.get("loss") in LOSSES else 0.1)
    )
    policy = cfg.adapter or (str(Path(cfg.run_dir) / "final") if cfg.run_dir else None)
    if policy is not None and not Path(policy).is_dir():
        raise FileNotFoundError(f"policy {policy}: no such directory (did the run finish?)")
    return dict(
        model=pick("model", "model", "smollm2-135m-instruct"),
        data=pick("data", "data", ""),
        template=pick("template", "treg_template", "revision"),
        scorer=pick("treg_scorer", "treg_scorer", None),
        max_length=pick("max_length", "max_length", 512),
        max_prompt_length=pick("max_prompt_length", "max_prompt_length", 256),
        beta=float(beta),
        policy=policy,
    )


def _policy_loader(path: str, dtype: str):
    def load(base):
        p = Path(path)
        if (p / "adapter_config.json").is_file():
            from alignlab.models.lora import load_policy_adapter

            return load_policy_adapter(base, p)
        from alignlab.models.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(str(p), dtype=dtype)[0].to(next(base.parameters()).device)

    return load


def main(cfg: HeatmapConfig) -> dict:
    from alignlab.data.formats import load_preference_records
    from alignlab.data.tokenize import tokenize_pairs
    from alignlab.models.loading import load_model_and_tokenizer

    r = _resolve(cfg)
    save_config(cfg, Path(cfg.output_dir))
    if not r["data"]:
        raise ValueError("heatmap needs data=PATH.jsonl | hf:org/name (or run_dir= of a run that has it)")
    model, tok = load_model_and_tokenizer(r["model"], dtype=cfg.dtype)
    records, _ = load_preference_records(r["data"], split=cfg.split, limit=cfg.offset + cfg.n_pairs)
    pairs, _ = tokenize_pairs(records[cfg.offset :], tok, int(r["max_length"]), int(r["max_prompt_length"]))
    scorer = None
    if r["scorer"]:
        scorer, stok = load_model_and_tokenizer(r["scorer"], dtype=cfg.dtype)
        check_same_tokenizer(tok, stok, scorer, f"scorer {r['scorer']!r}")
    policy = _policy_loader(r["policy"], cfg.dtype) if r["policy"] else None
    heats = heatmap_data(
        model, tok, pairs, r["template"], r["beta"], policy, scorer, cfg.batch_size, 2 * int(r["max_length"])
    )
    notes = [
        f"model {r['model']}; token rewards: template {r['template']!r}, scorer "
        f"{r['scorer'] or 'the reference'}; r̂ > 0: the 'better' instruction makes the token more likely",
        f"policy: {r['policy'] or 'none (pass run_dir= or adapter=)'}; implicit reward β = {r['beta']}",
    ]
    paths = write_heatmap(heats, Path(cfg.output_dir), "Token-reward heatmap (T-REG)", notes, cfg.png)
    for k, v in paths.items():
        print(f"[alignlab] heatmap {k}: {v}")
    return {k: str(v) for k, v in paths.items()}
