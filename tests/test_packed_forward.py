"""Packed shared-prompt forward (docs/conventions.md L2.10): one row [prompt, chosen, rejected] per pair (or several
pairs per row) gives the two-row layout's log-probs, per-token log-probs and gradients within fp32 rounding, on tiny
models with different tokenizers / chat templates / architectures and on the real SmolLM2; the reference precompute
and T-REG's token rewards do not change; models that cannot take a 4-D mask fall back to two rows."""

import math

import pytest
import torch
from accelerate import Accelerator
from conftest import SHARED_DATA, make_pairs
from tiny_models import tiny_causal_lm, tiny_tokenizer, tiny_train_config

from alignlab.data.collate import collate_pairs
from alignlab.data.formats import PreferenceRecord
from alignlab.data.tokenize import tokenize_pairs
from alignlab.models.scorer import SequenceScorer, packing_support
from alignlab.ops.packing import PackSpec, pack_groups, pack_pairs
from alignlab.precompute.reference import compute_logps
from alignlab.recipes.train import TrainConfig, train
from alignlab.training.schedule import BatchPlan
from alignlab.training.step import accumulate_gradients

SPECS = [PackSpec("group"), PackSpec("dense", 3e-4), PackSpec("dense", 0.0)]
SPEC_IDS = ["group", "dense", "one-row"]
# fp32: sums of ~10-100 log-probs of magnitude ~1-10 agree to ~1e-6 relative; 1e-5 leaves room for summation order
REL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = REL) -> bool:
    """|a - b| <= rel x the largest magnitude (the sums' own scale; fp32 rounding is relative to it)."""
    scale = max(1.0, a.abs().max().item(), b.abs().max().item())
    return (a - b).abs().max().item() <= rel * scale


def _chat_pairs(tok, n=6, seed=0):
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    recs = [
        PreferenceRecord(
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 5))) + "?",
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 6))),
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 6))),
            f"toy[{i}]",
        )
        for i in range(n)
    ]
    pairs, _ = tokenize_pairs(recs, tok, 160, 96)
    return pairs


def _both(scorer, pairs, spec, return_tokens=True):
    b = collate_pairs(pairs, list(range(len(pairs))), scorer_pad(scorer), pack=spec)
    two = scorer(b.input_ids, b.attention_mask, b.completion_mask, return_tokens=return_tokens)
    packed = scorer(b.input_ids, b.attention_mask, b.completion_mask, return_tokens=return_tokens, packed=b.packed)
    return two, packed, b


def scorer_pad(scorer):
    return scorer.model.config.pad_token_id or 0


# ----------------------------------------------------------------------------- layout


def test_layout_mask_positions_and_scoring_indices():
    """One pair: prompt [10, 11, 12], chosen [20, 21], rejected [30, 31, 32] -> one row of 8 positions."""
    pk = pack_pairs([[10, 11, 12]], [[20, 21]], [[30, 31, 32]], pad_id=0, spec=PackSpec("group"))
    assert pk.input_ids.tolist() == [[10, 11, 12, 20, 21, 30, 31, 32]]  # branches in content order
    assert pk.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5]]  # rejected restarts at len(prompt)
    m = pk.attention_mask()[0, 0]
    assert m.dtype == torch.bool
    allowed = {(q, k) for q in range(8) for k in range(8) if m[q, k]}
    prompt, chosen, rejected = range(0, 3), range(3, 5), range(5, 8)
    for q in range(8):
        for k in range(8):
            want = k <= q and (k in prompt or (q in chosen) == (k in chosen) and (q in rejected) == (k in rejected))
            assert ((q, k) in allowed) == want, (q, k)
    # label shift: chosen [20, 21] scored at positions 2 (last prompt) and 3; rejected [30, 31, 32] at 2, 5, 6
    assert pk.pred_index.tolist() == [2, 3, 2, 5, 6]
    assert pk.targets.tolist() == [20, 21, 30, 31, 32]
    assert pk.seq_index.tolist() == [0, 0, 1, 1, 1]
    additive = pk.attention_mask(torch.float32)[0, 0]
    assert torch.equal(additive == 0, m) and additive.min().item() == torch.finfo(torch.float32).min


