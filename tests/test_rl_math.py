"""Hand-computed values for the PPO / RLOO / GRPO math in alignlab.losses.rl: per-token KL rewards, GAE,
whitening, clipped policy and value losses (values and zero / non-zero gradients), RLOO and GRPO advantages,
reference sync, loss aggregation under gradient accumulation, and the algorithm registry.

Tolerances: atol 1e-6 for O(1) reference values quoted to 6 decimals (computed in fp64 here), 1e-12 where the
value is exact, 1e-6 for the fp32 gradient-accumulation equivalence.
"""

import math

import pytest
import torch

from alignlab.losses import rl
from alignlab.losses.rl_registry import RL_ALGOS, RL_KEYS, get_rl_algo

F64 = torch.float64


def t(*xs, dtype=F64):
    return torch.tensor(xs, dtype=dtype)


# Reference batch: one row of three response tokens.
POLICY = t(-1.0, -0.5, -2.0).unsqueeze(0)
REF = t(-1.2, -0.5, -1.5).unsqueeze(0)
ONES = torch.ones(1, 3, dtype=torch.bool)
VALUES = t(0.5, 0.6, 0.7).unsqueeze(0)


def close(got, want, atol=1e-6):
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=got.dtype), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------ 4. KL rewards
def test_kl_rewards_k1_hand_values():
    r = rl.kl_penalized_rewards(t(1.0), POLICY, REF, ONES, kl_coef=0.05, estimator="k1")
    close(r, [[-0.01, 0.0, 1.025]])


def test_k3_nonnegative_on_random_inputs():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, F64):
        for scale in (1e-6, 1e-3, 1.0, 10.0):
            lp = (torch.randn(64, 50, generator=g) * scale).to(dtype)
            ref = (torch.randn(64, 50, generator=g) * scale).to(dtype)
            assert (rl.per_token_kl(lp, ref, "k3") >= 0).all()
    r = rl.kl_penalized_rewards(t(0.0), POLICY, REF, ONES, kl_coef=0.05, estimator="k3")
    assert (r <= 0).all()  # every k3 term >= 0, so every penalty <= 0


@pytest.mark.parametrize("est", ["k1", "k3"])
def test_policy_equal_ref_gives_exactly_zero_kl(est):
    lp = torch.randn(4, 7, dtype=torch.float32) - 2.0
    assert torch.equal(rl.per_token_kl(lp, lp.clone(), est), torch.zeros_like(lp))
    r = rl.kl_penalized_rewards(torch.zeros(4), lp, lp.clone(), torch.ones(4, 7), kl_coef=0.05, estimator=est)
    assert torch.equal(r, torch.zeros_like(r))


def test_k3_value_and_bad_estimator():
    # l = ref - logp = -0.2 on token 0: e^-0.2 - 1 + 0.2 = 0.018731
    close(rl.per_token_kl(POLICY, REF, "k3")[0, 0], math.exp(-0.2) - 1 + 0.2, atol=1e-12)
    with pytest.raises(ValueError):
        rl.per_token_kl(POLICY, REF, "k2")


def test_score_goes_to_last_valid_token_any_padding():
    lp = torch.zeros(3, 5, dtype=F64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=F64)  # right, left, both
    r = rl.kl_penalized_rewards(t(1.0, 2.0, 3.0), lp, lp, mask, kl_coef=0.1)
    want = torch.zeros(3, 5, dtype=F64)
    want[0, 2], want[1, 4], want[2, 2] = 1.0, 2.0, 3.0
    assert torch.equal(r, want)
    assert rl.last_token_index(torch.zeros(1, 4)).item() == -1
    # an empty row gets nothing, other rows are unaffected
    r2 = rl.kl_penalized_rewards(t(5.0), lp[:1], lp[:1] + 1, torch.zeros(1, 5), kl_coef=0.1)
    assert torch.equal(r2, torch.zeros(1, 5, dtype=F64))


# -------------------------------------------------------------------------------------------------------- 5. GAE
def test_gae_hand_values():
    adv, ret = rl.gae(t(0.0, 0.0, 1.0).unsqueeze(0), VALUES, ONES, gamma=1.0, lam=0.95)
    close(adv, [[0.46575, 0.385, 0.3]])
    close(ret, [[0.96575, 0.985, 1.0]])


