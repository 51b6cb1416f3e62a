"""Pure math of decoding-time alignment: docs/conventions.md D8 items 1, 4, 5, 7, 8, 9, 10 and 15."""

import math

import pytest
import torch

from alignlab.decoding.linear import cfg_logits, la_distribution, la_logits, la_masked_logits, la_select, la_step_kl
from alignlab.decoding.metrics import diversity, diversity_of, rep_n, win_rate_half_ties, win_tie, word_tokens
from alignlab.decoding.scores import (
    bon_exact_kl,
    bon_kl_bound,
    bon_win_rate_bound,
    candidate_distribution,
    direct_q,
    draw,
    guided_scores,
    indirect_q,
    nucleus_keep,
    select,
    step_kl,
    step_kl_bound,
    topk_candidates,
)

# ----------------------------------------------------------------------------------------------- D8.1 BoN


def test_bon_kl_values_and_monotone():
    assert bon_kl_bound(1) == 0.0
    for n, v in [(2, 0.193147), (4, 0.636294), (8, 1.204442), (16, 1.835089), (1000, 5.908755)]:
        assert bon_kl_bound(n) == pytest.approx(v, abs=1e-6)
    vals = [bon_kl_bound(n) for n in range(1, 200)]
    assert all(b > a for a, b in zip(vals, vals[1:]))
    assert bon_win_rate_bound(2) == pytest.approx(0.666667, abs=1e-6)


def test_bon_exact_discrete_kl_below_bound():
    assert bon_exact_kl([0.5, 0.5], [0.0, 1.0], 2) == pytest.approx(0.130812, abs=1e-6)
    assert bon_exact_kl([0.5, 0.5], [0.0, 1.0], 16) == pytest.approx(0.692963, abs=1e-6)
    p = [1 / 2, 1 / 3, 1 / 6]
    assert bon_exact_kl(p, [0.0, 1.0, 2.0], 2) == pytest.approx(0.139780, abs=1e-6)
    assert bon_exact_kl(p, [0.0, 1.0, 2.0], 4) == pytest.approx(0.553659, abs=1e-6)
    for n in (2, 4, 16):
        assert bon_exact_kl([0.5, 0.5], [0.0, 1.0], n) <= bon_kl_bound(n)
        assert bon_exact_kl(p, [0.0, 1.0, 2.0], n) <= bon_kl_bound(n)


# ----------------------------------------------------------------------------------------------- D8.4 scores


def test_candidate_distribution_normalised_and_invariances():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    logp, ids = topk_candidates(logits, 7)
    assert (ids == logits.topk(7).indices).all()
    q = torch.randn(3, 7, generator=g)
    pi = candidate_distribution(guided_scores(logp, q, 1.0))
    assert (pi >= 0).all() and torch.allclose(pi.sum(-1), torch.ones(3), atol=1e-6)
    # logits vs log-softmax inputs: identical candidates and distribution
    logp2, ids2 = topk_candidates(torch.log_softmax(logits, -1), 7)
    assert (ids2 == ids).all()
    assert torch.allclose(candidate_distribution(guided_scores(logp2, q, 1.0)), pi, atol=1e-6)
    # reward shift invariance, and scaling rewards by s == dividing alpha by s (multiplying w by s)
    assert torch.allclose(candidate_distribution(guided_scores(logp, q + 5.0, 1.0)), pi, atol=1e-6)
    s = 2.5
    assert torch.allclose(
        candidate_distribution(guided_scores(logp, s * q, 0.4)),
        candidate_distribution(guided_scores(logp, q, 0.4 * s)),
        atol=1e-6,
    )
    # w = 0 is bit-identical to the base log-probs
    assert torch.equal(guided_scores(logp, q, 0.0), logp)


def test_k_larger_than_vocab_is_an_error():
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        topk_candidates(torch.zeros(1, 5), 6)