def test_layout_is_canonical_padding_counted_and_identical_branches_computed_once():
    prompts, chosen, rejected = (
        [[1, 2], [3, 4, 5, 6], [7]],
        [[8, 9], [10], [11, 12, 13]],
        [[14], [15, 16], [11, 12, 13]],
    )
    a = pack_pairs(prompts, chosen, rejected, 0, PackSpec("group"))
    perm = [2, 0, 1]
    b = pack_pairs(*([x[i] for i in perm] for x in (prompts, chosen, rejected)), 0, PackSpec("group"))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.position_ids, b.position_ids)
    # pair 2 has chosen == rejected: its row holds the prompt and ONE branch, both outputs read it
    assert a.real_positions == (2 + 2 + 1) + (4 + 1 + 2) + (1 + 3)
    assert a.positions == 3 * 7 and a.input_ids.shape == (3, 7)
    two_row_positions = 6 * max(len(p) + max(len(c), len(r)) for p, c, r in zip(prompts, chosen, rejected))
    assert a.positions < two_row_positions
    dense = pack_pairs(prompts, chosen, rejected, 0, PackSpec("dense", 0.0))
    assert dense.input_ids.shape[0] == 1 and dense.positions == dense.real_positions  # one row, no padding
    with pytest.raises(ValueError, match="output sequences"):
        pack_groups([([1], [([2], 1, 0)])], 2, 0)


# ----------------------------------------------------------------------------- numbers: tiny models


TOKENIZERS = {
    "chatml-no-bos": dict(),
    "auto-bos": dict(add_bos=True),
    "default-system": dict(default_system="You are a helpful assistant."),
    "no-bos-token": dict(with_bos=False),
}


@pytest.mark.parametrize("tok_kw", list(TOKENIZERS.values()), ids=list(TOKENIZERS))
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_packed_equals_two_rows_tiny(tok_kw, spec):
    tok = tiny_tokenizer(**tok_kw)
    scorer = SequenceScorer(tiny_causal_lm(tok, seed=5))
    assert scorer.pack_spec is not None, scorer.packing_note
    pairs = _chat_pairs(tok, 7, seed=1)
    with torch.no_grad():
        two, packed, b = _both(scorer, pairs, spec)
    assert torch.equal(two.count, packed.count)
    assert _close(two.sum, packed.sum), (two.sum - packed.sum).abs().max()
    assert _close(two.token, packed.token)
    assert torch.equal(packed.token != 0, b.completion_mask[:, 1:])  # prompt / pad positions exactly 0
    assert b.packed.positions < b.input_ids.numel()


@pytest.mark.parametrize("impl,rel", [("sdpa", 1e-12), ("eager", REL)])
def test_packed_equals_two_rows_float64_eager_and_sdpa(impl, rel):
    """In float64 (sdpa) the two layouts agree to ~1e-12: the packed forward is the same function, not an
    approximation. (transformers' eager attention takes its softmax in fp32, so there fp32 rounding remains.)"""
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=2).to(torch.float64)
    model.set_attn_implementation(impl)
    scorer = SequenceScorer(model)
    assert scorer.pack_spec is not None
    pairs = make_pairs(tok, 6, seed=3)
    with torch.no_grad():
        for spec in SPECS:
            two, packed, _ = _both(scorer, pairs, spec)
            assert _close(two.sum, packed.sum, rel) and _close(two.token, packed.token, rel)


