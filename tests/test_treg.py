"""T-REG (docs/conventions.md T8): loss values and gradients, token rewards by contrastive prompting, alignment,
caching,
training integration and bad input."""

import json
import math

import pytest
import torch
from accelerate import Accelerator
from tiny_models import save_tiny, tiny_causal_lm, tiny_tokenizer, tiny_train_config

from alignlab.data.collate import TokenRewardAlignmentError, collate_pairs
from alignlab.data.tokenize import PairTokenizer, TokenizedPair, tokenize_pairs
from alignlab.data.types import PreferenceRecord
from alignlab.losses import preference as L
from alignlab.losses import treg as T
from alignlab.losses.objective import preference_objective
from alignlab.losses.types import PairLogps, TokenTerms
from alignlab.models.scorer import SequenceScorer
from alignlab.precompute import token_rewards as TR
from alignlab.precompute.reference import compute_logps
from alignlab.recipes.train import TrainConfig, train
from alignlab.training.schedule import BatchPlan
from alignlab.training.step import accumulate_gradients

F64 = torch.float64


# ----------------------------------------------------------------------------- helpers


def _terms(lp_rows, rhat_rows, T_=None, dtype=F64, requires_grad=True):
    """TokenTerms + PairLogps from per-response lists (rows: chosen..., rejected...)."""
    T_ = T_ or max(len(r) for r in lp_rows)
    n = len(lp_rows)
    lp = torch.zeros(n, T_, dtype=dtype)
    rh = torch.zeros(n, T_, dtype=dtype)
    mask = torch.zeros(n, T_, dtype=torch.bool)
    for i, (a, b) in enumerate(zip(lp_rows, rhat_rows)):
        lp[i, : len(a)] = torch.tensor(a, dtype=dtype)
        rh[i, : len(b)] = torch.tensor(b, dtype=dtype)
        mask[i, : len(a)] = True
    lp.requires_grad_(requires_grad)
    return lp, mask, rh


def _pair_logps(lp, mask, ref=None):
    s = torch.where(mask, lp, torch.zeros((), dtype=lp.dtype)).sum(-1)
    c = mask.sum(-1)
    B = lp.shape[0] // 2
    return PairLogps(s[:B], s[B:], c[:B], c[B:], None if ref is None else ref[:B], None if ref is None else ref[B:])


def _random_case(seed=0, B=3, T_=6):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, T_ + 1, (2 * B,), generator=g).tolist()
    lp_rows = [(-torch.rand(n, generator=g, dtype=F64) * 3).tolist() for n in lens]
    rh_rows = [(torch.rand(n, generator=g, dtype=F64) - 0.5).tolist() for n in lens]
    ref = -torch.rand(2 * B, generator=g, dtype=F64) * 10
    return lp_rows, rh_rows, ref


def text_pairs(tokenizer, n=6, seed=0, max_length=96, max_prompt_length=48):
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]
    recs = [
        PreferenceRecord(
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) + "?",
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))),
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))),
            f"toy[{i}]",
        )
        for i in range(n)
    ]
    pairs, _ = tokenize_pairs(recs, tokenizer, max_length, max_prompt_length)
    return pairs


# ----------------------------------------------------------------------------- loss: values and gradients


def test_golden_vector():
    """T8.7: beta 0.1, alpha 0.5, sum reduction, w detached."""
    lp, mask, rh = _terms([[-1.0, -2.0], [-1.5, -0.5, -3.0]], [[0.3, -0.1], [-0.4, 0.2, -0.2]])
    p = _pair_logps(lp, mask, torch.tensor([-3.7, -3.7], dtype=F64))
    t = TokenTerms(lp, mask, rh)
    parts = T.dpo_treg_parts(p, t, beta=0.1)
    assert (0.1 * (p.chosen - p.ref_chosen)).item() == pytest.approx(0.07, abs=1e-12)
    assert (0.1 * (p.rejected - p.ref_rejected)).item() == pytest.approx(-0.13, abs=1e-12)
    assert parts.seq.item() == pytest.approx(0.598139, abs=1e-6)
    assert parts.w.item() == pytest.approx(0.450166, abs=1e-6)
    assert parts.reg_chosen.item() == pytest.approx(0.010, abs=1e-9)
    assert parts.reg_rejected.item() == pytest.approx(-0.110, abs=1e-9)
    out = preference_objective(p, "dpo_treg", {"beta": 0.1, "alpha": 0.5}, tokens=t)
    assert out.losses.item() == pytest.approx(0.575631, abs=1e-6)
    out.losses.sum().backward()
    assert lp.grad[0, :2].tolist() == pytest.approx([-0.051769, -0.042766], abs=1e-6)
    assert lp.grad[1].tolist() == pytest.approx([0.054020, 0.040515, 0.049518], abs=1e-6)
    assert lp.grad[0, 2].item() == 0.0  # padding gets no gradient
    assert out.extras["treg/w"].item() == pytest.approx(0.450166, abs=1e-6)


