"""The AI judge (alignlab.judge): the two-order protocol (exact under swap), the cache, the local log-prob backend
on a tiny model and the HTTP backend against a stand-in server (retries, timeouts, bad bodies, rate limit)."""

import json
import math
import random
import time

import pytest
import torch
from judge_server import StandIn, chat, completion
from tiny_models import tiny_causal_lm, tiny_tokenizer

from alignlab.judge.agreement import agreement_stats
from alignlab.judge.cache import JudgeCache
from alignlab.judge.http import HTTPJudge, HTTPSettings, JudgeEndpointError, RateLimiter
from alignlab.judge.local import HFJudge, answer_token_ids
from alignlab.judge.protocol import Judge, combine
from alignlab.judge.templates import TEMPLATES, JudgeTemplate, JudgeTemplateError, load_template, parse_answer
from alignlab.judge.types import Pair, PairVerdict, Readout

BASE = TEMPLATES["base"]


class FakeBackend:
    """P("1") from a fixed function of the texts shown; counts what it is asked."""

    judge_id = "fake"

    def __init__(self, fn=None, fail=()):
        self.fn = fn or (lambda body: random.Random(body).random())
        self.fail, self.asked = set(fail), []

    def readout(self, bodies, template):
        self.asked += list(bodies)
        return [
            Readout(None, error="timeout", detail="x") if any(f in b for f in self.fail) else Readout(self.fn(b))
            for b in bodies
        ]

    def counters(self):
        return {"requests": len(self.asked)}


# ------------------------------------------------------------------ the protocol


def test_spec_example_and_exact_swap():
    """rlhf.md §7.14: P("1") = 0.8 in (A, B), P("2") = 0.6 in (B, A) -> p = 0.7, consistent; swapped -> 1 - p."""
    ab, ba = Readout(0.8), Readout(0.4)  # P("2") in (B, A) = 1 - 0.4 = 0.6
    v = combine(ab, ba)
    assert v.p == pytest.approx(0.7, abs=1e-15) and v.pass1 == 0.8 and v.pass2 == pytest.approx(0.6, abs=1e-15)
    assert v.consistent is True and v.tie is False
    swapped = combine(ba, ab)
    assert swapped.p == 1.0 - v.p and v.flipped().p == swapped.p


def test_swap_is_exact_and_averaging_holds_for_many_values():
    rng = random.Random(0)
    values = [rng.random() for _ in range(2000)] + [0.0, 1.0, 0.5, 0.5 - 1e-17, 0.5 + 2**-40, 1e-300, 1 - 2**-53]
    for _ in range(4000):
        p1, q1 = rng.choice(values), rng.choice(values)
        ab, ba = Readout(p1), Readout(q1)
        v, w = combine(ab, ba), combine(ba, ab)
        assert w.p == 1.0 - v.p, (p1, q1)  # bit for bit
        assert v.p == 1.0 - w.p
        assert v.consistent == w.consistent and v.tie == w.tie
        assert v.p == pytest.approx((p1 + (1 - q1)) / 2, abs=1e-15)  # the average of the two passes


def test_tie_rule_and_position_consistency():
    assert combine(Readout(0.52), Readout(0.5)).tie is True  # p = 0.51
    assert combine(Readout(0.6), Readout(0.5)).tie is False  # p = 0.55: not below 0.05 from 0.5
    assert combine(Readout(0.7), Readout(0.5), tie_threshold=0.2).tie is True
    first_always = combine(Readout(0.9), Readout(0.9))  # both orders say "1": pure position bias
    assert first_always.consistent is False and first_always.p == pytest.approx(0.5)
    assert combine(Readout(0.3), Readout(0.8)).consistent is True  # both prefer B
    assert combine(Readout(0.5), Readout(0.2)).consistent is False  # pass 1 has no preference
    skipped = combine(Readout(0.9), Readout(None, error="timeout"))
    assert skipped.skip == "timeout" and skipped.p is None


def test_judge_swapped_pairs_give_exactly_one_minus_p():
    pairs = [Pair(f"ctx {i}", f"answer a{i}", f"answer b{i}") for i in range(20)]
    j = Judge(FakeBackend(), BASE)
    out = j.judge_pairs(pairs)
    back = j.judge_pairs([Pair(p.context, p.b, p.a) for p in pairs])
    assert all(b.p == 1.0 - a.p for a, b in zip(out, back))
    assert j.stats.requested == 80 and j.stats.cache_hits == 0  # no cache: each call asks its 2 x 20 orders


