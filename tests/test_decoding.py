"""Decoding loops on tiny models: reductions, caches and batching, stopping, costs, tokenizer round-trip and
bad input (docs/conventions.md D8 items 2, 3, 6, 8, 11-14; R11)."""

import pytest
import torch
from naive_tq import naive_greedy, naive_tq_direct
from tiny_models import tiny_causal_lm, tiny_tokenizer

from alignlab.decoding import decode, train_prefix_scorer
from alignlab.decoding.lm import LM
from alignlab.decoding.scores import bon_kl_bound
from alignlab.rewards import FunctionReward

PROMPTS = ["hello there", "what is up with you today, friend?", "a", "zz top"]


@pytest.fixture(scope="module")
def toy():
    tok = tiny_tokenizer()
    return tok, tiny_causal_lm(tok, seed=0), tiny_causal_lm(tok, seed=1)


def wiggly(p, r):
    """A reward with no structure the tiny models could share: depends on every character."""
    return sum((i + 1) * ord(c) for i, c in enumerate(r[-4:])) % 17 / 17.0 - 0.01 * len(r)


REW = FunctionReward(wiggly, "wiggly")


class Recorder:
    name = "recorder"

    def __init__(self, fn=wiggly):
        self.fn, self.calls = fn, []

    def __call__(self, prompts, responses, finished=None):
        self.calls.append((list(prompts), list(responses), list(finished)))
        return [self.fn(p, r) for p, r in zip(prompts, responses)]


def ids(outs):
    return [o.completion_ids for o in outs]


# ------------------------------------------------------------------------------- D8.2-D8.3 reductions


def test_zero_weight_and_k1_reduce_to_greedy(toy):
    tok, m, m2 = toy
    greedy = ids(decode(m, tok, PROMPTS, "greedy", max_new_tokens=8))
    assert ids(decode(m, tok, PROMPTS, "args", reward=REW, k=5, w=0.0, max_new_tokens=8)) == greedy
    assert (
        ids(decode(m, tok, PROMPTS, "tq-direct", reward=REW, rollout_model=m2, k=4, horizon=3, w=0.0, max_new_tokens=8))
        == greedy
    )
    for method, kw in [("args", {}), ("tq-direct", {"horizon": 2})]:
        assert (
            ids(decode(m, tok, PROMPTS, method, reward=REW, rollout_model=m2, k=1, w=50.0, max_new_tokens=8, **kw))
            == greedy
        )


def test_zero_weight_stochastic_equals_topk_sampling(toy):
    tok, m, m2 = toy
    topk = ids(decode(m, tok, PROMPTS, "sample", top_k=5, temperature=0.7, seed=3, max_new_tokens=8))
    for method, kw in [("args", {}), ("tq-direct", {"horizon": 2})]:
        got = decode(
            m,
            tok,
            PROMPTS,
            method,
            reward=REW,
            rollout_model=m2,
            k=5,
            w=0.0,
            greedy=False,
            temperature=0.7,
            seed=3,
            max_new_tokens=8,
            **kw,
        )
        assert ids(got) == topk


def test_best_of_one_equals_sampling(toy):
    tok, m, _ = toy
    s = decode(m, tok, PROMPTS, "sample", seed=5, max_new_tokens=8)
    b = decode(m, tok, PROMPTS, "best-of-n", reward=REW, n=1, seed=5, max_new_tokens=8)
    assert ids(s) == ids(b)
    assert all(o.kl == 0.0 for o in b)


def test_args_is_tq_with_zero_horizon(toy):
    tok, m, m2 = toy
    a = decode(m, tok, PROMPTS, "args", reward=REW, k=6, w=2.0, max_new_tokens=6)
    t = decode(m, tok, PROMPTS, "tq-direct", reward=REW, rollout_model=m2, k=6, w=2.0, horizon=0, max_new_tokens=6)
    assert ids(a) == ids(t)
    for oa, ot in zip(a, t):
        assert [s.scores for s in oa.steps] == [s.scores for s in ot.steps]


def test_reward_on_one_token_is_picked(toy):
    tok, m, m2 = toy
    target = ord("Q")
    rew = FunctionReward(lambda p, r: 1.0 if r.startswith("Q") else 0.0, "starts-with-Q")
    V = len(tok)
    for method, kw in [("args", {}), ("tq-direct", {"horizon": 2})]:
        outs = decode(m, tok, PROMPTS, method, reward=rew, rollout_model=m2, k=V, w=100.0, max_new_tokens=2, **kw)
        assert all(o.completion_ids[0] == target for o in outs)


