"""The CD prefix scorer's by-prompt validation (alignlab/decoding/cd_train.py) and the check that V_θ ranks the
candidates of one state (alignlab/eval/cd_ranking.py), on tiny random models."""

import math

import pytest
import torch
from tiny_models import tiny_causal_lm, tiny_tokenizer

from alignlab.data.tokenize import stop_ids
from alignlab.decoding import decode, train_prefix_scorer
from alignlab.decoding.cd_train import L2_GRID, prompt_folds, split_by_prompt
from alignlab.decoding.lm import LM
from alignlab.decoding.loops import make_generator
from alignlab.decoding.scores import topk_candidates
from alignlab.eval.cd_ranking import (
    StateCheck,
    cd_ranking_check,
    continue_rows,
    kendall_tau_b,
    ranking_stats,
    top1_agrees,
)
from alignlab.rewards import FunctionReward

PROMPTS = ["hello there", "what is up with you today, friend?", "a", "zz top", "why is the sky blue", "count to 3"]


@pytest.fixture(scope="module")
def toy():
    tok = tiny_tokenizer()
    return tok, tiny_causal_lm(tok, seed=0)


def wiggly(p, r):
    """Deterministic in the text, with no structure a random model could share."""
    return sum((i + 1) * ord(c) for i, c in enumerate(r)) % 17 / 17.0


# ------------------------------------------------------------------------------- Kendall tau-b (pure)


def test_kendall_tau_b_hand_values():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # pairs of ([1, 2, 2, 3], [1, 3, 2, 2]): (0,1) C, (0,2) C, (0,3) C, (1,2) tied in x, (1,3) D, (2,3) tied in y
    # -> (3 − 1) / sqrt((6 − 1)(6 − 1)) = 0.4
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    # ([1, 1, 2], [1, 2, 3]): (0,1) tied in x, (0,2) C, (1,2) C -> 2 / sqrt((3 − 1)·3)
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    # identical ties on both sides still give 1; a constant side is undefined
    assert kendall_tau_b([1, 1, 2], [5, 5, 9]) == pytest.approx(1.0)
    assert math.isnan(kendall_tau_b([1, 2, 3], [7, 7, 7])) and math.isnan(kendall_tau_b([1], [2]))
    # only ranks matter
    x, y = [0.3, -1.0, 2.0, 0.1, 5.0], [1.0, 2.0, 0.5, 0.2, 3.0]
    assert kendall_tau_b([math.exp(v) for v in x], y) == pytest.approx(kendall_tau_b(x, y))
    with pytest.raises(ValueError, match="lengths differ"):
        kendall_tau_b([1, 2], [1, 2, 3])


def test_ranking_stats_by_hand():
    ret = [[1.0, 1.0], [0.5, 0.5], [0.0, 0.0]]
    good = StateCheck(0, [], [7, 8, 9], [3.0, 2.0, 1.0], ret)  # tau +1, V's best is MC-best
    bad = StateCheck(1, [], [7, 8, 9], [1.0, 2.0, 3.0], ret)  # tau −1
    flat = StateCheck(2, [], [7, 8, 9], [1.0, 2.0, 3.0], [[0.2, 0.2]] * 3)  # MC constant: tau undefined
    res = ranking_stats([good, bad, flat], k=3, rollouts=2, seconds=1.0)
    assert res.states == 3 and res.tau_mean == pytest.approx(0.0) and res.tau_se == pytest.approx(1.0)
    assert res.share_positive == 0.5 and res.top1_agreement == 0.5 and res.tau_split_half == pytest.approx(1.0)
    assert math.isnan(res.taus[2]) and "2/3 states" in res.summary()
    assert top1_agrees([1.0, 5.0, 5.0], [0.0, 2.0, 2.0]) and not top1_agrees([9.0, 1.0], [0.0, 1.0])


# ------------------------------------------------------------------------------- by-prompt split