@pytest.mark.parametrize(
    "loss,base,params",
    [("dpo_treg", "dpo", {"beta": 0.1}), ("simpo_treg", "simpo", {"beta": 2.0, "gamma_beta_ratio": 0.3})],
)
def test_alpha_zero_and_zero_rewards_are_exactly_the_base_loss(loss, base, params):
    """T8.1-T8.2: alpha = 0 (any r̂) and r̂ = 0 (any alpha) give the base loss and gradients bit for bit."""
    lp_rows, rh_rows, ref = _random_case(1)
    for alpha, zero in ((0.0, False), (0.7, True)):
        lp, mask, rh = _terms(lp_rows, rh_rows)
        if zero:
            rh = torch.zeros_like(rh)
        p = _pair_logps(lp, mask, ref)
        out = preference_objective(p, loss, params | {"alpha": alpha}, tokens=TokenTerms(lp, mask, rh))
        out.losses.sum().backward()
        lp2, mask2, _ = _terms(lp_rows, rh_rows)
        base_out = preference_objective(_pair_logps(lp2, mask2, ref), base, params)
        base_out.losses.sum().backward()
        assert torch.equal(out.losses, base_out.losses)
        assert torch.equal(lp.grad, lp2.grad)


def test_weight_half_at_init_in_unit_interval_and_static():
    lp_rows, rh_rows, _ = _random_case(2)
    lp, mask, rh = _terms(lp_rows, rh_rows)
    p = _pair_logps(lp, mask)
    at_init = PairLogps(p.chosen, p.rejected, p.chosen_len, p.rejected_len, p.chosen.detach(), p.rejected.detach())
    parts = T.dpo_treg_parts(at_init, TokenTerms(lp, mask, rh), beta=0.1)
    assert torch.all(parts.w == 0.5)  # policy = reference: every margin is exactly 0
    ref = torch.tensor([-3.0, -2.0, -4.0, -9.0, -1.0, -5.0], dtype=F64)
    w = T.dpo_treg_parts(_pair_logps(lp, mask, ref), TokenTerms(lp, mask, rh), beta=0.5).w
    assert torch.all((w > 0) & (w < 1)) and not w.requires_grad
    static = T.dpo_treg_parts(_pair_logps(lp, mask, ref), TokenTerms(lp, mask, rh), weighting="static").w
    assert torch.all(static == 0.5)
    with pytest.raises(ValueError, match="weighting"):
        T.dpo_treg_parts(_pair_logps(lp, mask, ref), TokenTerms(lp, mask, rh), weighting="nope")


def test_detached_weight_gradient_decomposition_and_reference_independence():
    """T8.6 and T8.8: grad = grad DPO + alpha*w*grad L_REG with w fixed; -sum r̂ b log pi and
    -sum r̂ b (log pi - log pi_ref) have identical gradients."""
    lp_rows, rh_rows, ref = _random_case(3)
    alpha, beta = 0.4, 0.2
    lp, mask, rh = _terms(lp_rows, rh_rows)
    t = TokenTerms(lp, mask, rh)
    T.dpo_treg(_pair_logps(lp, mask, ref), t, beta=beta, alpha=alpha).sum().backward()
    full = lp.grad.clone()
    lp2, mask2, _ = _terms(lp_rows, rh_rows)
    p2 = _pair_logps(lp2, mask2, ref)
    w = torch.sigmoid(-beta * ((p2.chosen - p2.ref_chosen) - (p2.rejected - p2.ref_rejected))).detach()
    reg = T.treg_regularizer(TokenTerms(lp2, mask2, rh), beta)
    B = w.shape[0]
    (L.dpo(p2, beta) + alpha * w * (reg[:B] + reg[B:])).sum().backward()
    assert torch.allclose(full, lp2.grad, atol=1e-14)
    lp3, mask3, _ = _terms(lp_rows, rh_rows)
    lp_ref = torch.randn_like(lp3) - 2
    (-(beta * rh * (lp3 - lp_ref))[mask3].sum()).backward()
    lp4, mask4, _ = _terms(lp_rows, rh_rows)
    T.treg_regularizer(TokenTerms(lp4, mask4, rh), beta).sum().backward()
    assert torch.allclose(lp3.grad, lp4.grad, atol=1e-15)