def test_gae_with_kl_rewards_hand_values():
    r = rl.kl_penalized_rewards(t(1.0), POLICY, REF, ONES, kl_coef=0.05)
    adv, _ = rl.gae(r, VALUES, ONES, gamma=1.0, lam=0.95)
    close(adv, [[0.478313, 0.40875, 0.325]])


def test_gae_lambda_zero_is_td_error():
    g = torch.Generator().manual_seed(1)
    r, v = torch.randn(3, 6, generator=g, dtype=F64), torch.randn(3, 6, generator=g, dtype=F64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    adv, _ = rl.gae(r, v, mask, gamma=0.9, lam=0.0)
    v_next = torch.cat([v[:, 1:], torch.zeros(3, 1, dtype=F64)], dim=1)
    close(adv, r + 0.9 * v_next - v, atol=1e-12)


def test_gae_gamma_lambda_one_is_mc_return_minus_value():
    g = torch.Generator().manual_seed(2)
    r, v = torch.randn(2, 5, generator=g, dtype=F64), torch.randn(2, 5, generator=g, dtype=F64)
    mask = torch.ones(2, 5, dtype=torch.bool)
    adv, ret = rl.gae(r, v, mask, gamma=1.0, lam=1.0)
    mc = r.flip(-1).cumsum(-1).flip(-1)  # reward-to-go
    close(adv, mc - v, atol=1e-12)
    close(ret, mc, atol=1e-12)


def test_gae_right_padded_rows_equal_rows_alone():
    g = torch.Generator().manual_seed(3)
    r, v = torch.randn(2, 6, generator=g, dtype=F64), torch.randn(2, 6, generator=g, dtype=F64)
    lens = [6, 3]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lens], dtype=torch.bool)
    r_pad, v_pad = r.masked_fill(~mask, 7.0), v.masked_fill(~mask, -3.0)  # garbage in the padding must not leak
    adv, ret = rl.gae(r_pad, v_pad, mask, gamma=0.99, lam=0.95)
    for i, n in enumerate(lens):
        a1, r1 = rl.gae(r[i : i + 1, :n], v[i : i + 1, :n], torch.ones(1, n, dtype=torch.bool), 0.99, 0.95)
        close(adv[i, :n], a1[0], atol=1e-12)
        close(ret[i, :n], r1[0], atol=1e-12)
        assert torch.equal(adv[i, n:], torch.zeros(6 - n, dtype=F64))
        assert torch.equal(ret[i, n:], torch.zeros(6 - n, dtype=F64))


def test_gae_left_padded_row_equals_row_alone():
    r, v = t(0.0, 0.0, 0.0, 1.0), t(9.0, 0.5, 0.6, 0.7)
    adv, _ = rl.gae(r.unsqueeze(0), v.unsqueeze(0), torch.tensor([[0, 1, 1, 1]]), 1.0, 0.95)
    close(adv, [[0.0, 0.46575, 0.385, 0.3]])


# -------------------------------------------------------------------------------------------------- 6. whitening
def test_advantage_whitening_hand_values():
    # the exact GAE output (0.4783125, ...) of test_gae_with_kl_rewards; quoted rounded to 6 decimals, whitening
    # divides by std ~ 0.077, so the rounded input would move the result by ~2e-6
    r = rl.kl_penalized_rewards(t(1.0), POLICY, REF, ONES, kl_coef=0.05)
    a, _ = rl.gae(r, VALUES, ONES, gamma=1.0, lam=0.95)
    close(a, [[0.4783125, 0.40875, 0.325]], atol=1e-12)
    w = rl.masked_whiten(a, ONES)
    close(w, [[0.967772, 0.061605, -1.029378]])
    close(rl.masked_mean(w, ONES), 0.0, atol=1e-12)
    var = rl.masked_var(a, ONES)  # var(w) = var / (var + 1e-8): 1 - 1.7e-6 for var = 0.0059
    close(rl.masked_var(w, ONES, unbiased=True), var / (var + 1e-8), atol=1e-12)
    close(rl.masked_var(w, ONES, unbiased=True), 1.0, atol=1e-5)


def test_reward_whitening_keeps_mean_and_masks():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 5, generator=g, dtype=F64) * 3 + 2
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    x = x.masked_fill(~mask, float("nan"))  # no NaN leak from the padding
    w = rl.masked_whiten(x, mask, shift_mean=False)
    close(rl.masked_mean(w, mask), rl.masked_mean(x, mask), atol=1e-12)
    close(rl.masked_var(w, mask), 1.0, atol=1e-6)
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum()), dtype=F64))
    assert rl.masked_var(x, mask, unbiased=False) < rl.masked_var(x, mask, unbiased=True)
    with pytest.raises(ValueError):
        rl.masked_var(x[:1, :1], torch.ones(1, 1, dtype=torch.bool))  # Bessel needs >= 2 tokens