def _tiny_other(arch: str, tok):
    """Other decoder families through the same check: Qwen2 (GQA, biases), GPT-2 (learned absolute positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if arch == "qwen2":
            cfg = Qwen2Config(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=512,
                tie_word_embeddings=False,
            )
            return Qwen2ForCausalLM(cfg).eval()
        cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=512)
        return GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_packed_equals_two_rows_other_architectures(arch):
    tok = tiny_tokenizer()
    scorer = SequenceScorer(_tiny_other(arch, tok))
    assert scorer.pack_spec is not None, scorer.packing_note
    with torch.no_grad():
        two, packed, _ = _both(scorer, _chat_pairs(tok, 5, seed=4), PackSpec("dense", 3e-4))
    assert _close(two.sum, packed.sum) and _close(two.token, packed.token)


def test_unsupported_models_fall_back_to_two_rows():
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    off = SequenceScorer(model, packing="off")
    assert off.pack_spec is None and "packing=off" in off.packing_note
    model.config._attn_implementation = "flash_attention_2"  # ignores a custom 4-D mask
    assert "flash_attention_2" in packing_support(model)
    assert SequenceScorer(model).pack_spec is None
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window = 16
    assert "sliding-window" in packing_support(model)
    with pytest.raises(ValueError, match="packing"):
        SequenceScorer(model, packing="sometimes")
    with pytest.raises(Exception, match="packing"):
        TrainConfig(packing="sometimes").validate()


# ----------------------------------------------------------------------------- gradients and the training step


def _step_grads(packing: str, loss: str = "dpo", lora: bool = False, dtype=torch.float32):
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3).to(dtype)
    if lora:
        from alignlab.models.lora import apply_lora

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same adapter in every call
            model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
            with torch.no_grad():  # a non-zero adapter, so that the gradients of A are not all 0
                for n, p in model.named_parameters():
                    if "lora_B" in n:
                        p.normal_(0, 0.05)
    pairs = make_pairs(tok, 8, seed=5)
    ref_model = tiny_causal_lm(tok, seed=4).to(dtype)
    ref = compute_logps(SequenceScorer(ref_model, packing="off"), pairs, list(range(8)), tok.pad_token_id, 8, "cpu")
    cfg = TrainConfig(loss=loss, per_device_batch_size=4, grad_accum=2, packing=packing)
    scorer = SequenceScorer(model, packing=packing)
    plan = BatchPlan(8, 4, 2, 1, 0, [len(p.prompt_ids) + len(p.chosen_ids) for p in pairs])
    counters = {}
    stats, bad = accumulate_gradients(
        cfg.step_settings(), Accelerator(cpu=True), scorer, plan, pairs, ref, tok.pad_token_id, 0, counters=counters
    )
    assert not bad
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, stats, counters


@pytest.mark.parametrize("packing", ["shared_prompt", "dense"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_one_step_gradients_equal(packing, lora):
    g_two, s_two, c_two = _step_grads("off", lora=lora)
    g_pk, s_pk, c_pk = _step_grads(packing, lora=lora)
    assert g_two.keys() == g_pk.keys() and len(g_two) > 0
    for n in g_two:
        assert _close(g_two[n], g_pk[n], 1e-4), (n, (g_two[n] - g_pk[n]).abs().max(), g_two[n].abs().max())
    assert _close(s_two.loss, s_pk.loss) and _close(s_two.chosen_logps, s_pk.chosen_logps)
    assert c_pk["pairs"] == c_two["pairs"] == 8
    assert c_pk["positions"] < c_two["positions"] and c_pk["padding"] / c_pk["positions"] < 0.5


def test_one_step_gradients_equal_float64_token_level():
    """dpo_treg asks for per-token log-probs. float64 model: the gradients agree to fp32 rounding only (~6e-8),
    because Llama's RMSNorm and the fp32 log-softmax (L2.5) round to fp32 in any model dtype, at different points
    (packed: the prompt's gradient from both branches is summed before the norm's backward)."""
    g_two, g_pk = _step_grads_treg("off"), _step_grads_treg("dense")
    for n in g_two:
        assert _close(g_two[n], g_pk[n], 1e-6), n


def _step_grads_treg(packing: str) -> dict[str, torch.Tensor]:
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3).to(torch.float64)
    pairs = make_pairs(tok, 4, seed=6)
    g = torch.Generator().manual_seed(0)

    def rhat(n: int) -> list[float]:
        return (torch.rand(n, generator=g) - 0.5).tolist()

    rewards = [(rhat(len(p.chosen_ids)), rhat(len(p.rejected_ids))) for p in pairs]
    ref = torch.randn(4, 2, generator=g, dtype=torch.float64) - 20
    settings = TrainConfig(loss="dpo_treg", per_device_batch_size=4, packing=packing).step_settings()
    scorer, plan = SequenceScorer(model, packing=packing), BatchPlan(4, 4, 1, 1, 0, [1] * 4)
    accumulate_gradients(settings, Accelerator(cpu=True), scorer, plan, pairs, ref, 257, 0, token_rewards=rewards)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_train_logs_padding_and_positions(tmp_path):
    """The run logs the forward's padding share and positions per pair (fewer packed); step 0 is policy ==
    reference in both layouts."""
    tok = tiny_tokenizer()
    pairs = make_pairs(tok, 8, seed=7)
    rows = {}
    for packing in ("off", "shared_prompt"):
        cfg = tiny_train_config(
            tmp_path / packing, max_steps=1, per_device_batch_size=4, learning_rate=0.0, packing=packing
        )
        rows[packing] = train(cfg, tiny_causal_lm(tok, seed=0), tok, pairs).metrics[0]
    for m in rows.values():  # policy == reference; reference batches (8 pairs) != training micro-batches (4)
        assert abs(m["rewards/chosen"]) < 1e-6 and m["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert 0.0 <= m["batch/padding_share"] < 1.0
    assert rows["shared_prompt"]["batch/positions_per_pair"] < rows["off"]["batch/positions_per_pair"]


# ----------------------------------------------------------------------------- precomputes unchanged


def test_reference_precompute_unchanged():
    tok = tiny_tokenizer(add_bos=True)
    model = tiny_causal_lm(tok, seed=8)
    pairs = _chat_pairs(tok, 9, seed=8)
    idx = list(range(len(pairs)))
    two = compute_logps(SequenceScorer(model, packing="off"), pairs, idx, tok.pad_token_id, 4, "cpu")
    for packing in ("shared_prompt", "dense"):
        packed = compute_logps(SequenceScorer(model, packing=packing), pairs, idx, tok.pad_token_id, 4, "cpu")
        assert _close(two, packed)
    # one row per pair: a pair's numbers do not depend on the batch it is in (bit-exact, as two rows)
    alone = compute_logps(SequenceScorer(model), pairs, [3], tok.pad_token_id, 1, "cpu")
    batched = compute_logps(SequenceScorer(model), pairs, idx, tok.pad_token_id, 9, "cpu")
    assert torch.equal(alone[0], batched[3])


def test_treg_token_rewards_unchanged():
    from alignlab.precompute import token_rewards as TR

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=1)
    pairs = _chat_pairs(tok, 5, seed=2)
    two = TR.compute_token_rewards(model, tok, pairs, "revision", 4, packing="off")
    for packing in ("shared_prompt", "dense"):
        packed = TR.compute_token_rewards(model, tok, pairs, "revision", 4, packing=packing)
        assert packed.forward_calls == two.forward_calls and packed.rows == two.rows
        for (a, b), (c, d) in zip(two.rewards, packed.rewards):
            assert len(a) == len(c) and len(b) == len(d)
            assert torch.allclose(torch.tensor(a + b), torch.tensor(c + d), atol=1e-6)


# ----------------------------------------------------------------------------- the real model


HH = SHARED_DATA / "hh_rlhf_harmless_base_test.jsonl.gz"


@pytest.mark.slow
@pytest.mark.skipif(not HH.is_file(), reason="HH data not found")
def test_packed_equals_two_rows_real_model():
    """SmolLM2-135M-Instruct (GQA 9/3 heads, sdpa), 4 HH pairs through its chat template: summed log-probs within
    1e-5 of their magnitude, per-token log-probs, and the gradient of a DPO loss on them."""
    from alignlab.data.formats import load_preference_records
    from alignlab.models.loading import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct", dtype="float32")
    records, _ = load_preference_records(str(HH), limit=4)
    pairs, _ = tokenize_pairs(records, tok, 128, 96)
    scorer = SequenceScorer(model)
    assert scorer.pack_spec is not None, scorer.packing_note
    b = collate_pairs(pairs, list(range(len(pairs))), tok.pad_token_id, pack=PackSpec("dense", 3e-4))
    grads = []
    for packed in (None, b.packed):
        model.zero_grad(set_to_none=True)
        kw = {"packed": packed} if packed is not None else {}
        out = scorer(b.input_ids, b.attention_mask, b.completion_mask, return_tokens=True, **kw)
        n = len(pairs)
        loss = -torch.nn.functional.logsigmoid(0.1 * (out.sum[:n] - out.sum[n:])).mean() + 1e-3 * out.sum.mean()
        loss.backward()
        grads.append((out, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    (two, g_two), (packed, g_pk) = grads
    assert torch.equal(two.count, packed.count)
    assert _close(two.sum.detach(), packed.sum.detach()), (two.sum - packed.sum).abs().max()
    assert _close(two.token.detach(), packed.token.detach())
    for k in ("model.layers.0.self_attn.q_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight"):
        assert _close(g_two[k], g_pk[k], 1e-4), k
    assert b.packed.positions < 0.7 * b.input_ids.numel()