def test_regularizer_update_sign_on_chosen_and_rejected():
    """T8.5: one SGD step on L_REG alone raises log pi where r̂ > 0 and lowers it where r̂ < 0, on both sides."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, dtype=F64, requires_grad=True)  # chosen row 0, rejected row 1
    targets = torch.randint(0, 7, (2, 4))
    rh = torch.tensor([[0.3, -0.2, 0.1, -0.4], [0.25, -0.1, -0.3, 0.2]], dtype=F64)
    mask = torch.ones(2, 4, dtype=torch.bool)

    def logp(x):
        return torch.log_softmax(x, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    T.treg_regularizer(TokenTerms(logp(logits), mask, rh), beta=0.1).sum().backward()
    with torch.no_grad():
        delta = logp(logits - 1.0 * logits.grad) - logp(logits)
    assert torch.all(torch.sign(delta) == torch.sign(rh))


def test_alignment_guard_never_broadcasts():
    tok = tiny_tokenizer()
    pairs = text_pairs(tok, 2)
    good = [([0.1] * len(p.chosen_ids), [-0.1] * len(p.rejected_ids)) for p in pairs]
    b = collate_pairs(pairs, [0, 1], tok.pad_token_id, token_rewards=good)
    assert torch.equal(b.token_rewards != 0, b.completion_mask[:, 1:])  # exactly the scored positions
    bad = [(good[0][0][:-1], good[0][1]), good[1]]
    with pytest.raises(TokenRewardAlignmentError, match="toy\\[0\\].*token rewards"):
        collate_pairs(pairs, [0, 1], tok.pad_token_id, token_rewards=bad)
    lp = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="never broadcast"):
        TokenTerms(lp, torch.ones(2, 5, dtype=torch.bool), torch.zeros(1, 5))


# ----------------------------------------------------------------------------- token rewards


def test_token_reward_function_values_range_monotone_shift():
    d = torch.tensor([2.0, 0.0, -2.0, 4.9])
    assert T.token_rewards_from_logps(d, torch.zeros(4)).tolist() == pytest.approx(
        [0.380797, 0.0, -0.380797, 0.492608], abs=1e-6
    )
    x = torch.linspace(-60, 60, 2001)
    r = T.token_rewards_from_logps(x, torch.zeros_like(x))
    assert torch.all((r > -0.5) & (r < 0.5)) and torch.all(r[1:] >= r[:-1])
    a, b = torch.randn(50) * 3 - 5, torch.randn(50) * 3 - 5
    assert torch.allclose(T.token_rewards_from_logps(a, b), T.token_rewards_from_logps(a - 7, b - 7), atol=1e-6)
    assert torch.equal(T.token_rewards_from_logps(a, b), -T.token_rewards_from_logps(b, a))


def test_contrast_temperature_rescales_delta_keeps_sign_and_range():
    # r̂ = sigma(Δ) - 0.5 at tau = 1 (unchanged); sigma(Δ / tau) - 0.5 otherwise, by hand: Δ = 2 -> tau 0.5:
    # sigma(4) - 0.5 = 0.482014; tau 2: sigma(1) - 0.5 = 0.231059
    r = T.token_rewards_from_logps(torch.tensor([2.0, -2.0, 0.0, 0.01]), torch.zeros(4))
    assert T.rescale_token_rewards(r, 1.0) is r
    half = T.rescale_token_rewards(r, 0.5)
    assert half[:3].tolist() == pytest.approx([0.482014, -0.482014, 0.0], abs=1e-6)
    assert T.rescale_token_rewards(r, 2.0)[0].item() == pytest.approx(0.231059, abs=1e-6)
    assert half[3].item() == pytest.approx(1 / (1 + math.exp(-0.02)) - 0.5, rel=1e-5)  # small Δ: ~Δ/(4 tau)
    sharp = T.rescale_token_rewards(r, 1e-3)
    assert (sharp.abs() < 0.5).all() and torch.equal(torch.sign(sharp), torch.sign(r))
    with pytest.raises(ValueError, match="treg_tau"):
        T.rescale_token_rewards(r, 0.0)
    # applied per pair by the training entry (cache keeps tau = 1)
    pairs = [([0.1, -0.2], [0.3])]
    out = TR.rescale_rewards(pairs, 0.5)
    assert len(out[0][0]) == 2 and len(out[0][1]) == 1 and out[0][0][0] > 0.1 and out[0][0][1] < -0.2


def test_precompute_two_rows_per_response_swap_negates_cache_and_batch_independence():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=1)
    pairs = text_pairs(tok, 5)
    calls = []
    h = model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    res = TR.cached_token_rewards(model, tok, pairs, "revision", batch_size=4)
    h.remove()
    assert res.rows == 2 * 2 * len(pairs) and res.forward_calls == math.ceil(2 * len(pairs) / 4) == len(calls)
    for p, (rc, rr) in zip(pairs, res.rewards):
        assert len(rc) == len(p.chosen_ids) and len(rr) == len(p.rejected_ids)
        assert all(-0.5 < v < 0.5 for v in rc + rr)
    assert any(abs(v) > 1e-4 for rc, _ in res.rewards for v in rc)
    again = TR.cached_token_rewards(model, tok, pairs, "revision", batch_size=2)
    assert again.cache_hit and again.forward_calls == 0 and again.rewards == res.rewards
    # swapping the two instructions negates every token reward
    rev = TR.TEMPLATES["revision"]
    swapped = TR.compute_token_rewards(model, tok, pairs, TR.TregTemplate("swapped", rev.worse, rev.better), 4)
    for (a, b), (c, d) in zip(res.rewards, swapped.rewards):
        assert c == [-v for v in a] and d == [-v for v in b]
    same = TR.compute_token_rewards(model, tok, pairs, TR.TregTemplate("same", rev.better, rev.better), 4)
    assert all(v == 0.0 for rc, rr in same.rewards for v in rc + rr)
    # one pair alone = the same pair inside a padded batch (1e-6)
    alone = TR.compute_token_rewards(model, tok, pairs, "revision", batch_size=1, indices=[3])
    for x, y in zip(alone.rewards[0], res.rewards[3]):
        assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=1e-6)


def test_precompute_equals_online_full_logits():
    """T8.11: cached r̂ equals r̂ recomputed from full logits of one sequence at a time (fp32, 1e-6)."""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=2)
    pairs = text_pairs(tok, 2, seed=3)
    cached = TR.token_rewards_for_pairs(model, tok, pairs, "generation")
    pt = PairTokenizer(tok)
    rows = TR.build_context_rows(pt, TR.TEMPLATES["generation"], pairs[1], "rejected")

    def lp(ctx):
        ids = torch.tensor([ctx + rows.response])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        return logp[len(ctx) - 1 :, :].gather(-1, ids[0, len(ctx) :].unsqueeze(-1)).squeeze(-1)

    online = torch.sigmoid(lp(rows.better_ctx) - lp(rows.worse_ctx)) - 0.5
    assert torch.allclose(online, torch.tensor(cached[1][1]), atol=1e-6)


class _StubLM(torch.nn.Module):
    """Favours token A when the context contains "better", token B otherwise (T8.4)."""

    def __init__(self, marker, a, b, vocab):
        super().__init__()
        self.marker, self.a, self.b, self.vocab = marker, a, b, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        from types import SimpleNamespace

        n, t = input_ids.shape
        logits = torch.zeros(n, t, self.vocab)
        m = len(self.marker)
        for i, row in enumerate(input_ids.tolist()):
            hit = any(row[j : j + m] == self.marker for j in range(t - m + 1))
            logits[i, :, self.a if hit else self.b] = 3.0
        return SimpleNamespace(logits=logits + 0 * self.dummy)

    def get_output_embeddings(self):
        return None


def test_stub_lm_sign():
    tok = tiny_tokenizer()
    a, b = tok("A", add_special_tokens=False)["input_ids"][0], tok("B", add_special_tokens=False)["input_ids"][0]
    stub = _StubLM(tok("better", add_special_tokens=False)["input_ids"], a, b, len(tok))
    pair = TokenizedPair(
        tok("q", add_special_tokens=False)["input_ids"],
        [a, b, tok.eos_token_id],
        [b, a, tok.eos_token_id],
        "stub[0]",
        prompt="q",
        chosen_text="AB",
        rejected_text="BA",
    )
    tpl = TR.TregTemplate("stub", "Make it better: {prompt}", "Make it worse: {prompt}")
    ((rc, rr),) = TR.compute_token_rewards(stub, tok, [pair], tpl).rewards
    assert rc[0] > 0 and rc[1] < 0 and rr[0] < 0 and rr[1] > 0 and rc[2] == 0.0


@pytest.mark.parametrize("kw", [{}, {"add_bos": True}, {"with_bos": False}, {"default_system": "You are helpful."}])
def test_contexts_keep_training_ids_across_templates_bos_eos_truncation(kw):
    tok = tiny_tokenizer(**kw)
    recs = [
        PreferenceRecord(
            [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "tell me more"},
            ],
            "a fairly long chosen answer that will be cut",
            "short",
            "chat[0]",
        ),
        PreferenceRecord("plain prompt", "yes", "no", "plain[1]"),
    ]
    pairs, rep = tokenize_pairs(recs, tok, max_length=60, max_prompt_length=40)
    assert rep.truncated_completion == 1  # the chosen answer of pair 0 is right-truncated for training
    pt = PairTokenizer(tok)
    for p in pairs:
        for side, ids in (("chosen", p.chosen_ids), ("rejected", p.rejected_ids)):
            rows = TR.build_context_rows(pt, TR.TEMPLATES["revision"], p, side)
            TR.check_rows(rows, ids, pt.bos_id)
            assert rows.response == ids
            for ctx in (rows.better_ctx, rows.worse_ctx):
                if pt.auto_bos:  # exactly one BOS, at the start
                    assert ctx[0] == tok.bos_token_id and ctx[1] != tok.bos_token_id
            short = TR.build_context_rows(pt, TR.TEMPLATES["revision"], p, side, max_length=len(ids) + 12)
            assert short.response == ids  # only the context is cut, from the left
            assert len(short.better_ctx) == 12 and short.better_ctx[-5:] == rows.better_ctx[-5:]
            if pt.auto_bos:
                assert short.better_ctx[0] == tok.bos_token_id
    res = TR.compute_token_rewards(tiny_causal_lm(tok), tok, pairs, "revision", max_length=80)
    assert [len(r) for r in res.rewards[0]] == [len(pairs[0].chosen_ids), len(pairs[0].rejected_ids)]
    assert pairs[0].chosen_ids[-1] != tok.eos_token_id and pairs[1].chosen_ids[-1] == tok.eos_token_id


# ----------------------------------------------------------------------------- bad input


def test_bad_templates_and_mismatched_response_ids(tmp_path):
    with pytest.raises(TR.TemplateError, match="no \\{prompt\\}"):
        TR.resolve_template(TR.TregTemplate("x", "Improve this.", "Worsen: {prompt}"))
    with pytest.raises(TR.TemplateError, match="same placeholders"):
        TR.resolve_template(TR.TregTemplate("x", "{prompt} {response}", "{prompt}"))
    with pytest.raises(TR.TemplateError, match="unknown placeholder"):
        TR.resolve_template(TR.TregTemplate("x", "{prompt} {answer}", "{prompt} {answer}"))
    f = tmp_path / "t.yaml"
    f.write_text("better: 'Do well: {prompt}'\nworse: 'Do badly'\n")
    with pytest.raises(ValueError, match="worse instruction has no"):
        TrainConfig(loss="dpo_treg", treg_template=str(f)).validate()
    with pytest.raises(ValueError, match="treg_weighting"):
        TrainConfig(loss="dpo_treg", treg_weighting="x").validate()
    with pytest.raises(ValueError, match="alpha"):
        TrainConfig(loss="dpo_treg", alpha=-1).validate()
    rows = TR.ContextRows([1, 2], [1, 3], [5, 6, 7], "src[9]")
    with pytest.raises(TokenRewardAlignmentError, match="src\\[9\\].*differ from the training ids"):
        TR.check_rows(rows, [5, 6, 8])


def _cfg(tmp_path, **kw) -> TrainConfig:
    return tiny_train_config(tmp_path, **({"loss": "dpo_treg", "max_length": 96, "max_prompt_length": 48} | kw))


def test_scorer_with_other_tokenizer_and_missing_text_fail_before_training(tmp_path):
    tok = tiny_tokenizer()
    other = save_tiny(tmp_path / "other")
    from transformers import AutoTokenizer

    otok = AutoTokenizer.from_pretrained(other)
    otok.add_tokens(["<extra>"])
    otok.save_pretrained(other)
    pairs = text_pairs(tok, 4)
    with pytest.raises(TR.ScorerTokenizerError, match="tokenizer differs"):
        train(_cfg(tmp_path, treg_scorer=str(other), max_steps=1), tiny_causal_lm(tok), tok, pairs)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    bare = [TokenizedPair(p.prompt_ids, p.chosen_ids, p.rejected_ids, p.source) for p in pairs]
    with pytest.raises(ValueError, match="no prompt text"):
        train(_cfg(tmp_path, max_steps=1), tiny_causal_lm(tok), tok, bare)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- training


def _grads(loss, per_device, accum, rewards, extra):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3).to(F64)
    pairs = text_pairs(tok, 8, seed=5)
    ref = compute_logps(
        SequenceScorer(tiny_causal_lm(tok, seed=4).to(F64)), pairs, list(range(8)), tok.pad_token_id, 8, "cpu"
    )
    cfg = TrainConfig(loss=loss, per_device_batch_size=per_device, grad_accum=accum, alpha=0.5, **extra)
    plan = BatchPlan(8, per_device, accum, 1, 0, [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs])
    keep, bad = accumulate_gradients(
        cfg.step_settings(),
        Accelerator(cpu=True),
        SequenceScorer(model),
        plan,
        pairs,
        ref,
        tok.pad_token_id,
        0,
        rewards(pairs),
    )
    assert not bad and "treg/w" in keep.extras
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("loss,extra", [("dpo_treg", {}), ("simpo_treg", {}), ("dpo_treg", {"sft_weight": 0.3})])
def test_grad_accumulation_invariance_treg(loss, extra):
    """R7 for the token-level losses: 1x8, 2x4, 8x1 give the same gradient (float64)."""
    g = torch.Generator().manual_seed(0)

    def rewards(pairs):
        return [
            (
                (torch.rand(len(p.chosen_ids), generator=g) - 0.5).tolist(),
                (torch.rand(len(p.rejected_ids), generator=g) - 0.5).tolist(),
            )
            for p in pairs
        ]

    table = rewards(text_pairs(tiny_tokenizer(), 8, seed=5))
    ref = _grads(loss, 8, 1, lambda _: table, extra)
    for per_device, accum in [(2, 4), (1, 8)]:
        for a, b in zip(ref, _grads(loss, per_device, accum, lambda _: table, extra)):
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), (loss, per_device, accum, (a - b).abs().max())


def test_train_dpo_treg_step0_and_cache(tmp_path):
    tok = tiny_tokenizer()
    pairs = text_pairs(tok, 8)
    res = train(
        _cfg(tmp_path, max_steps=1, per_device_batch_size=8, learning_rate=0.0, alpha=0.0),
        tiny_causal_lm(tok),
        tok,
        pairs,
    )
    m = res.metrics[0]
    assert m["treg/w"] == 0.5 and m["loss"] == pytest.approx(math.log(2), abs=1e-6)  # alpha=0, policy = reference
    assert -0.5 < m["treg/rhat_mean_chosen"] < 0.5 and 0 <= m["treg/rhat_pos_frac"] <= 1
    assert not res.treg_cache_hit
    res2 = train(
        _cfg(tmp_path / "b", max_steps=2, per_device_batch_size=4, lora=True, learning_rate=1e-2),
        tiny_causal_lm(tok),
        tok,
        pairs,
    )
    assert res2.treg_cache_hit and res2.metrics[0]["treg/w"] == 0.5 and math.isfinite(res2.metrics[-1]["loss"])
    logged = json.loads((tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()[0])
    for k in (
        "treg/w",
        "treg/reg_chosen",
        "treg/reg_rejected",
        "treg/rhat_mean_chosen",
        "treg/rhat_mean_rejected",
        "treg/rhat_pos_frac",
    ):
        assert k in logged


@pytest.mark.parametrize("loss", ["dpo_treg", "simpo_treg"])
def test_cli_train_treg(tmp_path, loss):
    from alignlab.cli import main

    model_dir = save_tiny(tmp_path / "tiny_model")
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(6)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            f"model={model_dir}",
            f"data={data}",
            "lora=false",
            "max_steps=2",
            "report_to=none",
            "per_device_batch_size=3",
            "gradient_checkpointing=false",
            f"output_dir={out}",
            f"loss={loss}",
            "alpha=0.25",
            "treg_template=generation",
        ]
    )
    assert rc == 0
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < first["treg/w"] < 1 and (loss != "dpo_treg" or first["treg/w"] == 0.5)