# ------------------------------------------------------------------------------------------- 7. clipped policy loss
@pytest.mark.parametrize(
    "adv,ratio,want,grad_zero",
    [(1.0, 1.5, -1.2, True), (1.0, 0.5, -0.5, False), (-1.0, 0.5, 0.8, True), (-1.0, 1.5, 1.5, False)],
)
def test_clipped_policy_loss_hand_values_and_gradients(adv, ratio, want, grad_zero):
    logp = torch.tensor([[math.log(ratio)]], dtype=F64, requires_grad=True)
    loss, clipped = rl.clipped_policy_loss_terms(logp, torch.zeros(1, 1, dtype=F64), t(adv), clip_low=0.2)
    close(loss, [[want]], atol=1e-12)
    assert clipped.item() is grad_zero
    loss.sum().backward()
    if grad_zero:
        assert logp.grad.item() == 0.0
    else:  # d(-A rho)/d logp = -A rho
        assert logp.grad.item() == pytest.approx(-adv * ratio, abs=1e-12)


def test_clipped_policy_loss_ratio_one_and_asymmetric_clip():
    adv = t(0.3, -1.7, 2.0)
    lp = torch.randn(3, 4, dtype=F64)
    loss, clipped = rl.clipped_policy_loss_terms(lp, lp.clone(), adv)
    close(loss, (-adv).unsqueeze(1).expand(3, 4), atol=1e-12)
    assert not clipped.any()
    # clip_high = 0.28: rho = 1.25 is inside [0.8, 1.28], so not clipped; rho = 1.3 is
    for ratio, want in ((1.25, -1.25), (1.3, -1.28)):
        loss, _ = rl.clipped_policy_loss_terms(t(math.log(ratio)), t(0.0), t(1.0), 0.2, 0.28)
        close(loss, [[want]], atol=1e-12)