def test_draw_never_picks_masked_and_matches_frequencies():
    z = torch.tensor([[float("-inf"), 0.0, math.log(3.0), float("-inf")]])
    g = torch.Generator().manual_seed(1)
    picks = torch.stack([draw(z, [g]) for _ in range(4000)]).view(-1)
    assert set(picks.tolist()) <= {1, 2}
    assert (picks == 2).float().mean().item() == pytest.approx(0.75, abs=0.03)
    assert select(torch.tensor([[1.0, 3.0, 3.0]]), greedy=True).item() == 1  # first on ties


# ----------------------------------------------------------------------------------------------- D8.5 lookahead toy


def test_lookahead_toy():
    base = torch.log(torch.tensor([[0.5, 0.5]]))
    partial = torch.tensor([[0.0, 0.5]])  # r([x, A]), r([x, B])
    rollout = torch.tensor([[[1.0], [0.2]]])  # final rewards after rollouts of rho_BL, M = 1
    args = candidate_distribution(guided_scores(base, partial, 1.0))
    assert args[0].tolist() == pytest.approx([0.377541, 0.622459], abs=1e-6)
    assert select(guided_scores(base, partial, 1.0), True).item() == 1  # ARGS picks B
    q = direct_q(rollout)
    s = guided_scores(base, q, 1.0)
    assert candidate_distribution(s)[0].tolist() == pytest.approx([0.689974, 0.310026], abs=1e-6)
    assert select(s, True).item() == 0  # TQ* picks A
    kl = step_kl(s, base).item()
    assert kl == pytest.approx(0.074026, abs=1e-6)
    assert kl <= step_kl_bound(q, 1.0).item() + 1e-9 and step_kl_bound(q, 1.0).item() == pytest.approx(0.8)
    kls = []
    for alpha, pa in [(0.5, 0.832018), (1.0, 0.689974), (2.0, 0.598688), (4.0, 0.549834)]:
        s = guided_scores(base, q, 1 / alpha)
        assert candidate_distribution(s)[0, 0].item() == pytest.approx(pa, abs=1e-6)
        kls.append(step_kl(s, base).item())
    assert all(b <= a + 1e-12 for a, b in zip(kls, kls[1:]))  # non-increasing in alpha


def test_args_equals_tq_with_zero_horizon_scores():
    # H = 0: the rollout estimate of one rollout of length 0 is the partial-sequence reward itself
    base = torch.log_softmax(torch.randn(4, 6), -1)
    r_partial = torch.randn(4, 6)
    assert torch.equal(guided_scores(base, direct_q(r_partial.unsqueeze(-1)), 1.3), guided_scores(base, r_partial, 1.3))


# ----------------------------------------------------------------------------------------------- D8.7-D8.8 estimators


def test_indirect_estimator_values_and_reductions():
    r = torch.tensor([1.0, 0.0, 0.5])
    rb = torch.tensor([0.5, 0.5, 0.5])
    q, ess = indirect_q(r, rb, 1.0)
    assert q.item() == pytest.approx(0.660078, abs=1e-6)
    assert direct_q(r).item() == pytest.approx(0.5)
    assert ess.item() == pytest.approx(2.593306, abs=1e-6)
    # r_BL == r: equals the direct estimate (and ESS = M)
    q2, ess2 = indirect_q(r, r, 0.7)
    assert q2.item() == pytest.approx(direct_q(r).item(), abs=1e-6) and ess2.item() == pytest.approx(3.0)
    # r_BL = r + c(s): unchanged
    q3, _ = indirect_q(r, r + 4.2, 0.7)
    assert q3.item() == pytest.approx(direct_q(r).item(), abs=1e-6)
    # M = 1: equals the direct estimate
    q4, ess4 = indirect_q(r[:1], torch.tensor([-3.0]), 0.5)
    assert q4.item() == pytest.approx(1.0) and ess4.item() == pytest.approx(1.0)


