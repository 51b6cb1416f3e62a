"""`alignlab rl` on tiny models: the step-0 invariants, the temperature check, gradient-accumulation equivalence
of one update for every aggregation mode, exact resume, and the config contract (docs/rlhf.md)."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from tiny_models import save_tiny, tiny_causal_lm, tiny_tokenizer

from alignlab.config import ConfigError, build_config
from alignlab.models.lora import apply_lora
from alignlab.models.scorer import SequenceScorer
from alignlab.recipes.rl import RLConfig, rl
from alignlab.rewards import FunctionReward
from alignlab.rollout.rl_rollout import RolloutSettings, apply_rewards, response_mask_of, sample_rollouts
from alignlab.rollout.rl_setup import RolloutMismatchError, check_sampler_agreement, prompts_for_step
from alignlab.training import rl_step
from alignlab.training.rl_batch import response_logps

PROMPTS = ["a b", "hello there, how are you today?", "x", "count the letters in banana please"]


def count_a(prompt: str, response: str) -> float:
    return response.count("a") / 10.0


REWARD = FunctionReward(count_a, name="count_a")


def tiny_cfg(tmp_path, **kw) -> RLConfig:
    base = dict(
        model="tiny",
        prompts="task:train",
        limit=8,
        reward="custom",
        track_gold=False,
        prompts_per_step=2,
        max_steps=2,
        max_new_tokens=8,
        max_prompt_length=1024,
        per_device_batch_size=2,
        output_dir=str(tmp_path / "run"),
        report_to=[],
    )
    return RLConfig(**(base | kw))


def tiny_policy(seed: int = 0):
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    return tiny_causal_lm(tok), tok


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_step0_ratio_is_one_and_kl_zero(tmp_path, algo):
    """Spec §7.9: before the first optimizer step ρ ≡ 1 and approx-KL = 0 exactly (fp32, left-padded prompts of
    different lengths); policy = reference gives KL terms of exactly 0."""
    model, tok = tiny_policy()
    res = rl(tiny_cfg(tmp_path, algo=algo, max_steps=1, prompts_per_step=4), model=model, tokenizer=tok, reward=REWARD)
    row = res.metrics[0]
    assert row["check/first_ratio_max_dev"] == 0.0
    assert row["kl_ref_per_token"] == 0.0 and row["kl_ref_seq"] == 0.0 and row["kl_init_seq"] == 0.0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["step"] == 1
    for key in ("reward", "entropy", "policy/clipfrac", "response_length", "eos_share", "time/rollout_s"):
        assert key in row


def test_ppo_runs_and_logs_value_loss(tmp_path):
    d = save_tiny(tmp_path / "tiny", seed=1)
    res = rl(tiny_cfg(tmp_path, algo="ppo", model=str(d), max_steps=2), reward=REWARD)
    assert res.metrics[0]["check/first_ratio_max_dev"] == 0.0
    assert res.metrics[0]["optimizer_steps"] == 4  # num_ppo_epochs 4 x 1 mini-batch
    assert res.metrics[0]["loss/value"] > 0
    assert (tmp_path / "run" / "final" / "adapter_model.safetensors").exists()


def test_temperature_mismatch_is_caught():
    """Spec §7.10: rollouts sampled at T = 0.7 and scored at T = 1.0 are detected; the same T passes."""
    model, tok = tiny_policy()
    model.train()
    batch = sample_rollouts(model, tok, PROMPTS, RolloutSettings(2, 8, 0.7, 1024), seed=0)
    with torch.no_grad():
        batch.old_logp = response_logps(SequenceScorer(model, temperature=0.7), batch)
    assert check_sampler_agreement(batch, 0) < 1e-4
    with torch.no_grad():
        batch.old_logp = response_logps(SequenceScorer(model, temperature=1.0), batch)
    with pytest.raises(RolloutMismatchError, match="step 1"):
        check_sampler_agreement(batch, 0)


def test_response_mask_stops_at_first_stop_token():
    tokens = torch.tensor([[5, 9, 6, 9], [9, 1, 2, 3], [1, 2, 3, 4]])
    mask, finished = response_mask_of(tokens, [9])
    assert mask.tolist() == [[True, True, False, False], [True, False, False, False], [True] * 4]
    assert finished.tolist() == [True, True, False]


def test_nonfinite_reward_stops_naming_the_prompt():
    model, tok = tiny_policy()
    batch = sample_rollouts(model, tok, PROMPTS[:1], RolloutSettings(2, 4, 1.0, 1024), seed=0)
    bad = FunctionReward(lambda p, r: float("nan"), name="nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        apply_rewards(batch, bad)


def _one_update(algo: str, micro: int, loss_type: str = "dapo"):
    """One update of a LoRA policy on a fixed rollout batch of 8 rows; returns the trainable parameters after."""
    model, tok = tiny_policy(3)
    policy = apply_lora(model, r=4, alpha=8)
    policy.train()
    batch = sample_rollouts(policy, tok, PROMPTS, RolloutSettings(2, 6, 1.0, 1024), seed=1)
    apply_rewards(batch, REWARD)
    batch.scores = torch.linspace(-1, 1, len(batch))  # distinct rewards: non-zero advantages in every group
    s = rl_step.RLSettings(algo=algo, kl_coef=0.05, kl_estimator="k3" if algo == "grpo" else "k1")
    s = rl_step.RLSettings(**{**s.__dict__, "micro_batch_size": micro, "loss_type": loss_type, "max_grad_norm": 0.0})
    acc = Accelerator(cpu=True)
    scorer = SequenceScorer(policy)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=1.0)
    scorer, opt = acc.prepare(scorer, opt)
    orders = rl_step.epoch_orders(s, len(batch))

    def ref(rows):
        with policy.disable_adapter():
            return response_logps(scorer, rows)

    values = None
    rl_step.score_rollouts(s, batch, scorer, ref, orders[0], values)
    # a non-trivial old policy: perturb old log-probs so ratios differ from 1 and clipping is exercised (RLOO's
    # ratio is per sequence, a product over tokens: a smaller perturbation keeps some sequences unclipped)
    eps = 0.1 if algo == "rloo" else 0.3
    noise = torch.randn(batch.old_logp.shape, generator=torch.Generator().manual_seed(0))
    batch.old_logp = batch.old_logp + eps * noise
    batch.old_logp = batch.old_logp * batch.response_mask
    rl_step.advantages(s, batch)
    stats = rl_step.update(s, acc, scorer, opt, None, batch, orders, 0)
    assert 0 < stats["policy/clipfrac"] < 1  # both branches of the clipped loss carry weight
    return {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    "algo,loss_type",
    [("rloo", "dapo"), ("grpo", "grpo"), ("grpo", "dapo"), ("grpo", "dr_grpo"), ("grpo", "bnpo")],
)
def test_grad_accumulation_equivalence(algo, loss_type):
    """Spec §7.15: one update over 8 rows equals 4 accumulated micro-batches of 2 (fp32, to 1e-6)."""
    full = _one_update(algo, 8, loss_type)
    acc = _one_update(algo, 2, loss_type)
    for n in full:
        assert torch.allclose(full[n], acc[n], atol=1e-6, rtol=1e-5), n


def test_resume_is_exact(tmp_path):
    """A run stopped after step 2 and resumed logs the same steps 3-4 as an uninterrupted run."""
    m1, tok = tiny_policy(2)
    m2, _ = tiny_policy(2)
    full = rl(tiny_cfg(tmp_path / "a", max_steps=4), model=m1, tokenizer=tok, reward=REWARD).metrics
    cfg = tiny_cfg(tmp_path / "b", max_steps=4, save_steps=2, stop_after_steps=2)
    rl(cfg, model=m2, tokenizer=tok, reward=REWARD)
    m3, _ = tiny_policy(2)
    resumed = rl(tiny_cfg(tmp_path / "b", max_steps=4, resume_from="latest"), model=m3, tokenizer=tok, reward=REWARD)
    for a, b in zip(full[2:], resumed.metrics):
        assert a["step"] == b["step"]
        for k in ("reward", "kl_init_seq", "entropy", "loss/policy"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


def test_adaptive_kl_follows_the_controller_and_resumes_exactly(tmp_path):
    """kl_target: each step's β is the previous step's kl_coef_next = β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)
    (docs/rlhf.md, Adaptive KL); a resumed run continues from the checkpointed step's β."""
    kw = dict(max_steps=4, kl_target=1e-4, kl_horizon=8, learning_rate=5e-2)
    m1, tok = tiny_policy(3)
    full = rl(tiny_cfg(tmp_path / "a", **kw), model=m1, tokenizer=tok, reward=REWARD).metrics
    assert full[0]["kl_coef"] == 0.05  # rloo's default start
    n = 2 * 2  # prompts_per_step x rloo's group size, one process
    for prev, row in zip(full, full[1:] + [None]):
        e = min(max(prev["kl_ref_seq"] / 1e-4 - 1.0, -0.2), 0.2)
        assert prev["kl_coef_next"] == pytest.approx(prev["kl_coef"] * (1 + e * n / 8), rel=1e-12)
        if row is not None:
            assert row["kl_coef"] == prev["kl_coef_next"]
    assert full[0]["kl_coef_next"] < full[0]["kl_coef"]  # step 0: KL exactly 0, below the target: β shrinks
    grew = [r for r in full if r["kl_ref_seq"] > 1e-4]  # once the policy moved past the tiny target: β grows
    assert grew and all(r["kl_coef_next"] > r["kl_coef"] for r in grew)
    m2, _ = tiny_policy(3)
    rl(tiny_cfg(tmp_path / "b", save_steps=2, stop_after_steps=2, **kw), model=m2, tokenizer=tok, reward=REWARD)
    m3, _ = tiny_policy(3)
    resumed = rl(tiny_cfg(tmp_path / "b", resume_from="latest", **kw), model=m3, tokenizer=tok, reward=REWARD)
    assert [r["kl_coef"] for r in resumed.metrics] == pytest.approx([r["kl_coef"] for r in full[2:]], rel=1e-6)
    with pytest.raises(ConfigError, match="kl_horizon"):
        build_config(RLConfig, None, ["kl_horizon=5"])
    with pytest.raises(ConfigError, match="adaptive KL"):
        build_config(RLConfig, None, ["algo=grpo", "kl_target=1.0"])  # grpo's default coefficient is 0