def test_split_by_prompt_keeps_prompts_whole():
    groups = ["a", "b", "a", "c", "d", "b", "e", "a", "c", "f"]
    tr, val = split_by_prompt(groups, 0.34, seed=3)
    assert sorted(tr + val) == list(range(len(groups)))
    assert not {groups[i] for i in tr} & {groups[i] for i in val}
    assert len({groups[i] for i in val}) == 2  # round(0.34 · 6 prompts)
    assert split_by_prompt(groups, 0.34, seed=3) == (tr, val)
    assert split_by_prompt(groups, 0.0)[1] == [] and split_by_prompt(["a", "a"], 0.5)[1] == []
    assert len({groups[i] for i in split_by_prompt(groups, 0.01)[1]}) == 1  # at least one prompt
    folds = prompt_folds(groups, 3, seed=1)
    assert sorted(i for f in folds for i in f) == list(range(len(groups)))
    assert all(not {groups[i] for i in f} & {groups[i] for i in g} for f in folds for g in folds if f is not g)


def test_train_prefix_scorer_holds_out_by_prompt(toy):
    tok, m = toy
    rew = FunctionReward(lambda p, r: r.count("e") / max(len(r), 1) + 0.1 * len(p), "e-share")
    prompts = PROMPTS + PROMPTS[:2]  # duplicates of a prompt are one group
    scorer, rep = train_prefix_scorer(m, tok, prompts, rew, samples_per_prompt=3, max_new_tokens=6, seed=0)
    assert rep["split"] == "by prompt" and rep["l2"] in L2_GRID and sorted(rep["r2_cv"]) == sorted(L2_GRID)
    assert rep["heldout_prompts"] == 1 and rep["train_prompts"] == 5
    held = set(rep["heldout_prompt_indices"])
    for i, j in [(0, 6), (1, 7)]:
        assert (i in held) == (j in held)
    assert {"sequences", "prefixes", "r2_heldout", "r2_train", "seconds"} <= set(rep)
    assert rep["prefixes"] >= rep["sequences"] > rep["heldout_sequences"] > 0
    _, rep_fixed = train_prefix_scorer(m, tok, prompts, rew, samples_per_prompt=3, max_new_tokens=6, l2=2.0)
    assert rep_fixed["l2"] == 2.0 and rep_fixed["r2_cv"] == {}


# ------------------------------------------------------------------------------- the ranking check


def test_continue_rows_respects_budgets_and_stops(toy):
    tok, m = toy
    lm = LM(m, tok.pad_token_id)
    st = lm.fork(lm.prefill([[104, 105]]), 5)
    budgets = [0, 1, 3, 6, 6]
    gens = [make_generator(0, 0, r) for r in range(5)]
    stops = torch.tensor(stop_ids(tok))
    toks, fin = continue_rows(lm, st, budgets, gens, stops)
    assert toks[0] == [] and not fin[0]
    for t, f, b in zip(toks, fin, budgets):
        assert len(t) <= b and (len(t) == b or f)
        assert f == (bool(t) and t[-1] in stops.tolist()) and not any(z in stops.tolist() for z in t[:-1])