def test_cache_hit_asks_nothing_and_corrupt_lines_are_counted_and_reasked(tmp_path):
    path = tmp_path / "c" / "judge_cache.jsonl"
    pairs = [Pair("ctx", "one", "two"), Pair("ctx", "three", "four"), Pair("ctx", "one", "two")]  # a duplicate
    first = FakeBackend()
    v1 = Judge(first, BASE, JudgeCache(path)).judge_pairs(pairs)
    assert len(first.asked) == 4  # duplicate pair and its orders asked once
    again = FakeBackend()
    j2 = Judge(again, BASE, JudgeCache(path))
    assert [v.p for v in j2.judge_pairs(pairs)] == [v.p for v in v1]
    assert again.asked == [] and j2.stats.cache_hits == 4
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # a half-written line
    lines[2] = json.dumps(json.loads(lines[2]) | {"p1": 1.5})  # parses, but is not an answer
    path.write_text("\n".join(lines))  # and no final newline
    third = FakeBackend()
    j3 = Judge(third, BASE, JudgeCache(path))
    assert [v.p for v in j3.judge_pairs(pairs)] == [v.p for v in v1]  # re-asked, same answers
    assert len(third.asked) == 2 and j3.stats.cache_corrupt_lines == 2 and j3.stats.requested == 2
    fourth = FakeBackend()
    j4 = Judge(fourth, BASE, JudgeCache(path))
    j4.judge_pairs(pairs)
    assert fourth.asked == [] and j4.stats.cache_corrupt_lines == 2  # re-asked answers appended on lines of their own


def test_cache_key_changes_with_template_and_judge(tmp_path):
    path = tmp_path / "judge_cache.jsonl"
    pairs = [Pair("ctx", "one", "two")]
    Judge(FakeBackend(), BASE, JudgeCache(path)).judge_pairs(pairs)
    other = FakeBackend()
    Judge(other, TEMPLATES["detailed"], JudgeCache(path)).judge_pairs(pairs)
    assert len(other.asked) == 2
    renamed = FakeBackend()
    renamed.judge_id = "another judge"
    Judge(renamed, BASE, JudgeCache(path)).judge_pairs(pairs)
    assert len(renamed.asked) == 2


def test_failures_are_counted_skips_and_never_cached(tmp_path):
    path = tmp_path / "judge_cache.jsonl"
    pairs = [Pair("ctx", "fine", "also fine"), Pair("ctx", "BOOM", "other")]
    j = Judge(FakeBackend(fail=["BOOM"]), BASE, JudgeCache(path))
    out = j.judge_pairs(pairs)
    assert out[0].skip is None and out[1].skip == "timeout" and out[1].p is None
    assert j.stats.failed == {"timeout": 2} and j.stats.skipped_pairs == {"timeout": 1}
    again = FakeBackend()
    Judge(again, BASE, JudgeCache(path)).judge_pairs(pairs)
    assert len(again.asked) == 2  # the failed orders are asked again


# ------------------------------------------------------------------ templates and answers


def test_templates_validate_and_load_from_file(tmp_path):
    for t in TEMPLATES.values():
        t.validate()
        assert "{" not in t.render("c", "r1", "r2") and t.ending == "Preferred Response="
    assert TEMPLATES["cot"].cot and not TEMPLATES["base"].cot
    assert len({t.digest() for t in TEMPLATES.values()}) == 3
    with pytest.raises(JudgeTemplateError, match="missing"):
        JudgeTemplate("x", "{context} {response_1}").validate()
    f = tmp_path / "t.yaml"
    f.write_text("body: 'C: {context}\\nA: {response_1}\\nB: {response_2}\\n'\nending: 'Answer='\n")
    t = load_template(str(f))
    assert t.ending == "Answer=" and t.digest() != BASE.digest()
    with pytest.raises(JudgeTemplateError, match="unknown judge template"):
        load_template("nope")


@pytest.mark.parametrize(
    "text,want",
    [("1", 1), (" 2", 2), ("**2**", 2), ("(1) because", 1), ("Preferred Response=2", 2), ("I'd say 1 ... =2", None)],
)
def test_parse_answer(text, want):
    assert parse_answer(text) == want
    for bad in ("12", "3", "both", "", "Response 1 and 2"):
        assert parse_answer(bad) is None
    assert parse_answer("1. Harmless... Preferred Response= 2", require_ending=True) == 2
    assert parse_answer("1. Harmless", require_ending=True) is None


# ------------------------------------------------------------------ the local log-prob backend