def test_estimators_converge_on_enumerable_toy():
    g = torch.Generator().manual_seed(0)
    p_sft = torch.tensor([0.4, 0.3, 0.2, 0.1])
    r = torch.tensor([0.0, 1.0, 2.0, -1.0])
    r_bl = torch.tensor([1.0, -0.5, 0.3, 2.0])
    beta = 1.5
    # direct: a stochastic rho_BL, Monte-Carlo mean -> enumerated expectation
    idx = torch.multinomial(p_sft, 200_000, replacement=True, generator=g)
    assert direct_q(r[idx]).item() == pytest.approx(float((p_sft * r).sum()), abs=0.01)
    # indirect: rho_BL ∝ p_sft·exp(r_BL/β); the SNIS estimate -> E_{rho*}[r], rho* ∝ p_sft·exp(r/β)
    rho_bl = p_sft * torch.exp(r_bl / beta)
    rho_bl /= rho_bl.sum()
    rho_star = p_sft * torch.exp(r / beta)
    rho_star /= rho_star.sum()
    idx = torch.multinomial(rho_bl, 200_000, replacement=True, generator=g)
    q, ess = indirect_q(r[idx], r_bl[idx], beta)
    assert q.item() == pytest.approx(float((rho_star * r).sum()), abs=0.01)
    assert 0 < ess.item() <= 200_000


# ----------------------------------------------------------------------------------------------- D8.9-D8.10 LA

Z0 = torch.tensor([[2.0, 1.0, -3.0]])
ZP = torch.tensor([[2.0, 1.5, -1.0]])


def test_la_identities():
    pp = torch.softmax(ZP, -1)
    assert pp[0].tolist() == pytest.approx([0.603749, 0.366192, 0.030059], abs=1e-6)
    assert nucleus_keep(ZP, 0.8)[0].tolist() == [True, True, False]
    assert torch.allclose(la_distribution(Z0, ZP, 0.0), pp, atol=1e-6)
    assert la_distribution(Z0, ZP, -1.0)[0].tolist() == pytest.approx([0.727475, 0.267623, 0.004902], abs=1e-6)
    q = la_distribution(Z0, ZP, 2.0)
    assert q[0].tolist() == pytest.approx([0.186324, 0.307196, 0.506480], abs=1e-6)
    assert la_logits(Z0, ZP, 2.0).argmax().item() == 2  # unmasked argmax
    assert la_select(Z0, ZP, 2.0, 1.0, 0.8, greedy=True).item() == 1  # masked greedy
    # classifier-free guidance with gamma = 1 + ratio gives the same q: alignlab's formula and HF's processor
    from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

    assert torch.allclose(torch.softmax(cfg_logits(ZP, Z0, 3.0), -1), q, atol=1e-6)
    hf = ClassifierFreeGuidanceLogitsProcessor(3.0)(torch.zeros(1, 1, dtype=torch.long), torch.cat([ZP, Z0]))
    assert torch.allclose(torch.softmax(hf, -1), q, atol=1e-6)
    # swapping the contexts with ratio -1-ratio
    assert torch.allclose(la_distribution(ZP, Z0, -3.0), q, atol=1e-6)
    # KL(pi_ratio || pi_p)
    for ratio, want in [(0, 0.0), (1, 0.164486), (2, 1.157445), (3, 2.568812)]:
        pr = la_distribution(Z0, ZP, float(ratio))
        assert float((pr * (pr.log() - pp.log())).sum()) == pytest.approx(want, abs=1e-6)


def test_la_logit_and_logsoftmax_inputs_agree():
    g = torch.Generator().manual_seed(3)
    z0, zp = torch.randn(4, 40, generator=g) * 2, torch.randn(4, 40, generator=g) * 2
    for ratio in (0.0, 2.0, 5.0):
        a = la_distribution(z0, zp, ratio, 0.5, 0.8)
        b = la_distribution(torch.log_softmax(z0, -1), torch.log_softmax(zp, -1), ratio, 0.5, 0.8)
        assert torch.allclose(a, b, atol=1e-5)