def test_direct_q_equals_deterministic_rollout_reward(toy):
    tok, m, m2 = toy
    rec = Recorder()
    out = decode(m, tok, PROMPTS[:1], "tq-direct", reward=rec, rollout_model=m2, k=3, horizon=4, max_new_tokens=1)[0]
    step = out.steps[0]
    prompt_ids = out.prompt_ids
    for c, q in zip(step.candidates, step.q):
        seq = list(prompt_ids) + [c]
        lm = LM(m2, tok.pad_token_id)
        cont = []
        for _ in range(4):
            t = int(lm.prefill([seq + cont]).logits[0].argmax())
            cont.append(t)
            if t == tok.eos_token_id:
                break
        text = tok.decode([c] + cont, skip_special_tokens=True)
        assert q == pytest.approx(wiggly(PROMPTS[0], text), abs=1e-6)


# ------------------------------------------------------------------------------- D8.11 caches and batching


def test_cached_batched_equals_uncached_unbatched(toy):
    tok, m, m2 = toy
    ref = naive_greedy(m, tok, PROMPTS, 12)
    assert ids(decode(m, tok, PROMPTS, "greedy", max_new_tokens=12, batch_size=4)) == ref
    assert ids(decode(m, tok, PROMPTS, "greedy", max_new_tokens=12, batch_size=1)) == ref
    # TQ*: forked prefix caches + batched rollouts == re-encoding the prefix per rollout, one prompt at a time
    tq = decode(
        m, tok, PROMPTS, "tq-direct", reward=REW, rollout_model=m2, k=5, horizon=4, max_new_tokens=6, batch_size=4
    )
    assert ids(tq) == naive_tq_direct(m, tok, PROMPTS, REW, rollout_model=m2, k=5, horizon=4, max_new_tokens=6)
    # shared model (rollouts from the proposal model reuse its cache)
    tq_shared = decode(m, tok, PROMPTS, "tq-direct", reward=REW, rollout_model=m, k=5, horizon=4, max_new_tokens=6)
    assert ids(tq_shared) == naive_tq_direct(m, tok, PROMPTS, REW, rollout_model=m, k=5, horizon=4, max_new_tokens=6)
    # sampling methods: one random stream per prompt, so the grouping does not matter
    for method, kw in [("sample", {}), ("best-of-n", {"n": 3, "reward": REW}), ("linear", {"greedy": False})]:
        a = decode(m, tok, PROMPTS, method, max_new_tokens=8, batch_size=4, **kw)
        b = decode(m, tok, PROMPTS, method, max_new_tokens=8, batch_size=1, **kw)
        assert ids(a) == ids(b), method


