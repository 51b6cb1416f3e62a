"""RLOO and GRPO: alignlab.losses.rl against TRL 1.16.0's own trainers on the same batch (tiny model, CPU, fp32).

Recipe. A random tiny Llama (tests/tiny_models.py) is saved to disk and TRL's ``GRPOTrainer`` / ``RLOOTrainer``
are built offline on it (``use_vllm=False``, ``report_to="none"``, fp32, CPU, sampling temperature 0.7). The
tiny model's generation config lists 75 extra end-of-sequence ids so that completions stop at different lengths
and the completion masks are ragged. A batch comes from TRL's own train dataloader (its RepeatSampler, which
also fixes the grouping convention: the k completions of a prompt are contiguous rows) and TRL's own
``_generate_and_score_completions`` samples, scores (a deterministic reward function that records what it
returned) and computes the advantages. Then:

1. **Advantages.** GRPO, ``scale_rewards`` in group/batch/none: TRL's advantages == ``grpo_advantages`` on the
   recorded rewards. RLOO, beta = 0.05 (k1 KL summed over tokens, in the reward), k in (2, 4), with and
   without ``normalize_advantages``: TRL's advantages == ``rloo_advantages(rloo_sequence_rewards(...))``
   where the summed rollout and reference log-probs are alignlab's own (plain log_softmax gather of the
   same models' logits / T), after checking them against TRL's fused-LM-head log-probs. The policy is
   perturbed away from the reference first, so the KL terms are not zero.
2. **Losses and gradients.** TRL's ``_compute_loss`` on that batch with rollout log-probs set to the current
   ones plus noise (so ratios are clipped on some tokens / sequences) == alignlab's loss built from
   ``clipped_policy_loss_terms`` + beta * ``kl_loss_term`` (k3) + ``aggregate`` (GRPO, loss_type grpo / dapo /
   dr_grpo / bnpo, beta 0 and 0.04, epsilon_high 0.28 for dapo) or ``sequence_ratio_policy_loss`` +
   ``aggregate("sequence")`` (RLOO, beta 0.05). The gradients with respect to every model parameter agree too.
   TRL 1.16 defaults to ``use_bias_correction_kl=True``: GRPO's k3 term is multiplied by the (differentiable)
   token ratio exp(logp - old_logp); both settings are compared (``kl_loss_term`` with and without old_logp).

Tolerances: relative 1e-5 on losses and advantages (absolute 1e-6 for values near 0; 1e-5 for RLOO advantages,
which go through summed log-probs from two LM-head kernels); log-probs atol 1e-5; gradients rtol 1e-5 plus
atol 1e-6 x the largest gradient entry. Measured: losses agree to ~3e-7 relative, gradients to ~5e-7 of the
largest entry.

Not compared, and why:
- The trainers run in eval mode (the model is never switched to train mode outside ``trainer.train()``), so
  TRL's division by ``current_gradient_accumulation_steps`` (grpo, bnpo, dr_grpo; attribute only set inside the
  training loop) is 1 here; accumulation is covered by test_rl_math.py, with global normalizers.
- TRL's ``num_items_in_batch`` (dapo's global token count) is taken from TRL's batch and passed to
  ``aggregate`` as ``normalizer``; with one process and one accumulation step it equals the local active tokens.
- Unscorable completions (a reward function returning None) are not driven through TRL; ``rloo_advantages(valid=)``
  follows TRL's NaN-aware formula and is tested by hand in test_rl_math.py.
- PPO is absent from TRL 1.16 (removed upstream), so it is checked only against hand values.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install trl==1.16.0)")

from tiny_models import tiny_causal_lm, tiny_tokenizer  # noqa: E402

from alignlab.losses import rl  # noqa: E402

TRL_VERSION = "1.16.0"
if trl.__version__ != TRL_VERSION:
    pytest.skip(
        f"RL parity is pinned to trl=={TRL_VERSION}; found {trl.__version__} (GRPO/RLOO loss and advantage code "
        "changes between versions)",
        allow_module_level=True,
    )

TEMPERATURE = 0.7
MAX_COMPLETION = 8
PROMPTS = ["alpha beta", "gamma", "delta eps zeta", "eta theta"]
RTOL, ATOL = 1e-5, 1e-6


def close(got, want, rtol=RTOL, atol=ATOL):
    torch.testing.assert_close(got.detach().float(), want.detach().float(), rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_rl_model")
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=0)
    # extra stop ids (the bytes "0".."z") make completions end at different lengths
    model.generation_config.eos_token_id = [tok.eos_token_id, *range(48, 123)]
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


class Recorder:
    """Deterministic reward function (depends on the completion text) that records what it returned."""

    __name__ = "recorder"

    def __init__(self):
        self.calls: list[list[float]] = []

    def __call__(self, completions, **kwargs):
        out = [float(len(c) % 7) * 0.5 + 0.1 * float(sum(map(ord, c)) % 3) for c in completions]
        self.calls.append(out)
        return out


def make_trainer(kind: str, model_dir: str, tmp_path, perturb: bool = False, **cfg):
    from datasets import Dataset

    Config, Trainer = (trl.GRPOConfig, trl.GRPOTrainer) if kind == "grpo" else (trl.RLOOConfig, trl.RLOOTrainer)
    k = cfg.pop("num_generations", 4)
    args = Config(
        output_dir=str(tmp_path / f"{kind}_out"),
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        use_vllm=False,
        per_device_train_batch_size=2 * k,
        num_generations=k,
        max_completion_length=MAX_COMPLETION,
        temperature=TEMPERATURE,
        disable_dropout=True,
        gradient_checkpointing=False,
        save_strategy="no",
        seed=0,
        **cfg,
    )
    reward = Recorder()
    trainer = Trainer(
        model=model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS}),
        processing_class=tiny_tokenizer(),
    )
    assert not trainer.model.training  # eval mode: no gradient-accumulation division inside TRL
    if perturb:  # move the policy away from the reference so that the KL terms are not 0
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return trainer, reward


def generate(trainer, k: int):
    """One batch from TRL's train dataloader, checked to hold contiguous groups of k, through TRL's rollout."""
    batch = next(iter(trainer.get_train_dataloader()))
    prompts = [x["prompt"] for x in batch]
    assert len(prompts) == 2 * k
    for g in range(0, len(prompts), k):
        assert prompts[g : g + k] == [prompts[g]] * k
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions(batch)
    assert out["completion_mask"].sum(1).unique().numel() > 1, "completions should have ragged lengths"
    return out


def token_logps(model, inputs) -> torch.Tensor:
    """alignlab-side per-token log-probs [B, C] of the completion tokens at the sampling temperature."""
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    c = inputs["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float() / TEMPERATURE
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return lp[:, -c:]


def grads(model, loss) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, gs)])


def close_grads(ours, theirs):
    """Every gradient element is an fp32 sum over the batch's tokens and hidden units (hundreds of terms), and the
    two graphs (ours, TRL's) pad and reduce in different orders: rounding differences up to ~1e-5 of the largest
    gradient are expected (seen: 1.3e-6 with max 0.75). A real mismatch (a sign, a missing term, a normalisation)
    moves elements by a sizeable share of the maximum, far above this bound."""
    scale = float(theirs.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * scale)


def test_trl_version_pinned():
    assert trl.__version__ == TRL_VERSION


# ------------------------------------------------------------------------------------------------- advantages
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_advantages_match_trl(model_dir, tmp_path, scale):
    trainer, reward = make_trainer("grpo", model_dir, tmp_path, scale_rewards=scale, beta=0.0)
    out = generate(trainer, 4)
    rewards = torch.tensor(reward.calls[-1])
    assert rewards.unique().numel() > 1
    close(rl.grpo_advantages(rewards, 4, scale=scale), out["advantages"])


@pytest.mark.parametrize("k,normalize", [(2, False), (4, False), (4, True)])
def test_rloo_advantages_with_kl_in_reward_match_trl(model_dir, tmp_path, k, normalize):
    beta = 0.05
    trainer, reward = make_trainer(
        "rloo", model_dir, tmp_path, perturb=True, beta=beta, num_generations=k, normalize_advantages=normalize
    )
    out = generate(trainer, k)
    mask = out["completion_mask"].bool()
    with torch.no_grad():
        old = token_logps(trainer.model, out)
        ref = token_logps(trainer.ref_model, out)
    old_sum = torch.where(mask, old, 0.0).sum(-1)
    ref_sum = torch.where(mask, ref, 0.0).sum(-1)
    close(old_sum, out["old_logps"], atol=1e-5)  # log-prob parity with TRL's fused LM head
    kl = old_sum - ref_sum
    assert kl.abs().min() > 1e-3  # the KL penalty really enters the reward
    seq_rewards = rl.rloo_sequence_rewards(torch.tensor(reward.calls[-1]), old_sum, ref_sum, beta)
    close(rl.rloo_advantages(seq_rewards, k, normalize=normalize), out["advantages"], atol=1e-5)


# ------------------------------------------------------------------------------------------------------ losses
@pytest.mark.parametrize("beta,bias_correction", [(0.0, True), (0.04, True), (0.04, False)])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "bnpo"])
def test_grpo_loss_and_gradients_match_trl(model_dir, tmp_path, loss_type, beta, bias_correction):
    eps_high = 0.28 if loss_type == "dapo" else None
    trainer, _ = make_trainer(
        "grpo",
        model_dir,
        tmp_path,
        perturb=beta > 0,
        loss_type=loss_type,
        beta=beta,
        epsilon_high=eps_high,
        use_bias_correction_kl=bias_correction,
    )
    out = generate(trainer, 4)
    mask = out["completion_mask"].bool()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        current = token_logps(trainer.model, out)
    inputs = dict(out)
    inputs["old_per_token_logps"] = current + 0.3 * torch.randn(current.shape, generator=g)
    inputs["advantages"] = torch.randn(mask.shape[0], generator=g)
    if beta > 0:
        with torch.no_grad():
            close(token_logps(trainer.ref_model, out)[mask], out["ref_per_token_logps"][mask], atol=1e-5)

    theirs = trainer._compute_loss(trainer.model, inputs)
    g_theirs = grads(trainer.model, theirs)

    logp = token_logps(trainer.model, inputs)
    per_token, clipped = rl.clipped_policy_loss_terms(
        logp, inputs["old_per_token_logps"], inputs["advantages"], clip_low=0.2, clip_high=eps_high
    )
    assert clipped[mask].any() and not clipped[mask].all()
    if beta > 0:
        assert rl.per_token_kl(logp, inputs["ref_per_token_logps"], "k3")[mask].max() > 1e-3
        old = inputs["old_per_token_logps"] if bias_correction else None
        per_token = per_token + beta * rl.kl_loss_term(logp, inputs["ref_per_token_logps"], old)
    ours = rl.aggregate(
        per_token,
        mask,
        loss_type,
        normalizer=inputs["num_items_in_batch"],
        max_completion_length=trainer.max_completion_length,
    )
    close(ours, theirs)
    close_grads(grads(trainer.model, ours), g_theirs)


def test_rloo_loss_and_gradients_match_trl(model_dir, tmp_path):
    beta = 0.05
    trainer, _ = make_trainer("rloo", model_dir, tmp_path, perturb=True, beta=beta, num_generations=4)
    out = generate(trainer, 4)
    mask = out["completion_mask"].bool()
    g = torch.Generator().manual_seed(3)
    inputs = dict(out)
    inputs["old_logps"] = out["old_logps"] + 0.3 * torch.randn(out["old_logps"].shape, generator=g)
    assert inputs["advantages"].abs().min() > 0  # TRL's own advantages, KL in the reward

    theirs = trainer._compute_loss(trainer.model, inputs)
    g_theirs = grads(trainer.model, theirs)

    logp = token_logps(trainer.model, inputs)
    per_seq = rl.sequence_ratio_policy_loss(logp, inputs["old_logps"], inputs["advantages"], mask, clip=0.2)
    ratio = torch.exp(torch.where(mask, logp, 0.0).sum(-1) - inputs["old_logps"]).detach()
    assert ((ratio - 1).abs() > 0.2).any() and ((ratio - 1).abs() < 0.2).any()  # some sequences clipped
    ours = rl.aggregate(per_seq, None, "sequence")
    close(ours, theirs)
    close_grads(grads(trainer.model, ours), g_theirs)