def test_la_robustness_finite_normalised_affine():
    g = torch.Generator().manual_seed(0)
    z0, zp = torch.randn(8, 300, generator=g) * 4, torch.randn(8, 300, generator=g) * 4
    for ratio in (0.0, 1.0, 3.0, 5.0, 20.0):
        for T in (0.5, 1.0):
            q = la_distribution(z0, zp, ratio, T, 0.8)
            assert torch.isfinite(q).all() and torch.allclose(q.sum(-1), torch.ones(8), atol=1e-5)
            assert torch.isfinite(la_step_kl(z0, zp, ratio, T, 0.8)).all()
    # log-odds between two tokens are affine in ratio with slope (d_a - d_b)/T
    d = zp - z0
    T = 0.5
    for ratio in (0.0, 1.0, 3.0):
        lo = (la_logits(z0, zp, ratio) / T)[:, 3] - (la_logits(z0, zp, ratio) / T)[:, 7]
        base = (zp[:, 3] - zp[:, 7]) / T
        assert torch.allclose(lo, base + ratio * (d[:, 3] - d[:, 7]) / T, atol=1e-4)


def test_la_ratio_50_never_spurious_token_zero():
    # nucleus (from z_p) = {1, 2}; token 3 has a huge z_p - z_0, so at ratio 50 every nucleus token
    # underflows to probability 0 and an argmax over masked *probabilities* returns the spurious token 0.
    z0 = torch.tensor([[-8.0, 0.0, 0.0, -40.0, -9.0]])
    zp = torch.tensor([[-8.0, 0.5, 0.2, -12.0, -9.0]])
    keep = nucleus_keep(zp / 0.5, 0.8)
    assert keep[0].tolist() == [False, True, True, False, False]
    probs = torch.softmax(la_logits(z0, zp, 50.0) / 0.5, -1) * keep  # the reference implementation's way
    assert probs.max().item() == 0.0 and probs.argmax().item() == 0
    assert la_select(z0, zp, 50.0, 0.5, 0.8, greedy=True).item() == 1
    g = torch.Generator().manual_seed(0)
    zs0, zsp = torch.randn(16, 500, generator=g) * 5, torch.randn(16, 500, generator=g) * 5
    tok = la_select(zs0, zsp, 50.0, 0.5, 0.8, greedy=True)
    keep = nucleus_keep(zsp / 0.5, 0.8)
    assert keep.gather(1, tok.view(-1, 1)).all()
    assert torch.isfinite(la_masked_logits(zs0, zsp, 50.0, 0.5, 0.8).max(-1).values).all()


def test_nucleus_partial_sort_equals_full_sort():
    g = torch.Generator().manual_seed(5)
    for scale in (0.1, 1.0, 8.0):  # flat distributions take the full-sort fallback
        z = torch.randn(6, 2000, generator=g) * scale
        p = torch.softmax(z, -1)
        sp, order = p.sort(-1, descending=True)
        full = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, (sp.cumsum(-1) - sp) < 0.8)
        assert torch.equal(nucleus_keep(z, 0.8, head=16), full)


# ----------------------------------------------------------------------------------------------- D8.15 metrics


def test_metrics_values():
    toks = word_tokens("the cat the cat")
    assert rep_n(toks, 2) == pytest.approx(50.0)
    assert rep_n(toks, 3) == pytest.approx(33.333, abs=1e-3)
    assert rep_n(toks, 4) == pytest.approx(50.0)
    assert diversity_of(toks) == pytest.approx(0.166667, abs=1e-6)
    assert diversity(["a b c d"]) == pytest.approx(0.25)
    assert word_tokens("Hello, world!") == ["hello", ",", "world", "!"]
    assert win_tie(6, 3, 1) == pytest.approx(0.9)
    assert win_rate_half_ties(6, 3, 1) == pytest.approx(0.75)
