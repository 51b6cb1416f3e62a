"""Log-prob convention (docs/conventions.md L2, L6.1-L6.2) and the SequenceScorer fast path."""

import torch
from tiny_models import tiny_causal_lm, tiny_tokenizer

from alignlab.data.collate import pad_sequences
from alignlab.models.scorer import SequenceScorer, position_ids_from_mask
from alignlab.ops.logprobs import completion_logps


def test_toy_convention():
    logits = torch.tensor([[[0, 0, 0], [2, 0, 0], [0, 1, 0], [5, 5, 5]]], dtype=torch.float32)
    ids = torch.tensor([[0, 1, 0, 1]])
    comp = torch.tensor([[False, False, True, True]])
    out = completion_logps(logits, ids, comp, return_tokens=True)
    assert torch.allclose(out.token[0, 1:], torch.tensor([-0.239545, -0.551445]), atol=1e-6)
    assert abs(out.sum.item() - (-0.790989)) < 1e-6
    assert abs(out.mean.item() - (-0.395495)) < 1e-6
    assert out.count.item() == 2
    # the two classic bugs give different numbers
    wrong_prompt = completion_logps(logits, ids, torch.tensor([[False, True, True, True]])).sum.item()
    assert abs(wrong_prompt - (-1.889602)) < 1e-6
    no_shift = torch.log_softmax(logits[0], -1)[[2, 3], [0, 1]].sum().item()
    assert abs(no_shift - (-2.650057)) < 1e-6


def test_empty_completion_is_finite():
    logits = torch.randn(1, 4, 5)
    out = completion_logps(logits, torch.tensor([[1, 2, 3, 4]]), torch.zeros(1, 4, dtype=torch.bool))
    assert out.sum.item() == 0.0 and out.count.item() == 0 and torch.isfinite(out.mean).all()


def _tiny():
    tok = tiny_tokenizer()
    return tok, tiny_causal_lm(tok, seed=1)


def test_fast_path_equals_full_logits():
    tok, model = _tiny()
    prompts = [
        tok("hello there", add_special_tokens=False)["input_ids"],
        tok("a", add_special_tokens=False)["input_ids"],
    ]
    comps = [
        tok(" general kenobi", add_special_tokens=False)["input_ids"],
        tok(" bb", add_special_tokens=False)["input_ids"],
    ]
    ids, attn, comp = pad_sequences(prompts, comps, tok.pad_token_id)
    scorer = SequenceScorer(model)
    assert scorer.fast
    fast = scorer(ids, attn, comp, return_tokens=True)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn)).logits
    slow = completion_logps(logits, ids, comp, return_tokens=True)
    assert torch.allclose(fast.sum, slow.sum, atol=1e-5)
    assert torch.allclose(fast.token, slow.token, atol=1e-5)
    assert torch.equal(fast.count, slow.count)


def test_padding_invariance_left_and_right():
    tok, model = _tiny()
    scorer = SequenceScorer(model)
    p = tok("the prompt", add_special_tokens=False)["input_ids"]
    c = tok(" the answer", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids, attn, comp = pad_sequences([p], [c], tok.pad_token_id)
    base = scorer(ids, attn, comp).sum
    for n in range(0, 8):
        pad = torch.full((1, n), tok.pad_token_id)
        z = torch.zeros((1, n), dtype=torch.long)
        right = scorer(torch.cat([ids, pad], 1), torch.cat([attn, z], 1), torch.cat([comp, z.bool()], 1)).sum
        left = scorer(torch.cat([pad, ids], 1), torch.cat([z, attn], 1), torch.cat([z.bool(), comp], 1)).sum
        assert abs(right.item() - base.item()) < 1e-6 and abs(left.item() - base.item()) < 1e-5