def test_sequence_ratio_policy_loss():
    # two tokens with log-ratios 0.3 and 0.1 (sum 0.4) plus a padded token that must be ignored
    logp = torch.tensor([[0.3, 0.1, 5.0], [0.0, -0.05, 9.0]], dtype=F64, requires_grad=True)
    old = torch.zeros(2, 3, dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    adv = t(1.0, -1.0)
    loss = rl.sequence_ratio_policy_loss(logp, old, adv, mask, clip=0.2)
    close(loss, [-1.2, math.exp(-0.05)])  # row 0: rho=e^0.4 clipped at 1.2; row 1: rho=e^-0.05 unclipped
    # old log-probs may be given already summed
    close(rl.sequence_ratio_policy_loss(logp, old.sum(-1), adv, mask), loss, atol=0)
    loss.sum().backward()
    assert torch.equal(logp.grad[0], torch.zeros(3, dtype=F64))  # clipped: no gradient
    close(logp.grad[1], [math.exp(-0.05), math.exp(-0.05), 0.0], atol=1e-12)  # every token gets -A*rho


# -------------------------------------------------------------------------------------------- 8. value loss
def test_clipped_value_loss_hand_value():
    m = torch.ones(1, 1, dtype=torch.bool)
    loss, frac = rl.clipped_value_loss(t(1.0).view(1, 1), t(0.5).view(1, 1), t(1.2).view(1, 1), m, clip=0.2)
    close(loss, 0.125, atol=1e-12)
    close(frac, 1.0, atol=0)
    per_token, clipped = rl.clipped_value_loss_terms(t(1.0).view(1, 1), t(0.5).view(1, 1), t(1.2).view(1, 1), 0.2)
    close(rl.aggregate(per_token, m, "token_mean"), 0.125, atol=1e-12)
    assert clipped.all()


def test_clipped_value_loss_masks_padding():
    v = torch.tensor([[1.0, 100.0]], dtype=F64)
    loss, frac = rl.clipped_value_loss(v, v.clone(), torch.tensor([[1.5, 0.0]], dtype=F64), torch.tensor([[1, 0]]))
    close(loss, 0.125, atol=1e-12)  # 0.5 * 0.25, the padded token ignored
    close(frac, 0.0, atol=0)


# ------------------------------------------------------------------------------------------------ 11. RLOO
def test_rloo_hand_values():
    close(rl.rloo_advantages(t(1.0, 0.0, 0.0, 1.0), k=4), [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    close(rl.rloo_advantages(t(0.2, 0.5, 0.9), k=3), [-0.5, -0.05, 0.55])


@pytest.mark.parametrize("k", [2, 3, 4])
def test_rloo_identity_k_over_k_minus_one(k):
    r = torch.randn(5 * k, dtype=F64)
    g = r.view(-1, k)
    want = (k / (k - 1) * (g - g.mean(1, keepdim=True))).view(-1)
    close(rl.rloo_advantages(r, k), want, atol=1e-9)


def test_rloo_groups_are_contiguous_rows():
    # rows 0,1 share a prompt and rows 2,3 another (TRL: rewards.view(-1, k))
    close(rl.rloo_advantages(t(1.0, 0.0, 5.0, 5.0), k=2), [1.0, -1.0, 0.0, 0.0], atol=0)


def test_rloo_invalid_completions_excluded():
    r = t(1.0, float("nan"), 0.0, 4.0, 2.0, 3.0)
    valid = torch.tensor([True, False, True, True, False, False])
    a = rl.rloo_advantages(r, k=3, valid=valid)
    # group 0: valid {1.0, 0.0} -> +-1, invalid -> 0; group 1: a single valid row has no baseline -> 0
    close(a, [1.0, 0.0, -1.0, 0.0, 0.0, 0.0], atol=0)
    n = rl.rloo_advantages(r, k=3, valid=valid, normalize=True)
    std = math.sqrt(2.0)  # Bessel std of (1, -1)
    close(n, [1.0 / (std + 1e-4), 0.0, -1.0 / (std + 1e-4), 0.0, 0.0, 0.0], atol=1e-12)
    assert rl.rloo_advantages(t(1.0, 2.0), k=1).abs().sum() == 0


def test_rloo_normalize_and_sequence_rewards():
    r = t(1.0, 0.0, 0.0, 1.0, 0.3, 0.1)
    a = rl.rloo_advantages(r, 2)
    close(rl.rloo_advantages(r, 2, normalize=True), (a - a.mean()) / (a.std() + 1e-4), atol=1e-12)
    # R = score - beta * (sum old - sum ref)
    close(rl.rloo_sequence_rewards(t(1.0, 2.0), t(-3.0, -4.0), t(-5.0, -4.5), 0.05), [0.9, 1.975], atol=1e-12)


# ------------------------------------------------------------------------------------------------ 12. GRPO
def test_grpo_hand_values():
    r = t(1.0, 0.0, 0.0, 1.0)
    close(rl.grpo_advantages(r, 4, "group"), [0.865875, -0.865875, -0.865875, 0.865875])
    close(rl.grpo_advantages(r, 4, "none"), [0.5, -0.5, -0.5, 0.5], atol=0)
    close(rl.grpo_advantages(t(0.2, 0.5, 0.9), 3), [-0.948888, -0.094889, 1.043777])


def test_grpo_identical_rewards_give_zero_not_nan():
    for scale in ("group", "batch", "none"):
        a = rl.grpo_advantages(t(0.7, 0.7, 0.7, 0.7), 4, scale)
        assert torch.equal(a, torch.zeros(4, dtype=F64))
    a = rl.grpo_advantages(t(0.7, 0.7, 1.0, 0.0), 2, "group")
    assert not torch.isnan(a).any() and torch.equal(a[:2], torch.zeros(2, dtype=F64))
    assert torch.equal(rl.grpo_advantages(t(1.0, 2.0), 1, "group"), torch.zeros(2, dtype=F64))


def test_grpo_batch_scaling_is_group_mean_over_batch_std():
    r = t(1.0, 0.0, 3.0, 5.0)
    g = r.view(2, 2)
    want = (g - g.mean(1, keepdim=True)).view(-1) / (r.std() + 1e-4)
    close(rl.grpo_advantages(r, 2, "batch"), want, atol=1e-12)
    with pytest.raises(ValueError):
        rl.grpo_advantages(r, 2, "global")


# --------------------------------------------------------------------------------------------- 13. reference sync
def test_ema_sync_values_and_hard_copy():
    ref, pol = torch.full((3,), 1.0), torch.full((3,), 2.0)
    rl.ema_sync_([ref], [pol], alpha=0.6)
    close(ref, [1.6, 1.6, 1.6])
    p = torch.nn.Parameter(torch.randn(4, 5))
    q = torch.nn.Parameter(torch.randn(4, 5))
    rl.ema_sync_([q], [p], alpha=1.0)
    assert torch.equal(q, p) and q.grad is None
    with pytest.raises(ValueError):
        rl.ema_sync_([q], [p], alpha=1.5)


def test_sync_fires_only_at_multiples():
    fired = [s for s in range(0, 1600) if rl.sync_due(s, 512)]
    assert fired == [512, 1024, 1536]
    assert not rl.sync_due(0, 1) and rl.sync_due(1, 1)
    with pytest.raises(ValueError):
        rl.sync_due(5, 0)


def test_kl_to_initial_policy_still_measurable_after_sync():
    # a moving reference changes KL-to-ref; KL to the frozen initial policy is a separate quantity
    init, pol = t(-1.0, -2.0), t(-0.5, -1.0)
    ref = init.clone()
    rl.ema_sync_([ref], [pol], alpha=0.6)
    assert rl.per_token_kl(pol, ref).sum() < rl.per_token_kl(pol, init).sum()
    close(rl.per_token_kl(pol, init).sum(), 1.5, atol=1e-12)


# ---------------------------------------------------------------------------------------- logging and controllers
def test_kl_loss_term_with_and_without_ratio():
    lp = torch.tensor([[-1.0, -0.5]], dtype=F64, requires_grad=True)
    ref, old = torch.tensor([[-1.2, -0.5]], dtype=F64), torch.tensor([[-1.1, -0.5]], dtype=F64)
    k3 = rl.per_token_kl(lp, ref, "k3")
    assert torch.equal(rl.kl_loss_term(lp, ref), k3)
    close(rl.kl_loss_term(lp, ref, old), k3 * torch.exp(lp - old), atol=1e-12)
    # on-policy (rho = 1 in value) the ratio still adds k3 to the gradient: d(k3 rho)/dlogp = dk3 + k3
    (g_plain,) = torch.autograd.grad(rl.kl_loss_term(lp, ref).sum(), lp)
    (g_is,) = torch.autograd.grad(rl.kl_loss_term(lp, ref, lp.detach()).sum(), lp)
    close(g_is, g_plain + k3.detach(), atol=1e-12)
    assert g_is[0, 1] == 0.0 and g_is[0, 0] != g_plain[0, 0]


def test_approx_kl_and_entropy():
    lp, old = t(-1.0, -2.0, 0.0).unsqueeze(0), t(-1.5, -2.0, 7.0).unsqueeze(0)
    close(rl.approx_kl(lp, old, torch.tensor([[1, 1, 0]])), 0.5 * (0.25 + 0.0) / 2, atol=1e-12)
    assert rl.approx_kl(lp, lp.clone(), torch.ones(1, 3)).item() == 0.0
    h = rl.entropy_from_logits(torch.zeros(2, 3, 8))
    close(h, torch.full((2, 3), math.log(8.0)), atol=1e-6)
    assert rl.entropy_from_logits(torch.tensor([[0.0, -1e4]])).item() == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_coef():
    assert rl.adaptive_kl_coef(0.1, 6.0, 6.0, 100, 1000) == pytest.approx(0.1)
    assert rl.adaptive_kl_coef(0.1, 12.0, 6.0, 100, 1000) == pytest.approx(0.1 * 1.02)  # e clipped at +0.2
    assert rl.adaptive_kl_coef(0.1, 0.0, 6.0, 500, 1000) == pytest.approx(0.1 * 0.9)  # e clipped at -0.2
    assert rl.adaptive_kl_coef(0.1, 6.6, 6.0, 1000, 1000) == pytest.approx(0.11)


# ------------------------------------------------------------------------------------------------ aggregation
def _toy_batch(seed=5, b=8, t_=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 1, 4, 6, 2, 7, 3, 5])[:b]
    mask = torch.arange(t_).unsqueeze(0) < lengths.unsqueeze(1)
    logp = (torch.randn(b, t_, generator=g) * 0.5 - 1.0).requires_grad_(True)
    old = logp.detach() + 0.3 * torch.randn(b, t_, generator=g)
    adv = torch.randn(b, generator=g)
    return logp, old, adv, mask


def test_aggregate_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    close(rl.aggregate(x, m, "grpo"), (2.0 + 4.0) / 2)
    close(rl.aggregate(x, m, "bnpo"), 10.0 / 4)
    close(rl.aggregate(x, m, "token_mean"), 10.0 / 4)
    close(rl.aggregate(x, m, "dapo", normalizer=20.0), 0.5)
    close(rl.aggregate(x, m, "dr_grpo", max_completion_length=5), 10.0 / 10)
    close(rl.aggregate(t(1.0, 3.0), None, "sequence"), 2.0)
    with pytest.raises(ValueError):
        rl.aggregate(x, m, "dr_grpo")
    with pytest.raises(ValueError):
        rl.aggregate(x, m, "mean")


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo", "bnpo", "token_mean", "sequence"])
def test_aggregate_gradient_accumulation_equivalence(mode):
    logp, old, adv, mask = _toy_batch()
    b, t_ = mask.shape
    global_tokens = mask.sum()

    def loss_of(rows, **kw):
        if mode == "sequence":
            per = rl.sequence_ratio_policy_loss(logp[rows], old[rows], adv[rows], mask[rows])
        else:
            per, _ = rl.clipped_policy_loss_terms(logp[rows], old[rows], adv[rows])
        return rl.aggregate(per, mask[rows], mode, max_completion_length=t_, **kw)

    full = loss_of(slice(0, b))
    (g_full,) = torch.autograd.grad(full, logp)
    kw = {"normalizer": global_tokens} if mode in ("dapo", "bnpo", "token_mean") else {"num_sequences": b}
    accum = sum(loss_of(slice(i, i + 2), **kw) for i in range(0, b, 2))
    (g_acc,) = torch.autograd.grad(accum, logp)
    torch.testing.assert_close(accum, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(g_acc, g_full, atol=1e-6, rtol=0)
    assert g_full.abs().sum() > 0


def test_bnpo_with_local_counts_is_not_accumulation_invariant():
    logp, old, adv, mask = _toy_batch()
    per, _ = rl.clipped_policy_loss_terms(logp, old, adv)
    full = rl.aggregate(per, mask, "bnpo")
    local = sum(rl.aggregate(per[i : i + 2], mask[i : i + 2], "bnpo") for i in range(0, 8, 2)) / 4
    assert abs(full.item() - local.item()) > 1e-3  # unequal token counts per micro-batch


# ------------------------------------------------------------------------------------------------ registry
def test_rl_registry():
    assert set(RL_ALGOS) == {"ppo", "rloo", "grpo"}
    ppo, rloo, grpo = (get_rl_algo(n) for n in ("ppo", "rloo", "grpo"))
    assert (ppo.kl_in, rloo.kl_in, grpo.kl_in) == ("reward", "reward", "loss")
    assert (ppo.kl_estimator, rloo.kl_estimator, grpo.kl_estimator) == ("k1", "k1", "k3")
    assert (ppo.default_kl_coef, rloo.default_kl_coef, grpo.default_kl_coef) == (0.05, 0.05, 0.0)
    assert (ppo.needs_value_model, rloo.needs_value_model, grpo.needs_value_model) == (True, False, False)
    assert (ppo.default_group_size, rloo.default_group_size, grpo.default_group_size) == (1, 2, 8)
    assert (ppo.default_aggregation, rloo.default_aggregation, grpo.default_aggregation) == (
        "token_mean",
        "sequence",
        "dapo",
    )
    for spec in RL_ALGOS.values():
        assert set(spec.reads) <= set(RL_KEYS) and spec.default_aggregation in rl.AGGREGATIONS
        assert spec.kl_estimator in rl.KL_ESTIMATORS and spec.summary and "\n" not in spec.summary
    assert set(ppo.reads) == {
        "cliprange_value",
        "vf_coef",
        "gae_lambda",
        "gamma",
        "whiten_rewards",
        "num_ppo_epochs",
        "value_model",
        "missing_eos_penalty",
    }
    assert set(rloo.reads) == {"normalize_advantages", "num_ppo_epochs", "missing_eos_penalty"}
    assert set(grpo.reads) == {"loss_type", "scale_rewards", "epsilon_high", "num_ppo_epochs", "missing_eos_penalty"}
    with pytest.raises(ValueError):
        get_rl_algo("dpo")
    with pytest.raises(Exception):
        ppo.name = "x"  # frozen