@pytest.fixture(scope="module")
def tiny_judge():
    tok = tiny_tokenizer()
    return tok, tiny_causal_lm(tok, seed=3)


def test_local_readout_is_a_softmax_over_1_and_2_and_batching_does_not_change_it(tiny_judge):
    tok, model = tiny_judge
    bodies = [BASE.render("Human: hi" * k, "a" * (k + 1), "bb") for k in range(1, 6)]
    one = HFJudge(model, tok, "tiny", batch_size=1).readout(bodies, BASE)
    many = HFJudge(model, tok, "tiny", batch_size=8).readout(bodies, BASE)
    for a, b in zip(one, many):
        assert a.mode == "logprobs" and 0.0 < a.p1 < 1.0 and abs(a.p1 - b.p1) < 1e-6
    j = HFJudge(model, tok, "tiny")
    id1, id2, sep = j.answer_tokens(BASE.ending)
    assert (id1, id2, sep) == (ord("1"), ord("2"), "")  # byte tokenizer: "1" right after "="
    ids = j.encode(j.head(bodies[0]) + BASE.ending)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    want = torch.softmax(logits[[id1, id2]].double(), -1)[0].item()
    assert one[0].p1 == pytest.approx(want, abs=1e-6)


def test_local_judge_swap_exact_too_long_and_cot(tiny_judge, tmp_path):
    tok, model = tiny_judge
    pairs = [Pair("Human: what is 2+2?", "4", "five"), Pair("Human: hello", "hi there", "go away")]
    j = Judge(HFJudge(model, tok, "tiny", batch_size=4), BASE)
    v = j.judge_pairs(pairs)
    w = j.judge_pairs([Pair(p.context, p.b, p.a) for p in pairs])
    assert all(b.p == 1.0 - a.p for a, b in zip(v, w))
    short = Judge(HFJudge(model, tok, "tiny", max_length=50), BASE).judge_pairs(pairs[:1])
    assert short[0].skip == "too_long"
    cot = HFJudge(model, tok, "tiny", cot_max_new_tokens=3)
    r = cot.readout([TEMPLATES["cot"].render("Human: hi", "a", "b")], TEMPLATES["cot"])
    assert 0.0 < r[0].p1 < 1.0 and cot.counters()["generated_rationales"] == 1


class WordTokenizer:
    """Whitespace words as tokens (so "Response=1" is ONE token): a tokenizer that merges the answer digit."""

    def __init__(self, whole: bool = False):
        self.vocab, self.whole = {}, whole

    def __call__(self, text, add_special_tokens=False):
        words = [text] if self.whole else text.split(" ")
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in words]}


def test_answer_tokens_no_space_then_space_then_refused():
    vocab = WordTokenizer()
    id1, id2, sep = answer_token_ids(vocab, "Preferred Response=")  # "=1" merges: " 1" is one token after it
    assert sep == " " and (id1, id2) == (vocab.vocab["1"], vocab.vocab["2"])
    with pytest.raises(JudgeTemplateError, match="one token"):
        answer_token_ids(WordTokenizer(whole=True), "Preferred Response=")


def test_answer_tokens_of_the_builtin_judge_tokenizer():
    """SmolLM2: digits are single tokens, "=1" is ["=", "1"], " 1" is [" ", "1"]: "1" is read right after "="."""
    from alignlab.models.loading import alias_dir

    path = alias_dir("smollm2-135m-instruct")
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"the built-in model cache is not built ({path}); `alignlab setup` builds it")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)  # the tokenizer only: the model is never loaded here
    id1, id2, sep = answer_token_ids(tok, BASE.ending)
    assert sep == "" and tok.decode([id1]) == "1" and tok.decode([id2]) == "2"
    assert tok(" 1", add_special_tokens=False)["input_ids"][-1] == id1  # " 1" = [" ", "1"]: two tokens


# ------------------------------------------------------------------ the HTTP backend against a stand-in server


def _settings(url, **kw):
    base = dict(model="judge-x", api="completions", timeout_s=2.0, max_retries=2, backoff_s=0.01, requests_per_second=0)
    return HTTPSettings(url, **(base | kw))


