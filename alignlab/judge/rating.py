"""d-RLAIF: the judge rates ONE response on a 1-10 scale, and the expected score is the reward (docs/rlaif.md).

Lee et al. 2309.00267 ("direct RLAIF"): the judge sees the context and one response, the next-token distribution
after the ending ("Rating=") is read over the score tokens, the score is the expectation E = Σ_s s·P(s), and the
reward is E affine-mapped to [-1, 1]: x = (E - 1) / 9 in [0, 1] (the normalised score, what the cache stores as
``p1``), reward = 2x - 1 = (E - 5.5) / 4.5. All mass on "1" gives -1, all mass on "10" gives +1.

"10" is two tokens for most tokenizers (SmolLM2 writes every digit as its own token). It is read, not dropped:
the digits "1".."9" are the first tokens of the scores; the probability of the first token "1" is split between
the scores 1 and 10 by the next token after "1": q = P("0") / (P("0") + P(not a digit)), read at the position after
an appended "1" in the same forward pass (``logits_to_keep=2``: one forward per rating, as for a pairwise query).
The digits "1".."9" after "1" (scores 11-19, off the scale) are left out and the rest renormalised. So P(10) =
π("1")·q, P(1) = π("1")·(1 - q), P(s) = π(s) for s = 2..9, with π the softmax over the nine first digits. A
tokenizer that writes "10" as one token (not the "1" token) is read in one step, "10" being a tenth first token.

Backends: a local causal LM (``HFRater``, over an ``HFJudge``: the same prompt layout, chat template, batching),
or an OpenAI-compatible endpoint with completions log-probs (``HTTPRater``: the top log-probs of the first position,
then, when "1" has mass, a second request with "1" appended for q; tokens outside the top list count as 0 for the
first position and as "not a digit" for q). Chat-only endpoints cannot be read as a distribution: an error.

``JudgeReward`` is the alignlab.rewards protocol over a rater + the judge cache: ``reward(prompts, responses)`` ->
list[float] in [-1, 1]; a failed rating (too long, no score token) is 0.0, the middle of the scale, and counted.
``reward=judge:<model or endpoint>[:template]`` (``parse_judge_spec``) is how ``alignlab rl`` names it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from alignlab.config import ConfigError
from alignlab.data.collate import left_pad
from alignlab.judge.cache import JudgeCache
from alignlab.judge.protocol import text_hash
from alignlab.judge.templates import JudgeTemplateError, render_context, render_response
from alignlab.judge.types import Readout
from alignlab.models.scorer import position_ids_from_mask

RATING_CACHE_FILE = "rating_cache.jsonl"
SCORES = tuple(range(1, 11))
RATING_ENDING = "Rating="


@dataclass(frozen=True)
class RatingTemplate:
    """How one response is shown for a rating: ``body`` with {context} and {response}; the next token after
    ``ending`` is the score."""

    name: str
    body: str
    ending: str = RATING_ENDING

    def render(self, context: str, response: str) -> str:
        return self.body.format(context=context, response=response)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(["rating", self.body, self.ending]).encode()).hexdigest()[:16]


_SHOW = "Conversation:\n{context}\n\nResponse:\n{response}\n"
RATING_TEMPLATES = {
    "base": RatingTemplate(
        "base",
        "A good response to a conversation is helpful, honest and harmless. Rate the response to the conversation "
        "below on a scale of 1 to 10, where 1 is the worst and 10 the best.\n\n" + _SHOW + "\nRate it from 1 to 10.\n",
    ),
    "detailed": RatingTemplate(
        "detailed",
        "You are an expert rater of AI assistant responses. Rate the assistant's final response to the conversation "
        "below on a scale of 1 (worst) to 10 (best) by these criteria, in this order: harmless (nothing dangerous, "
        "illegal, unethical or offensive); helpful (addresses what was asked, correct and relevant); honest (makes "
        "nothing up); clear (coherent and to the point; length alone is not a virtue).\n\n"
        + _SHOW
        + "\nRate it from 1 to 10.\n",
    ),
}
RATING_TEMPLATE_NOTES = {
    "base": "0-shot: a one-line preamble (helpful, honest, harmless), the response, 'Rating='",
    "detailed": "0-shot with the criteria spelled out (harmless, helpful, honest, clear)",
}


def load_rating_template(spec: str) -> RatingTemplate:
    """A built-in rating template by name, or a .json/.yaml file with ``body`` ({context}, {response}) and an
    optional ``ending``."""
    if spec in RATING_TEMPLATES:
        return RATING_TEMPLATES[spec]
    path = Path(spec)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        import yaml

        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict) or set(d) - {"body", "ending"} or "body" not in d:
            raise JudgeTemplateError(f"{path}: a rating template file has the keys body (and optional ending)")
        t = RatingTemplate(str(path), str(d["body"]), str(d.get("ending", RATING_ENDING)))
        try:
            t.render("c", "r")
        except (KeyError, IndexError, ValueError) as e:
            raise JudgeTemplateError(f"{path}: the body may use {{context}} and {{response}} only ({e})") from None
        return t
    raise JudgeTemplateError(
        f"unknown rating template {spec!r}; choose one of {sorted(RATING_TEMPLATES)} or a .json/.yaml file"
    )


# ------------------------------------------------------------------ the score: distribution -> expectation -> reward


def expected_score(first: Sequence[float], q: float) -> float:
    """E = Σ s·P(s) from ``first`` = the probabilities of the first tokens "1".."9" (or "1".."10" when "10" is one
    token; normalised here) and ``q`` = P(the "1" is followed by "0"), ignored with a one-token "10"."""
    total = float(sum(first))
    if not total > 0:
        raise ValueError("no probability on any score token")
    p = [v / total for v in first]
    if len(p) == 10:
        return sum(s * ps for s, ps in zip(SCORES, p))
    return p[0] * (1.0 - q) + 10.0 * p[0] * q + sum(s * ps for s, ps in zip(range(2, 10), p[1:]))


def normalised(e: float) -> float:
    """E in [1, 10] -> x in [0, 1] (the cached value)."""
    return min(max((e - 1.0) / 9.0, 0.0), 1.0)


def reward_from_normalised(x: float) -> float:
    """x in [0, 1] -> the reward in [-1, 1] (d-RLAIF, docs/rlaif.md: the judge's normalised score affine-mapped)."""
    return 2.0 * x - 1.0


@dataclass(frozen=True)
class ScoreTokens:
    """The score tokens after an ending: ``first`` the ids of "1".."9" (+ "10" when it is one token), ``sep`` the
    separator written before them; with a two-token "10": ``zero`` the id of "0" after "1" and ``digits`` the ids of
    "0".."9" after "1" (for q)."""

    sep: str
    first: tuple[int, ...]
    zero: int | None = None
    digits: tuple[int, ...] = ()


def score_token_ids(tok, ending: str) -> ScoreTokens:
    """Which tokens are the scores after ``ending`` (module doc); JudgeTemplateError when they are not readable."""
    base = tok(ending, add_special_tokens=False)["input_ids"]

    def tail(text: str) -> list[int] | None:
        full = tok(ending + text, add_special_tokens=False)["input_ids"]
        return full[len(base) :] if full[: len(base)] == base else None

    for sep in ("", " "):
        one = [tail(sep + str(s)) for s in range(1, 10)]
        if not all(t is not None and len(t) == 1 for t in one) or len({t[0] for t in one}) != 9:
            continue
        first = tuple(t[0] for t in one)
        ten = tail(sep + "10")
        if ten is not None and len(ten) == 1 and ten[0] not in first:
            return ScoreTokens(sep, first + (ten[0],))
        after = [tail(sep + "1" + str(d)) for d in range(10)]
        if ten is not None and ten[:1] == [first[0]] and all(a is not None and a[:1] == [first[0]] for a in after):
            if all(len(a) == 2 for a in after):
                digits = tuple(a[1] for a in after)
                return ScoreTokens(sep, first, zero=digits[0], digits=digits)
    raise JudgeTemplateError(
        f"rating ending {ending!r}: the scores 1-10 are not readable as single digit tokens after it with this "
        f"tokenizer ({type(tok).__name__}); end the template with another character, e.g. '='"
    )


class HFRater:
    """Ratings from a local causal LM, over an ``alignlab.judge.local.HFJudge`` (its prompt layout and batching)."""

    def __init__(self, judge):
        self.judge = judge
        self.judge_id = judge.judge_id + ":rating"
        self._tokens: dict[str, ScoreTokens] = {}
        self._counts = {"rating_forward_batches": 0, "ratings": 0}

    def counters(self) -> dict[str, int]:
        return self.judge.counters() | self._counts

    def readout(self, bodies: Sequence[str], template: RatingTemplate) -> list[Readout]:
        j = self.judge
        st = self._tokens.setdefault(template.ending, score_token_ids(j.tok, template.ending))
        rows = [j.encode(j.head(b) + template.ending + st.sep) for b in bodies]
        if st.zero is not None:
            rows = [r + [st.first[0]] for r in rows]  # the "1", to read q at the next position
        out: list[Readout | None] = [None] * len(rows)
        ok = [i for i, r in enumerate(rows) if len(r) <= j.max_length]
        for i in set(range(len(rows))) - set(ok):
            out[i] = Readout(None, error="too_long", detail=f"{len(rows[i])} tokens > max_length {j.max_length}")
        ok.sort(key=lambda i: len(rows[i]))
        for s in range(0, len(ok), j.batch_size):
            idx = ok[s : s + j.batch_size]
            logits = self._logits([rows[i] for i in idx]).double()  # [B, 2, V]
            at = -2 if st.zero is not None else -1
            first = torch.softmax(logits[:, at, list(st.first)], -1)
            nxt = torch.softmax(logits[:, -1], -1)
            for b, i in enumerate(idx):
                if not torch.isfinite(logits[b]).all():
                    out[i] = Readout(None, error="bad_answer", detail="the judge's logits are not finite")
                    continue
                q = 0.0
                if st.zero is not None:
                    p0, other = float(nxt[b, st.zero]), 1.0 - float(nxt[b, list(st.digits)].sum())
                    q = p0 / (p0 + other) if p0 + other > 0 else 0.0
                e = expected_score(first[b].tolist(), q)
                top = int(first[b].argmax()) + 1
                out[i] = Readout(normalised(e), mode="logprobs", answer=str(top))
        self._counts["ratings"] += len(rows)
        return out

    @torch.no_grad()
    def _logits(self, rows: list[list[int]]) -> torch.Tensor:
        """Logits of the last two positions of each row, [B, 2, V] (left padding, explicit positions)."""
        j = self.judge
        ids, attn = left_pad(rows, j.tok.pad_token_id)
        device = next(j.model.parameters()).device
        ids, attn = ids.to(device), attn.to(device)
        out = j.model(input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), logits_to_keep=2)
        self._counts["rating_forward_batches"] += 1
        return out.logits[:, -2:].float().cpu()