def test_prompts_for_step_partitions_the_global_batch():
    prompts = [f"p{i}" for i in range(10)]
    one = prompts_for_step(prompts, 4, 3, 0, 1, seed=5)
    two = prompts_for_step(prompts, 2, 3, 0, 2, seed=5) + prompts_for_step(prompts, 2, 3, 1, 2, seed=5)
    assert one == two


def test_config_rejects_keys_the_algorithm_does_not_read():
    with pytest.raises(ConfigError, match="vf_coef"):
        build_config(RLConfig, None, ["algo=rloo", "vf_coef=0.5"])
    with pytest.raises(ConfigError, match="loss_type"):
        build_config(RLConfig, None, ["algo=ppo", "loss_type=grpo"])
    with pytest.raises(ConfigError, match="group_size"):
        build_config(RLConfig, None, ["algo=grpo", "group_size=1"])
    cfg = build_config(RLConfig, None, ["algo=grpo", "loss_type=dr_grpo", "reward=gold"])
    assert cfg.settings().kl_coef == 0.0 and cfg.settings().kl_estimator == "k3" and cfg.rollout().group_size == 8


def test_reference_sync_copies_merged_policy_and_never_touches_it():
    """Spec §7.13 through the run's References: α = 1 makes the reference the merged LoRA policy; the policy's
    weights are untouched; the sync fires only after multiples of ref_sync_every."""
    from alignlab.rollout.rl_setup import References

    model, _ = tiny_policy()
    cfg = RLConfig(ref_sync_every=2, ref_sync_alpha=1.0)
    refs = References(cfg, model, 1.0)
    policy = apply_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    before = {n: p.clone() for n, p in policy.named_parameters()}
    x = torch.tensor([[1, 2, 3, 4]])
    assert not refs.maybe_sync(0, policy)  # step 1: not a multiple of 2
    with torch.no_grad():
        assert not torch.allclose(refs.ref(x).logits, policy(x).logits, atol=1e-4)
    assert refs.maybe_sync(1, policy)  # step 2
    with torch.no_grad():
        assert torch.allclose(refs.ref(x).logits, policy(x).logits, atol=1e-5)
    assert all(torch.equal(before[n], p) for n, p in policy.named_parameters())


