"""d-RLAIF (docs/rlaif.md): the judge's 1-10 rating of one response, its expectation mapped to [-1, 1], "10" read
as "1" then "0"; the JudgeReward adapter with the judge cache; `alignlab rl reward=judge:...` end to end (tiny)."""

import math

import pytest
import torch
from judge_server import StandIn, chat, completion
from tiny_models import save_tiny, tiny_causal_lm, tiny_tokenizer

from alignlab.config import ConfigError, build_config
from alignlab.judge.cache import JudgeCache
from alignlab.judge.http import HTTPJudge, HTTPSettings
from alignlab.judge.local import HFJudge
from alignlab.judge.rating import (
    RATING_TEMPLATES,
    HFRater,
    HTTPRater,
    JudgeReward,
    expected_score,
    normalised,
    parse_judge_spec,
    reward_from_normalised,
    score_token_ids,
)
from alignlab.recipes.rl import RLConfig, rl
from alignlab.rewards import Reward

BASE = RATING_TEMPLATES["base"]


def _reward(first, q=0.0):
    return reward_from_normalised(normalised(expected_score(first, q)))


def test_mapping_endpoints_and_monotonicity():
    one_hot = lambda s, n=9: [1.0 if i == s - 1 else 0.0 for i in range(n)]  # noqa: E731
    assert _reward(one_hot(1), q=0.0) == -1.0  # all mass on the lowest score
    assert _reward(one_hot(1), q=1.0) == 1.0  # all mass on "1" then "0": the highest
    assert _reward(one_hot(10, 10)) == 1.0 and _reward(one_hot(1, 10)) == -1.0  # a one-token "10"
    assert _reward([1.0] * 9, q=0.0) == pytest.approx((5.0 - 5.5) / 4.5)  # uniform over 1..9
    # moving probability up the scale (s -> s + 1, and 1 -> 10 through q) raises the reward, strictly
    seq = [_reward(one_hot(s)) for s in range(1, 10)] + [_reward(one_hot(1), q=1.0)]
    assert seq == sorted(seq) and len(set(seq)) == 10
    qs = [_reward([0.5, 0, 0, 0, 0.5, 0, 0, 0, 0], q) for q in (0.0, 0.25, 0.5, 1.0)]
    assert qs == sorted(qs) and len(set(qs)) == 4
    assert _reward([3.0, 1.0] + [0.0] * 7) == _reward([0.75, 0.25] + [0.0] * 7)  # normalised over the scores


def test_score_tokens_read_ten_as_one_then_zero():
    tok = tiny_tokenizer()  # byte-level: every digit its own token, "10" = "1", "0"
    st = score_token_ids(tok, "Rating=")
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert st.sep == "" and st.first == tuple(ids(str(d))[0] for d in range(1, 10)) and st.zero == ids("0")[0]


def _rater(seed=3):
    tok = tiny_tokenizer()
    return HFRater(HFJudge(tiny_causal_lm(tok, seed=seed), tok, "tiny", batch_size=2))


def test_local_readout_endpoints_through_the_logits(monkeypatch):
    """The readout path with controlled logits: first digit at the position after the ending, P("0") after "1"."""
    rater = _rater()
    st = score_token_ids(rater.judge.tok, BASE.ending)
    V = len(rater.judge.tok)

    def fake(first_id, next_id):
        def logits(rows):
            x = torch.zeros(len(rows), 2, V)
            x[:, 0, first_id] = 50.0
            x[:, 1, next_id] = 50.0
            return x

        return logits

    newline = rater.judge.tok("\n", add_special_tokens=False)["input_ids"][0]
    cases = [(st.first[0], newline, -1.0), (st.first[0], st.zero, 1.0), (st.first[4], newline, (5 - 5.5) / 4.5)]
    for first_id, next_id, want in cases:
        monkeypatch.setattr(rater, "_logits", fake(first_id, next_id))
        r = rater.readout(["some question"], BASE)[0]
        assert reward_from_normalised(r.p1) == pytest.approx(want, abs=1e-12)


def test_local_rating_is_batch_invariant_and_in_range():
    rater = _rater()
    bodies = [BASE.render("Human: hi", "Hello there!"), BASE.render("Human: 2+2?", "4"), BASE.render("x", "y z")]
    together = [r.p1 for r in rater.readout(bodies, BASE)]
    alone = [rater.readout([b], BASE)[0].p1 for b in bodies]
    assert together == pytest.approx(alone, abs=1e-6) and all(0.0 <= p <= 1.0 for p in together)
    assert len(set(together)) == 3  # the random judge does tell them apart


