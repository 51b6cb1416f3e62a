"""The gold reward: the transparent "true" reward of the embedded default task (spec: docs/gold_reward.md).

gold-v2 (the default, ``GoldReward()``)::

    total = 0.35 relevance + 0.30 substance + 0.15 length + 0.20 completion
            - 0.50 repetition - 0.30 copy - 0.50 boilerplate

on_topic    clip((cos(e(prompt), e(response)) - 0.20) / 0.50, 0, 1), e = all-MiniLM-L6-v2
relevance   on_topic * (1 - copied)          (no credit for the words copied from the prompt)
substance   on_topic * min(1, distinct content-word stems of the response absent from the prompt / 12)
length      1 inside [25, 70] words; n/25 below; linear to 0 at 130 words above (fires within 128 tokens)
completion  0.5 * finished + 0.5 * ends_sentence  (finished=None: 1 if ends_sentence else 0)
repetition  1 - distinct word 3-grams / word 3-grams  (0 below 4 words)
copy        max(0, (copied - 0.25) / 0.75), copied = share of response words in a 3-word run found in the prompt
boilerplate min(1, 0.5 * number of refusal / AI-disclaimer patterns found)

gold-v1 (``GoldReward(version="v1")``, unchanged) is 0.50 relevance (plain mapped cosine, hi = 0.90)
+ 0.25 length (zero at 175 words) + 0.25 completion - 0.50 repetition - 0.30 boilerplate. It paid an
echo of the prompt more than a real answer; v2 exists to close that (the exploit list is in the docs).

Empty responses score exactly 0 on every term (total 0.0) in both versions.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.task.gold_terms import (  # noqa: F401  (re-exported: the public term functions)
    BOILERPLATE_V1,
    BOILERPLATE_V2,
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

# Every constant of each version; weights are the ``w_*`` keys, in the order terms are summed.
VERSIONS: dict[str, dict] = {
    "v1": dict(
        w_relevance=0.50,
        w_length=0.25,
        w_completion=0.25,
        w_repetition=0.50,
        w_boilerplate=0.30,
        rel_lo=0.10,
        rel_hi=0.90,
        len_lo=25,
        len_hi=70,
        len_zero=175.0,
    ),
    "v2": dict(
        w_relevance=0.35,
        w_substance=0.30,
        w_length=0.15,
        w_completion=0.20,
        w_repetition=0.50,
        w_copy=0.30,
        w_boilerplate=0.50,
        rel_lo=0.20,
        rel_hi=0.70,
        len_lo=25,
        len_hi=70,
        len_zero=130.0,
        sub_words=12,
        copy_span=3,
        copy_allow=0.25,
    ),
}
DEFAULT_VERSION = "v2"
# Penalties have positive weights and are subtracted from the total.
PENALTIES = frozenset({"repetition", "copy", "boilerplate"})


@dataclass
class GoldScore:
    """Per-response scores, every list of length N.

    ``values[term]`` holds the raw term values (each in [0, 1]; readable as attributes too, e.g.
    ``s.relevance``), ``weights`` the reward's weights (penalties positive, subtracted). ``terms()`` gives
    the signed contributions ``±weight * value``, which sum to ``total``: a per-term breakdown that needs
    no knowledge of the term names or signs.
    """

    total: list[float]
    words: list[int]
    values: dict[str, list[float]]
    weights: dict[str, float]

    def terms(self) -> dict[str, list[float]]:
        """Signed contributions per term: ``+w*v`` for rewards, ``-w*v`` for penalties."""
        # 0.0 - w*v rather than -w*v: an absent penalty reads 0.0, not -0.0.
        return {k: [0.0 - w * v if k in PENALTIES else w * v for v in self.values[k]] for k, w in self.weights.items()}

    def __getattr__(self, name: str):
        # Only reached for names that are not real fields; guard against recursion during copy/pickle.
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(name)


class GoldReward:
    """The gold reward, ``gold-v2`` by default (``version="v1"`` for the original).

    ``embedder`` is anything with ``embed(list[str]) -> [N, D]`` unit-norm rows; by default the shared
    MiniLM embedder, loaded lazily on the first ``score`` call. Keyword arguments override the constants
    of ``VERSIONS[version]`` (``w_length=0.0``, ``rel_hi=0.85``, ...); a name the version lacks is an error.
    """

    name = "gold-" + DEFAULT_VERSION

    def __init__(self, embedder=None, *, version: str = DEFAULT_VERSION, **params):
        if version not in VERSIONS:
            raise ValueError(f"unknown gold version {version!r}; choose from {sorted(VERSIONS)}")
        unknown = sorted(set(params) - set(VERSIONS[version]))
        if unknown:
            raise TypeError(f"gold-{version} has no parameter(s) {unknown}; it takes {sorted(VERSIONS[version])}")
        p = {**VERSIONS[version], **params}
        _validate(p)
        self._embedder = embedder
        self.version, self.name = version, f"gold-{version}"
        self.weights = {k[2:]: float(v) for k, v in p.items() if k.startswith("w_")}
        self.params = {k: v for k, v in p.items() if not k.startswith("w_")}
        for k, v in self.params.items():  # rel_lo, len_hi, ... as attributes, as in v1
            setattr(self, k, v)

    def config(self) -> dict:
        """Everything that defines this reward, for run logs."""
        return dict(name=self.name, version=self.version, weights=dict(self.weights), **self.params)

    @property
    def embedder(self):
        if self._embedder is None:
            from alignlab.task.embed import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    def cosines(self, prompts: list[str], responses: list[str]) -> list[float]:
        """Prompt/response cosine; one embed call over the unique texts; 0.0 for empty responses."""
        live = [i for i, r in enumerate(responses) if words(r)]
        out = [0.0] * len(responses)  # empty responses: 0, not the cosine of "[CLS][SEP]"
        if not live:
            return out
        texts = list(dict.fromkeys([prompts[i] for i in live] + [responses[i] for i in live]))
        pos = {t: k for k, t in enumerate(texts)}
        emb = self.embedder.embed(texts)
        for i in live:
            out[i] = float(emb[pos[prompts[i]]] @ emb[pos[responses[i]]])
        return out

    def _mapped(self, cos: float) -> float:
        return min(1.0, max(0.0, (cos - self.rel_lo) / (self.rel_hi - self.rel_lo)))

    def relevance(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The relevance term of this version (v2: discounted by the share copied from the prompt)."""
        return self.score(prompts, responses).values["relevance"]

    def score(self, prompts: list[str], responses: list[str], finished: list[bool] | None = None) -> GoldScore:
        if len(prompts) != len(responses) or (finished is not None and len(finished) != len(responses)):
            raise ValueError(
                f"length mismatch: {len(prompts)} prompts, {len(responses)} responses, "
                f"{'None' if finished is None else len(finished)} finished flags"
            )
        prompts, responses = list(prompts), list(responses)
        fin = [None] * len(responses) if finished is None else list(finished)
        cos = self.cosines(prompts, responses)
        rows = [self._row(p, r, f, c) for p, r, f, c in zip(prompts, responses, fin, cos)]
        values = {k: [row[k] for row in rows] for k in self.weights}
        return GoldScore(
            total=[self._total(row) for row in rows],
            words=[len(words(r)) for r in responses],
            values=values,
            weights=dict(self.weights),
        )

    def _total(self, row: dict[str, float]) -> float:
        # Summed in weight order from 0.0, so v1 totals are bit-identical to the original formula.
        acc = 0.0
        for k, w in self.weights.items():
            acc = acc - w * row[k] if k in PENALTIES else acc + w * row[k]
        return acc

    def _row(self, prompt: str, response: str, finished: bool | None, cos: float) -> dict[str, float]:
        rt = words(response)
        if not rt:  # nothing said: every term 0, total 0.0 (never NaN)
            return dict.fromkeys(self.weights, 0.0)
        if self.version == "v1":
            return dict(
                relevance=self._mapped(cos),
                length=length_score(len(rt), self.len_lo, self.len_hi, self.len_zero),
                completion=completion_score(response, finished),
                repetition=repetition_penalty(response),
                boilerplate=boilerplate_penalty(response, BOILERPLATE_V1),
            )
        pt = words(prompt)
        share = copied_share(pt, rt, self.copy_span)
        on_topic = self._mapped(cos)
        return dict(
            relevance=on_topic * (1.0 - share),  # no credit for the part copied from the prompt
            # New words count only as far as the response is on topic: an answer to another prompt is
            # full of new words, and would otherwise keep substance, length and completion.
            substance=on_topic * substance_score(len(novel_content(pt, rt)), self.sub_words),
            length=length_score(len(rt), self.len_lo, self.len_hi, self.len_zero),
            completion=completion_score(response, finished),
            repetition=repetition_penalty(response),
            copy=copy_penalty(share, self.copy_allow),
            boilerplate=boilerplate_penalty(response, BOILERPLATE_V2),
        )

    def __call__(self, prompts: list[str], responses: list[str], finished: list[bool] | None = None) -> list[float]:
        return self.score(prompts, responses, finished).total


def _validate(p: dict) -> None:
    if not 0 < p["len_lo"] < p["len_hi"] < p["len_zero"]:
        raise ValueError(f"need 0 < len_lo < len_hi < len_zero, got {p['len_lo']}, {p['len_hi']}, {p['len_zero']}")
    if not p["rel_lo"] < p["rel_hi"]:
        raise ValueError(f"need rel_lo < rel_hi, got {p['rel_lo']}, {p['rel_hi']}")
    if "copy_allow" in p and not (0 <= p["copy_allow"] < 1 and p["copy_span"] >= 1 and p["sub_words"] >= 1):
        raise ValueError(f"need 0 <= copy_allow < 1, copy_span >= 1, sub_words >= 1, got {p}")
    if any(v < 0 for k, v in p.items() if k.startswith("w_")):
        raise ValueError("weights must be >= 0 (penalties are subtracted, not negative)")