@pytest.mark.parametrize("kw", [dict(lora=False), dict(ref_sync_every=1), dict(lora=False, ref_sync_every=1)])
def test_full_finetuning_and_moving_reference_run(tmp_path, kw):
    """Full fine-tuning keeps a frozen reference copy; a moving reference also logs KL to the initial policy, which
    departs from KL to the reference once the reference has moved."""
    model, tok = tiny_policy(6)
    res = rl(tiny_cfg(tmp_path, max_steps=2, learning_rate=1e-2, **kw), model=model, tokenizer=tok, reward=REWARD)
    first, second = res.metrics
    assert first["check/first_ratio_max_dev"] == 0.0 and first["kl_ref_seq"] == 0.0 == first["kl_init_seq"]
    if kw.get("ref_sync_every"):
        assert second["kl_ref_seq"] != second["kl_init_seq"]
    else:
        assert second["kl_ref_seq"] == second["kl_init_seq"]


def test_reward_model_with_another_tokenizer_sees_text(tmp_path):
    """A reward model whose tokenizer differs from the policy's (here: it adds BOS and has another chat template)
    scores the decoded text, re-tokenised with its own tokenizer; token ids never cross (docs/rlhf.md)."""
    from alignlab.models.reward_model import load_reward_backbone, save_reward_model
    from alignlab.rewards import HFRewardModel

    d = save_tiny(tmp_path / "rm_base", seed=4, add_bos=True, default_system="You judge.")
    rm, rm_tok = load_reward_backbone(str(d))
    save_reward_model(rm, rm_tok, tmp_path / "rm", offset=0.5, scale=2.0)
    reward = HFRewardModel(str(tmp_path / "rm"))
    model, tok = tiny_policy(5)
    res = rl(tiny_cfg(tmp_path, max_steps=1), model=model, tokenizer=tok, reward=reward)
    assert res.metrics[0]["check/first_ratio_max_dev"] == 0.0
    sent = reward.last_texts  # what the RM saw in the step: its own chat template around the decoded text
    assert len(sent) == 4 and all(t.startswith("<|im_start|>system\nYou judge.") for t in sent)
    assert reward.encode("p", "r")[0] == rm_tok.bos_token_id  # re-tokenised by the RM: its BOS, not the policy's
    assert torch.isfinite(torch.tensor(res.metrics[0]["reward"]))