def test_http_completions_logprobs_auto_probe_and_key(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")

    def script(path, payload):
        if path.endswith("/models"):
            return 200, {"data": [{"id": "judge-x"}]}, 0
        return 200, completion({"1": 0.6, " 2": 0.3, "The": 0.1}), 0

    with StandIn(script) as srv:
        s = HTTPSettings(srv.url, api="auto", api_key_env="JUDGE_TEST_KEY", requests_per_second=0)
        judge = HTTPJudge.connect(s)
        assert judge.api == "completions" and judge.model == "judge-x" and "sk-secret" not in judge.judge_id
        v = Judge(judge, BASE).judge_pairs([Pair("ctx", "A text", "B text")])[0]
        assert v.pass1 == pytest.approx(2 / 3) and v.pass2 == pytest.approx(1 / 3)
        assert v.p == pytest.approx(0.5) and v.consistent is False  # always "1": position bias, no preference
        req = srv.posts("/completions")[-1]
        assert req["payload"]["max_tokens"] == 1 and req["payload"]["temperature"] == 0
        assert req["payload"]["logprobs"] == 5 and req["payload"]["prompt"].endswith("\nPreferred Response=")
        assert req["headers"]["Authorization"] == "Bearer sk-secret-123"


def test_http_llamacpp_logprob_layout():
    body = {"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "2", "logprob": math.log(0.75)}]}]}}]}
    body["choices"][0]["logprobs"]["content"][0]["top_logprobs"].append({"token": "1", "logprob": math.log(0.25)})
    with StandIn(lambda path, payload: (200, body, 0)) as srv:
        r = HTTPJudge(_settings(srv.url), "completions", "judge-x").readout(["q"], BASE)[0]
    assert r.p1 == pytest.approx(0.25) and r.answer == "2"


def test_http_falls_back_to_chat_and_parses():
    def script(path, payload):
        if path.endswith("/completions") and "chat" not in path:
            return 404, {"error": "not found"}, 0
        return 200, chat("Response 2 is kinder. Preferred Response=2"), 0

    with StandIn(script) as srv:
        judge = HTTPJudge.connect(_settings(srv.url, api="auto"))
        assert judge.api == "chat" and ":chat:" in judge.judge_id
        r = judge.readout(["q"], BASE)[0]
        assert r.p1 == 0.0 and r.mode == "parse" and r.answer == "2"
        assert srv.posts("/chat/completions")[0]["payload"]["temperature"] == 0


def test_http_bad_answers_are_retried_then_a_counted_skip():
    with StandIn(lambda path, payload: (200, chat("I cannot decide."), 0)) as srv:
        judge = HTTPJudge(_settings(srv.url, api="chat"), "chat", "judge-x")
        r = judge.readout(["q"], BASE)[0]
        assert r.p1 is None and r.error == "bad_answer" and len(srv.requests) == 3
        assert judge.counters()["retries/bad_answer"] == 2


def test_http_timeouts_are_retried_then_skipped():
    with StandIn(lambda path, payload: (200, completion({"1": 0.5, "2": 0.5}), 0.6)) as srv:
        judge = HTTPJudge(_settings(srv.url, timeout_s=0.15, max_retries=1), "completions", "judge-x")
        t0 = time.monotonic()
        r = judge.readout(["q"], BASE)[0]
        assert r.error == "timeout" and judge.counters()["retries/timeout"] == 1 and time.monotonic() - t0 < 1.5


def test_http_5xx_then_success_with_backoff():
    calls = []

    def script(path, payload):
        calls.append(path)
        return (503, {"error": "busy"}, 0) if len(calls) < 3 else (200, completion({"1": 0.2, "2": 0.8}), 0)

    slept = []
    with StandIn(script) as srv:
        judge = HTTPJudge(_settings(srv.url, backoff_s=0.5), "completions", "judge-x", sleep=slept.append)
        r = judge.readout(["q"], BASE)[0]
    assert r.p1 == pytest.approx(0.2) and judge.counters()["retries/http_error"] == 2
    assert slept == [0.5, 1.0]  # exponential backoff (no rate limit in this test)


def test_http_malformed_bodies_are_counted_skips():
    bodies = iter([b"not json {", {"choices": []}, {"choices": [{"text": "1", "logprobs": {"top_logprobs": 7}}]}])
    with StandIn(lambda path, payload: (200, next(bodies), 0)) as srv:
        judge = HTTPJudge(_settings(srv.url), "completions", "judge-x")
        r = judge.readout(["q"], BASE)[0]
    assert r.error == "malformed_body" and judge.counters()["retries/malformed_body"] == 2


def test_http_refused_key_stops_and_never_shows_the_key(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-456")
    with StandIn(lambda path, payload: (401, {"error": "bad key"}, 0)) as srv:
        judge = HTTPJudge(_settings(srv.url, api_key_env="JUDGE_TEST_KEY"), "completions", "judge-x")
        with pytest.raises(JudgeEndpointError, match="401") as e:
            judge.readout(["q"], BASE)
    assert "sk-secret" not in str(e.value)


def test_http_rate_limit_is_honoured():
    with StandIn(lambda path, payload: (200, completion({"1": 0.7, "2": 0.3}), 0)) as srv:
        judge = HTTPJudge(_settings(srv.url, requests_per_second=20), "completions", "judge-x")
        judge.readout(["a", "b", "c", "d", "e"], BASE)
        times = [r["t"] for r in srv.requests]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) == 5 and min(gaps) > 0.04 and times[-1] - times[0] >= 0.19


def test_rate_limiter_spacing_with_a_fake_clock():
    now, slept = [0.0], []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        lim.wait()
    assert slept == [0.25, 0.25]
    now[0] += 10.0
    lim.wait()
    assert slept == [0.25, 0.25]  # an idle gap is not saved up into a burst beyond one request


# The HTTP judge against a real llama.cpp server: tests/test_judge_server_real.py (make test-judge-server).


# ------------------------------------------------------------------ agreement numbers


def test_agreement_numbers_on_a_hand_made_set():
    v = [
        PairVerdict(0.8, 0.9, 0.7, True, False),  # A preferred, consistent
        PairVerdict(0.3, 0.4, 0.2, True, False),  # B preferred
        PairVerdict(0.52, 0.9, 0.14, False, True),  # a tie; pass 1 prefers A, pass 2 prefers B (first shown both)
        PairVerdict(None, None, None, None, None, skip="timeout"),
    ]
    s = agreement_stats(v, [True, True, False, True], chosen_chars=[10, 5, 3, 1], rejected_chars=[5, 5, 9, 1])
    assert (s["pairs"], s["labeled"], s["skipped"]) == (4, 3, 1)
    # oriented to the data's chosen: 0.8 (agree), 0.3 (disagree), 1 - 0.52 = 0.48 (disagree)
    assert s["agreement"] == pytest.approx(1 / 3) and s["agreement_non_tie"] == pytest.approx(0.5)
    assert s["agreement_pass1"] == pytest.approx(1 / 3)  # pass 1: 0.9 yes, 0.4 no, 1 - 0.9 no
    assert s["position_consistency"] == pytest.approx(2 / 3) and s["tie_rate"] == pytest.approx(1 / 3)
    assert s["soft_agreement"] == pytest.approx((0.8 + 0.3 + 0.48) / 3)
    assert s["longer_wins"] == pytest.approx((1 + 0.5 + 0) / 3) and s["shorter_wins"] == pytest.approx(0.5)
    # first shown preferred: pair 1 (A, then A), pair 2 (B, then B), pair 3 (A, then B): 1+0, 0+1, 1+1 of 6
    assert s["first_position_rate"] == pytest.approx(4 / 6)
    assert s["agreement_se"] == pytest.approx(math.sqrt((1 / 3) * (2 / 3) / 3))


def test_http_start_up_retries_then_stops_with_one_error():
    calls = []

    def flaky(path, payload):
        calls.append(path)
        if len(calls) == 1:
            return 503, {"error": "warming up"}, 0
        return 200, completion({"1": 0.5, "2": 0.5}), 0

    with StandIn(flaky) as srv:
        assert HTTPJudge.connect(_settings(srv.url, api="auto")).api == "completions"
    with StandIn(lambda path, payload: (405, {"error": "use chat"}, 0)) as srv:
        assert HTTPJudge.connect(_settings(srv.url, api="auto")).api == "chat"
    with StandIn(lambda path, payload: (503, {"error": "down"}, 0)) as srv:
        with pytest.raises(JudgeEndpointError, match="503"):
            HTTPJudge.connect(_settings(srv.url, api="auto", max_retries=1))


def test_http_chain_of_thought_rationale_then_readout():
    def script(path, payload):
        if payload["max_tokens"] > 1:
            return 200, {"choices": [{"text": " Response 1 is polite."}]}, 0
        return 200, completion({"1": 0.75, "2": 0.25}), 0

    cot = TEMPLATES["cot"]
    with StandIn(script) as srv:
        r = HTTPJudge(_settings(srv.url), "completions", "judge-x").readout([cot.render("c", "a", "b")], cot)[0]
        gen, read = srv.posts("/completions")
    assert gen["payload"]["prompt"].endswith("Rationale:") and gen["payload"]["temperature"] == 0
    assert read["payload"]["prompt"].endswith("Rationale: Response 1 is polite.\nPreferred Response=")
    assert r.p1 == pytest.approx(0.75) and r.rationale == "Response 1 is polite."