def test_la_batched_equals_two_passes_and_reductions(toy):
    tok, m, _ = toy
    kw = dict(max_new_tokens=10, principle="Be brief.")
    a = decode(m, tok, PROMPTS, "linear", batched=True, **kw)
    b = decode(m, tok, PROMPTS, "linear", batched=False, **kw)
    assert ids(a) == ids(b)
    # no-cache recompute of both contexts at every step gives the same tokens
    from alignlab.decoding.la import la_contexts
    from alignlab.decoding.linear import la_select

    lm = LM(m, tok.pad_token_id)
    for p, o in zip(PROMPTS, a):
        c, y = la_contexts(tok, p, "Be brief."), []
        for _ in range(10):
            z0, zp = lm.prefill([c.plain + y]).logits, lm.prefill([c.principle + y]).logits
            y.append(int(la_select(z0, zp, 3.0, 0.5, 0.8, greedy=True)))
            if y[-1] == tok.eos_token_id:
                break
        assert y == o.completion_ids
    # ratio -1 = plain decoding (same temperature / nucleus machinery, principle ignored); empty principle too
    plain = ids(decode(m, tok, PROMPTS, "greedy", max_new_tokens=10))
    assert ids(decode(m, tok, PROMPTS, "linear", ratio=-1.0, top_p=1.0, max_new_tokens=10)) == plain
    assert ids(decode(m, tok, PROMPTS, "linear", principle="", top_p=1.0, max_new_tokens=10)) == plain
    # ratio 0 = decoding the principle context
    from alignlab.decoding.la import la_contexts

    msgs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS]
    assert (
        la_contexts(tok, PROMPTS[0], "Be brief.").principle
        == tok.apply_chat_template(msgs[0], add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    assert ids(decode(m, tok, PROMPTS, "linear", ratio=0.0, top_p=1.0, **kw)) == ids(
        decode(m, tok, msgs, "greedy", max_new_tokens=10)
    )


def test_la_contexts_differ_only_by_principle():
    from alignlab.decoding.la import la_contexts

    tok = tiny_tokenizer(default_system="You are a helpful assistant.")
    c = la_contexts(tok, "hi there", "Be safe.")
    from alignlab.data.tokenize import PairTokenizer

    assert c.plain == PairTokenizer(tok).prompt_ids("hi there")  # the default system prompt is kept
    assert c.split_tokenized
    n = len(c.principle) - len(c.plain)
    i = next(j for j in range(len(c.plain)) if c.plain[j] != c.principle[j])
    assert c.principle[:i] + c.principle[i + n :] == c.plain
    assert tok.decode(c.principle[i : i + n]) == " Be safe."


def test_rm_batched_scoring_equals_one_at_a_time():
    rm, rm_tok = _tiny_rm(add_bos=True)
    from alignlab.rewards import HFRewardModel

    prompts = ["p one", "prompt two is longer", "3"]
    responses = ["short", "a much longer response with words", ""]
    a = HFRewardModel(rm, rm_tok, batch_size=8)(prompts, responses)
    b = HFRewardModel(rm, rm_tok, batch_size=1)(prompts, responses)
    assert a == pytest.approx(b, abs=1e-5)


# ------------------------------------------------------------------------------- D8.12 stopping


def test_stopping_and_finished_rows(toy):
    tok, m, m2 = toy
    free = decode(m, tok, PROMPTS, "greedy", max_new_tokens=12)
    assert all(len(o.completion_ids) <= 12 for o in free)
    stop = free[1].completion_ids[3]
    got = decode(m, tok, PROMPTS, "greedy", max_new_tokens=12, stop_ids=[stop])
    o = got[1]
    assert o.finished and o.completion_ids == free[1].completion_ids[: o.completion_ids.index(stop) + 1]
    for g, f in zip(got, free):  # other rows are not affected, finished rows are not extended
        if stop in f.completion_ids:
            assert g.completion_ids == f.completion_ids[: f.completion_ids.index(stop) + 1] and g.finished
        else:
            assert g.completion_ids == f.completion_ids
    # no stop at all: exactly max_new_tokens
    nostop = decode(m, tok, PROMPTS, "greedy", max_new_tokens=7, stop_at_eos=False)
    assert all(len(o.completion_ids) == 7 and not o.finished for o in nostop)


def test_eos_candidate_has_zero_rollout_and_is_scored_finished(toy):
    tok, m, m2 = toy
    rec = Recorder()
    V = len(tok)  # k = V: EOS is always a candidate
    out = decode(m, tok, PROMPTS[:1], "tq-direct", reward=rec, rollout_model=m2, k=V, horizon=3, max_new_tokens=1)[0]
    prompts, responses, finished = rec.calls[0]
    eos_row = out.steps[0].candidates.index(tok.eos_token_id)
    assert responses[eos_row] == "" and finished[eos_row] is True  # EOS stripped, scored as finished
    assert out.cost.rollout_tokens <= (V - 1) * 3  # the EOS candidate got no rollout tokens


# ------------------------------------------------------------------------------- D8.13 tokenizer round-trip


def _tiny_rm(**tok_kw):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    rm_tok = tiny_tokenizer(**tok_kw)
    cfg = LlamaConfig(
        vocab_size=len(rm_tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=rm_tok.pad_token_id,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    return LlamaForSequenceClassification(cfg).eval(), rm_tok


@pytest.mark.parametrize(
    "variant", [dict(add_bos=True), dict(default_system="Judge fairly."), dict(with_bos=False), "no-template"]
)
def test_mismatched_rm_tokenizer_round_trip(toy, variant):
    from alignlab.rewards import HFRewardModel

    tok, m, _ = toy
    rm, rm_tok = _tiny_rm(**(variant if isinstance(variant, dict) else {}))
    if variant == "no-template":
        rm_tok.chat_template = None
    reward = HFRewardModel(rm, rm_tok)
    out = decode(m, tok, ["say something"], "args", reward=reward, k=3, max_new_tokens=4, stop_at_eos=False)[0]
    if variant == "no-template":
        responses = [s.split(reward.separator, 1)[1] for s in reward.last_texts]
    else:
        responses = [s.split("<|im_start|>assistant\n", 1)[1].rsplit("<|im_end|>", 1)[0] for s in reward.last_texts]
    # the RM saw exactly the decoded policy text of each candidate of the last step ...
    want = [tok.decode(out.completion_ids[:-1] + [c], skip_special_tokens=True) for c in out.steps[-1].candidates]
    assert responses == want and out.text in responses
    for r in responses:  # ... with no EOS / pad / turn markers leaking in
        assert "<|im_end|>" not in r and "<|im_start|>" not in r
    enc = reward.encode("say something", out.text)
    bos = rm_tok.bos_token_id
    if bos is not None:
        assert enc[:2] != [bos, bos]
    if variant == dict(add_bos=True):
        assert enc[0] == bos  # the RM's tokenizer wants a BOS: exactly one at the start


# ------------------------------------------------------------------------------- D8.14 cost counters


def test_cost_counters(toy):
    tok, m, m2 = toy
    kw = dict(max_new_tokens=5, stop_at_eos=False)
    k, M, H = 4, 3, 2
    tq = decode(
        m,
        tok,
        PROMPTS,
        "tq-direct",
        reward=REW,
        rollout_model=m2,
        k=k,
        rollouts=M,
        horizon=H,
        rollout_temperature=1.0,
        **kw,
    )
    for o in tq:
        T = o.cost.new_tokens
        assert T == 5 and o.cost.rollouts == k * M * T and o.cost.reward_calls == k * M * T
        assert o.cost.rollout_tokens <= k * M * H * T
    ind = decode(
        m,
        tok,
        PROMPTS,
        "tq-indirect",
        reward=REW,
        baseline_reward=FunctionReward(lambda p, r: 0.1 * len(r)),
        rollout_model=m2,
        k=k,
        rollouts=M,
        horizon=H,
        **kw,
    )
    assert all(o.cost.reward_calls == 2 * k * M * 5 for o in ind)
    assert all(len(s.ess) == k and all(1 - 1e-5 <= e <= M + 1e-5 for e in s.ess) for o in ind for s in o.steps)
    args = decode(m, tok, PROMPTS, "args", reward=REW, k=k, **kw)
    assert all(o.cost.reward_calls == k * 5 for o in args)
    la1 = decode(m, tok, PROMPTS, "linear", batched=True, **kw)
    la2 = decode(m, tok, PROMPTS, "linear", batched=False, **kw)
    # per generated token: 1 batched forward vs 2 (plus the prefill call(s); the last token needs no forward)
    assert all(o.cost.lm_calls == 1 + 4 for o in la1) and all(o.cost.lm_calls == 2 + 2 * 4 for o in la2)
    bon = decode(m, tok, PROMPTS, "best-of-n", reward=REW, n=5, **kw)
    assert all(o.cost.generations == 5 and o.cost.reward_calls == 5 for o in bon)
    assert all(o.kl == pytest.approx(bon_kl_bound(5)) and o.kl_kind.startswith("bound") for o in bon)
    g = decode(m, tok, PROMPTS, "greedy", **kw)
    assert all(o.cost.lm_calls == 5 and o.cost.reward_calls == 0 for o in g)


# ------------------------------------------------------------------------------- controlled decoding


def test_cd_tokenwise_and_blockwise(toy):
    tok, m, _ = toy
    rew = FunctionReward(lambda p, r: r.count("e") / max(len(r), 1), "e-share")
    scorer, rep = train_prefix_scorer(m, tok, PROMPTS * 2, rew, samples_per_prompt=3, max_new_tokens=6, seed=0)
    assert rep["sequences"] > 0 and rep["prefixes"] >= rep["sequences"]
    greedy = ids(decode(m, tok, PROMPTS, "greedy", max_new_tokens=6))
    assert ids(decode(m, tok, PROMPTS, "cd", scorer=scorer, w=0.0, k=5, max_new_tokens=6)) == greedy
    tw = decode(m, tok, PROMPTS, "cd", scorer=scorer, k=5, w=3.0, max_new_tokens=6)
    assert all(o.cost.scorer_calls == 5 * o.cost.new_tokens for o in tw if not o.finished)
    # q of the chosen candidate is the scorer's value of the extended prefix
    o = tw[0]
    lm = LM(m, tok.pad_token_id)
    h, attn = lm.hidden_states([o.prompt_ids + o.completion_ids[:1]])
    assert scorer(h[0, -1]).item() == pytest.approx(o.steps[0].q[o.steps[0].chosen], abs=1e-4)
    bw = decode(m, tok, PROMPTS, "cd", scorer=scorer, mode="blockwise", num_blocks=3, block_size=4, max_new_tokens=10)
    assert all(len(x.completion_ids) <= 10 for x in bw) and all(x.extra["blocks"] >= 1 for x in bw)


def test_prefix_scorer_save_load(tmp_path):
    from alignlab.decoding.cd import PrefixScorer
    from alignlab.decoding.cd_train import fit_scorer

    X, y = torch.randn(50, 8), torch.randn(50)
    s = fit_scorer(X, y, "linear")
    s2 = PrefixScorer.load(s.save(tmp_path / "sc"))
    assert torch.allclose(s(X), s2(X))
    # ridge with a tiny penalty recovers an exact linear target
    w = torch.randn(8)
    s3 = fit_scorer(X, X @ w + 0.5, "linear", l2=1e-9)
    assert torch.allclose(s3(X), X @ w + 0.5, atol=1e-3)


# ------------------------------------------------------------------------------- bad input


def test_bad_input_errors(toy):
    tok, m, m2 = toy
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decode(m, tok, ["ok", "  "], "greedy", max_new_tokens=2)
    with pytest.raises(ValueError, match="max_prompt_length"):
        decode(m, tok, ["x" * 3000], "greedy", max_new_tokens=2)
    with pytest.raises(ValueError, match="context"):
        decode(m, tok, ["x" * 2030], "greedy", max_new_tokens=50, max_prompt_length=100_000)
    with pytest.raises(ValueError, match="larger than the vocabulary"):
        decode(m, tok, ["ok"], "args", reward=REW, k=len(tok) + 1, max_new_tokens=2)
    with pytest.raises(ValueError, match="do not apply"):
        decode(m, tok, ["ok"], "greedy", horizon=3)
    with pytest.raises(ValueError, match="unknown method"):
        decode(m, tok, ["ok"], "beam")
    with pytest.raises(ValueError, match="rollout model"):
        decode(m, tok, ["ok"], "tq-direct", reward=REW, max_new_tokens=2)
    with pytest.raises(ValueError, match="baseline_reward"):
        decode(m, tok, ["ok"], "tq-indirect", reward=REW, rollout_model=m2, max_new_tokens=2)
    with pytest.raises(ValueError, match="scorer"):
        decode(m, tok, ["ok"], "cd", max_new_tokens=2)
    with pytest.raises(ValueError, match="scorer"):
        decode(m, tok, ["ok"], "cd", mode="blockwise", max_new_tokens=2)
    with pytest.raises(ValueError, match="do not apply"):  # beta is an indirect-only parameter
        decode(m, tok, ["ok"], "tq-direct", reward=REW, rollout_model=m2, beta=2.0, max_new_tokens=2)
    with pytest.raises(ValueError, match="needs a reward"):
        decode(m, tok, ["ok"], "args", max_new_tokens=2)


# ------------------------------------------------------------------------------- registry and module layering


def test_registry_one_entry_per_method():
    from alignlab.decoding import DECODING, METHODS, make_params
    from alignlab.decoding.registry import NEEDS
    from alignlab.decoding.types import CommonParams, TQIndirectParams

    assert METHODS == tuple(DECODING) and len(METHODS) == 8
    for name, spec in DECODING.items():
        assert spec.name == name and issubclass(spec.params, CommonParams) and callable(spec.run)
        assert spec.needs <= set(NEEDS) and spec.summary and "per" in spec.summary
    p = make_params("tq-indirect")
    assert isinstance(p, TQIndirectParams) and (p.horizon, p.rollouts, p.rollout_temperature) == (5, 4, 1.0)
    assert make_params("tq-direct").horizon == 20
    with pytest.raises(ValueError, match="unknown method"):
        make_params("beam")


def _decoding_imports():
    """{module: [(imported module, [names], function-level?)]} for alignlab/decoding/*.py."""
    import ast
    from pathlib import Path

    import alignlab.decoding as pkg

    out = {}
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        out[path.stem] = [
            (n.module, [a.name for a in n.names], id(n) not in top)
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
        ]
    return out


def test_decoding_imports_are_one_way_and_public():
    imports = _decoding_imports()
    for mod, imps in imports.items():
        for target, names, nested in imps:
            if target.startswith("alignlab."):
                assert not [n for n in names if n.startswith("_")], f"{mod} imports private names from {target}"
            if target.startswith("alignlab.decoding."):  # a lazy import inside the package would hide a circle
                assert not nested, f"{mod}: function-level import of {target}"
    # the package's modules form a DAG (no circle through any of them)
    deps = {
        m: {t.rsplit(".", 1)[1] for t, _, _ in imps if t.startswith("alignlab.decoding.")}
        for m, imps in imports.items()
        if m != "__init__"
    }
    state: dict = {}

    def visit(m, stack=()):
        assert state.get(m) != "open", f"import circle: {' -> '.join(stack + (m,))}"
        if state.get(m) is None:
            state[m] = "open"
            for d in deps.get(m, ()):
                visit(d, stack + (m,))
            state[m] = "done"

    for m in deps:
        visit(m)
    assert "api" not in deps["cd"] and "api" in deps["cd_train"]