def test_judge_reward_uses_the_cache(tmp_path):
    rater = _rater()
    path = tmp_path / "rating_cache.jsonl"
    reward = JudgeReward(rater, BASE, JudgeCache(path))
    assert isinstance(reward, Reward)
    prompts, responses = ["hi", "hi", "2+2?"], ["Hello!", "Hello!", "4"]
    first = reward(prompts, responses)
    assert reward.stats.requested == 2 and reward.stats.cache_hits == 0 and first[0] == first[1]
    assert all(-1.0 <= v <= 1.0 for v in first)
    again = JudgeReward(rater, BASE, JudgeCache(path))  # a later run: everything from the file
    assert again(prompts, responses) == first
    assert again.stats.requested == 0 and again.stats.cache_hits == 2
    other = JudgeReward(rater, RATING_TEMPLATES["detailed"], JudgeCache(path))  # another template: asked anew
    other(prompts[:1], responses[:1])
    assert other.stats.requested == 1


def test_failed_rating_is_the_middle_and_counted(tmp_path):
    tok = tiny_tokenizer()
    rater = HFRater(HFJudge(tiny_causal_lm(tok, seed=3), tok, "tiny", max_length=20))
    reward = JudgeReward(rater, BASE, JudgeCache(tmp_path / "c.jsonl"))
    assert reward(["a long conversation"], ["a long response"]) == [0.0]
    assert reward.stats.failed == {"too_long": 1} and len(reward.cache) == 0


def test_http_rating_reads_the_top_logprobs_then_the_zero():
    def script(path, payload):
        if path.endswith("/models"):
            return 200, {"data": [{"id": "judge-x"}]}, 0
        if payload["prompt"].endswith("Rating=1"):
            return 200, completion({"0": 0.5, "\n": 0.25, "5": 0.25}), 0  # q = 0.5 / 0.75
        return 200, completion({"1": 0.25, " 5": 0.5, "The": 0.25}), 0

    with StandIn(script) as srv:
        judge = HTTPJudge(HTTPSettings(srv.url, requests_per_second=0), "completions", "judge-x")
        r = HTTPRater(judge).readout([BASE.render("c", "r")], BASE)[0]
        q = 0.5 / 0.75
        e = (1 / 3) * (1 - q) + 10 * (1 / 3) * q + 5 * (2 / 3)
        assert r.p1 == pytest.approx((e - 1) / 9) and len(srv.posts("/completions")) == 2
        assert srv.posts("/completions")[0]["payload"]["logprobs"] == 20
    with StandIn(lambda path, payload: (200, chat("7"), 0)) as srv:
        with pytest.raises(ConfigError, match="log-probs"):
            HTTPRater(HTTPJudge(HTTPSettings(srv.url), "chat", "judge-x"))


def test_judge_spec_parsing_and_errors():
    assert parse_judge_spec("judge:smollm2-135m-instruct") == ("smollm2-135m-instruct", "base")
    assert parse_judge_spec("judge:smollm2-135m-instruct:detailed") == ("smollm2-135m-instruct", "detailed")
    assert parse_judge_spec("judge:http://127.0.0.1:8000/v1") == ("http://127.0.0.1:8000/v1", "base")
    assert parse_judge_spec("judge:http://127.0.0.1:8000") == ("http://127.0.0.1:8000", "base")
    assert parse_judge_spec("judge:http://h:8000/v1:detailed") == ("http://h:8000/v1", "detailed")
    for bad in ("judge:", "judge::base", "judge:model:nosuch", "judge:http://h:8000/v1:nosuch"):
        with pytest.raises(ConfigError, match="judge"):
            parse_judge_spec(bad)
    with pytest.raises(ConfigError, match="nosuch"):  # the rl config fails before any model loads
        build_config(RLConfig, None, ["reward=judge:smollm2-135m-instruct:nosuch"])


def test_rl_two_steps_with_the_judge_reward(tmp_path):
    """`alignlab rl reward=judge:<tiny model>`: the spec is resolved by the recipe, the rewards are the judge's
    ratings in [-1, 1] (gold tracked beside them), and the cache answers a repeated run."""
    judge_dir = save_tiny(tmp_path / "judge", seed=5)
    tok = tiny_tokenizer()

    def run(out):
        torch.manual_seed(0)
        cfg = RLConfig(
            model="tiny",
            prompts="task:train",
            limit=4,
            reward=f"judge:{judge_dir}",
            prompts_per_step=2,
            max_steps=2,
            max_new_tokens=6,
            per_device_batch_size=2,
            output_dir=str(tmp_path / out),
            report_to=[],
            seed=1,
        )
        return rl(cfg, model=tiny_causal_lm(tok), tokenizer=tok)

    res = run("rl")
    assert res.steps == 2 and len(res.metrics) == 2
    for m in res.metrics:
        assert -1.0 <= m["reward"] <= 1.0 and math.isfinite(m["gold"]) and m["reward_std"] > 0
    assert (tmp_path / "rl" / "config.yaml").read_text().count("judge:") == 1
    again = run("rl2")  # the same rollouts (same seeds): every rating from the cache, the same rewards
    assert [m["reward"] for m in again.metrics] == [m["reward"] for m in res.metrics]
