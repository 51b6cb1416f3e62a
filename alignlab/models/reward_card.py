"""README.md of `alignlab rm`'s ``RUN/final``: what the reward model is, how to load and score it without alignlab
(the input layout and the normalisation keys), its held-out results and the training config."""

from __future__ import annotations

from pathlib import Path

from alignlab.models.export import card_results, fmt, is_hub_id, read_run


def write_reward_card(run_dir: str | Path, offset: float, scale: float) -> Path:
    """Write ``RUN/final/README.md`` for a finished `alignlab rm` run (after report.md, which it quotes)."""
    run = read_run(run_dir)
    c = run.config
    model = str(c.get("model", ""))
    front = ["---", "library_name: transformers", "pipeline_tag: text-classification"]
    if is_hub_id(model):
        front.append(f"base_model: {model}")
    front += ["tags:", "- alignlab", "- reward-model", "- bradley-terry", "---", ""]
    tuning = "LoRA, merged into the weights" if c.get("lora") else "full fine-tuning"
    rows = [
        ("base model", f"`{model}`"),
        ("objective", "Bradley–Terry, with the data's soft labels (`p_chosen`) and margins where rows carry them; "
         f"reward centering coefficient {fmt(c.get('center_coef', 0.0))}"),
        ("fine-tuning", tuning),
        ("data", f"`{c.get('data', '')}`"),
        ("held-out data", f"`{c.get('eval_data') or '(none)'}`"),
        ("epochs / learning rate", f"{fmt(c.get('epochs', ''))} / {fmt(c.get('learning_rate', ''))}"),
        ("normalisation", f"reward = (raw − {offset:.6g}) / {scale:.6g}"),
    ]  # fmt: skip
    parts = [
        *front,
        f"# {run.run_dir.resolve().name}: a reward model on `{model}`",
        "",
        f"Written by `alignlab rm` into `{run.final_dir}`: a sequence-classification model with one output, the",
        "reward of a (prompt, response) pair read at its last real token.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "## Load and score",
        "",
        "Input layout (`alignlab_reward_format: prompt_response_eos` in config.json): the prompt as a user turn with",
        "the generation prompt, then the response and EOS, right-padded. `alignlab score` and",
        "`alignlab.rewards.load_reward(path)` build it and apply the normalisation; by hand:",
        "",
        "```python",
        "import torch",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "",
        'path = "."  # this directory',
        "model = AutoModelForSequenceClassification.from_pretrained(path)",
        "tok = AutoTokenizer.from_pretrained(path)",
        'turn = [{"role": "user", "content": "Why is the sky blue?"}]',
        "prompt = tok.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)",
        "ids = tok(prompt, add_special_tokens=False).input_ids",
        'ids += tok("Rayleigh scattering.", add_special_tokens=False).input_ids + [tok.eos_token_id]',
        "raw = model(torch.tensor([ids])).logits[0, 0].item()",
        "reward = (raw - model.config.alignlab_reward_offset) / model.config.alignlab_reward_scale",
        "```",
        "",
        *card_results(run),
    ]
    path = run.final_dir / "README.md"
    path.write_text("\n".join(parts))
    return path