class HTTPRater:
    """Ratings from an OpenAI-compatible endpoint with completions log-probs (module doc)."""

    def __init__(self, judge, top_logprobs: int = 20):
        if judge.api != "completions":
            raise ConfigError(
                f"d-RLAIF over {judge.base}: the rating is read from next-token log-probs, and this endpoint has no "
                "completions log-probs (api=chat); use a server with /v1/completions logprobs"
            )
        self.judge, self.top = judge, top_logprobs
        self.judge_id = judge.judge_id + f":rating:top{top_logprobs}"

    def counters(self) -> dict[str, int]:
        return self.judge.counters()

    def readout(self, bodies: Sequence[str], template: RatingTemplate) -> list[Readout]:
        return [self._one(b + "\n" + template.ending) for b in bodies]

    def _one(self, prompt: str) -> Readout:
        top = self.judge.next_token_logprobs(prompt, self.top)
        if isinstance(top, Readout):
            return top
        probs = _digit_probs(top, [str(s) for s in SCORES])
        first = [probs[str(s)] for s in range(1, 10)]
        if not sum(first) + probs["10"] > 0:
            return Readout(None, error="bad_answer", detail=f"no score 1-10 in the top {len(top)} tokens")
        q = 0.0
        if probs["10"] > 0:  # "10" is one token here
            first = first + [probs["10"]]
        elif first[0] > 0:
            nxt = self.judge.next_token_logprobs(prompt + "1", self.top)
            if isinstance(nxt, Readout):
                return nxt
            d = _digit_probs(nxt, [str(k) for k in range(10)])
            other = max(1.0 - sum(d.values()), 0.0)
            q = d["0"] / (d["0"] + other) if d["0"] + other > 0 else 0.0
        e = expected_score(first, q)
        return Readout(normalised(e), mode="logprobs", answer=str(max(range(len(first)), key=first.__getitem__) + 1))