def test_ranking_check_pairs_candidates_values_and_rollouts(toy):
    tok, m = toy
    log = []

    def recorder(prompts, texts, finished):
        """Each scored row gets its own id as reward, so a return can be traced to the text it scored."""
        log.extend(zip(prompts, texts, finished))
        return [float(len(log) - len(texts) + i) for i in range(len(texts))]

    scorer = torch.nn.Linear(m.config.hidden_size, 1)
    torch.nn.init.normal_(scorer.weight, generator=torch.Generator().manual_seed(0))
    value = lambda h: scorer(h).squeeze(-1)  # noqa: E731
    k, M, budget = 4, 4, 10
    res = cd_ranking_check(m, tok, value, PROMPTS, recorder, k=k, rollouts=M, max_new_tokens=budget, seed=1)
    assert (res.states, res.k, res.rollouts, len(res.per_state)) == (len(PROMPTS), k, M, len(PROMPTS))
    assert -1 <= res.tau_mean <= 1 and 0 <= res.share_positive <= 1 and 0 <= res.top1_agreement <= 1
    assert -1 <= res.tau_split_half <= 1 and res.seconds > 0 and "τ_b" in res.summary()
    lm, stops = LM(m, tok.pad_token_id), stop_ids(tok)
    traced = 0
    for s in res.per_state:
        assert s.prompt == res.per_state.index(s) and len(s.prefix) <= budget // 2
        ids = decode(m, tok, [PROMPTS[s.prompt]], "greedy", max_new_tokens=1)[0].prompt_ids
        # the candidates are the top-k of π_ref(·|s), and each value is V of that candidate's own prefix
        assert s.candidates == topk_candidates(lm.prefill([ids + s.prefix]).logits, k)[1][0].tolist()
        for z, v, rets in zip(s.candidates, s.values, s.returns):
            h, _ = lm.hidden_states([ids + s.prefix + [z]])
            assert v == pytest.approx(value(h[0, -1]).item(), abs=1e-4)
            # each return was scored on this prompt, on [prefix, z, rollout]; a stop-id candidate once, finished
            head = tok.decode(s.prefix + [z], skip_special_tokens=True)
            for r in rets:
                p, text, fin = log[int(r)]
                assert p == PROMPTS[s.prompt]
                if z in stops:
                    assert (text, fin) == (head, True) and len(set(rets)) == 1
                elif all(b < 128 for b in s.prefix + [z]):  # ASCII bytes decode one character each
                    assert text.startswith(head)
                    traced += 1
    assert traced >= 20
    again = cd_ranking_check(m, tok, value, PROMPTS, recorder, k=k, rollouts=M, max_new_tokens=budget, seed=1)
    assert [s.returns for s in again.per_state] != [s.returns for s in res.per_state]  # new ids: the log grew
    assert [s.prefix for s in again.per_state] == [s.prefix for s in res.per_state]  # same seed, same states


def test_oracle_scorer_ranks_perfectly(toy):
    """max_new_tokens=1: the state is the prompt and the return of z is r(z) exactly. A scorer that looks up
    r(z) from the hidden state after z gets tau = 1 and top-1 agreement 1; its negation tau = −1. A check
    that paired values, candidates and returns wrongly would not."""
    tok, m = toy
    lm, k = LM(m, tok.pad_token_id), 6
    stops = stop_ids(tok)
    rew = FunctionReward(wiggly, "wiggly")
    keys, vals = [], []
    for p in PROMPTS:
        ids = decode(m, tok, [p], "greedy", max_new_tokens=1)[0].prompt_ids
        for z in topk_candidates(lm.prefill([ids]).logits, k)[1][0].tolist():
            keys.append(lm.hidden_states([ids + [z]])[0][0, -1])
            vals.append(rew([p], [tok.decode([z], skip_special_tokens=True)], [z in stops])[0])
    table, table_v = torch.stack(keys), torch.tensor(vals)

    def oracle(h):
        return table_v[torch.cdist(h.float(), table).argmin(-1)]

    res = cd_ranking_check(m, tok, oracle, PROMPTS, rew, k=k, rollouts=2, max_new_tokens=1)
    defined = [t for t in res.taus if not math.isnan(t)]
    assert len(defined) >= len(PROMPTS) - 1
    assert res.tau_mean == pytest.approx(1.0) and res.top1_agreement == 1.0 and res.share_positive == 1.0
    neg = cd_ranking_check(m, tok, lambda h: -oracle(h), PROMPTS, rew, k=k, rollouts=2, max_new_tokens=1)
    assert neg.tau_mean == pytest.approx(-1.0) and neg.share_positive == 0.0


def test_constant_rewards_leave_r2_and_tau_undefined(toy):
    """A reward the tiny model never moves: R² has nothing to explain and τ_b has nothing to rank (NaN, not 1)."""
    tok, m = toy
    zero = FunctionReward(lambda p, r: 0.0, "zero")
    scorer, rep = train_prefix_scorer(m, tok, PROMPTS, zero, samples_per_prompt=2, max_new_tokens=4)
    assert math.isnan(rep["r2_heldout"]) and math.isnan(rep["r2_train"]) and rep["l2"] == 0.1
    res = cd_ranking_check(m, tok, scorer, PROMPTS[:2], zero, k=3, rollouts=2, max_new_tokens=4)
    assert res.states == 2 and all(math.isnan(t) for t in res.taus) and math.isnan(res.tau_mean)
    assert "0/2 states" in res.summary()