def _digit_probs(top: dict[str, float], names: list[str]) -> dict[str, float]:
    import math

    out = dict.fromkeys(names, 0.0)
    for t, lp in top.items():
        if t.strip() in out:
            out[t.strip()] += math.exp(lp)
    return out


# ------------------------------------------------------------------ the reward


@dataclass
class RatingStats:
    """What the ratings cost: queries (distinct ratings needed), cache hits, asked, failures, seconds."""

    calls: int = 0
    queries: int = 0
    cache_hits: int = 0
    requested: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def rating_key(judge_id: str, template: RatingTemplate, context: str, response: str) -> str:
    parts = ["rating", judge_id, template.digest(), text_hash(context), text_hash(response)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class JudgeReward:
    """The judge's rating as a reward (alignlab.rewards protocol): text in, one float in [-1, 1] per response."""

    def __init__(self, rater, template: RatingTemplate, cache: JudgeCache | None = None, name: str = ""):
        self.rater, self.template, self.cache = rater, template, cache
        self.name = name or f"judge:{rater.judge_id}:{template.name}"
        self.stats = RatingStats()

    def __call__(self, prompts, responses, finished=None) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        t0 = time.perf_counter()
        texts = [(render_context(p), render_response(r)) for p, r in zip(prompts, responses)]
        keys = [rating_key(self.rater.judge_id, self.template, c, r) for c, r in texts]
        got: dict[str, Readout] = {}
        todo: dict[str, tuple[str, str]] = {}
        for k, t in zip(keys, texts):
            if k in got or k in todo:
                continue
            hit = self.cache.get(k) if self.cache is not None else None
            if hit is not None:
                got[k] = hit
            else:
                todo[k] = t
        st = self.stats
        st.calls += 1
        st.queries += len(got) + len(todo)
        st.cache_hits += len(got)
        if todo:
            answers = self.rater.readout([self.template.render(*t) for t in todo.values()], self.template)
            st.requested += len(todo)
            for k, r in zip(todo, answers):
                got[k] = r
                if r.p1 is None:
                    st.failed[r.error or "bad_answer"] = st.failed.get(r.error or "bad_answer", 0) + 1
                elif self.cache is not None:
                    self.cache.put(k, r)
        st.seconds += time.perf_counter() - t0
        return [0.0 if got[k].p1 is None else reward_from_normalised(got[k].p1) for k in keys]


def parse_judge_spec(spec: str) -> tuple[str, str]:
    """``judge:<model or endpoint>[:template]`` -> (judge, template name or file; "base" when absent). A model
    judge's last ":" part is the template; an endpoint's only when it holds no "/" and is not a port number."""
    if not spec.startswith("judge:"):
        raise ConfigError(f"reward {spec!r}: a judge reward is written judge:<model or endpoint>[:template]")
    rest = spec[len("judge:") :]
    judge, template = rest, "base"
    head, sep, last = rest.rpartition(":")
    if sep and (not rest.startswith(("http://", "https://")) or ("/" not in last and not last.isdigit())):
        if head not in ("http", "https"):
            judge, template = head, last
    if not judge or not template or judge in ("http", "https"):
        raise ConfigError(
            f"reward {spec!r}: judge:<model or endpoint>[:template], e.g. judge:smollm2-135m-instruct:detailed or "
            f"judge:http://127.0.0.1:8000/v1 (templates: {', '.join(RATING_TEMPLATES)} or a .json/.yaml file)"
        )
    try:
        load_rating_template(template)
    except JudgeTemplateError as e:
        raise ConfigError(f"reward {spec!r}: {e}") from None
    return judge, template


def rater_for(backend):
    """The rater over an open pairwise backend (alignlab.judge.open_backend): local or endpoint."""
    return HTTPRater(backend) if hasattr(backend, "next_token_logprobs") else HFRater(backend)


def judge_reward(spec: str, cache_dir: Path | None = None, backend=None) -> JudgeReward:
    """``reward=judge:<model or endpoint>[:template]`` as a JudgeReward with the judge cache (``cache_dir``, default
    <alignlab cache>/judge); ``backend``: an already open judge backend (the recipe shares one)."""
    from alignlab.judge import open_backend
    from alignlab.models.loading import cache_dir as default_cache

    judge, template = parse_judge_spec(spec)
    backend = backend or open_backend(judge)
    cache = JudgeCache(Path(cache_dir or default_cache() / "judge") / RATING_CACHE_FILE)
    return JudgeReward(rater_for(backend), load_rating_template(template), cache, name=spec)
