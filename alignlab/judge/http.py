"""An OpenAI-compatible HTTP endpoint as the judge (vLLM, llama.cpp's server, hosted APIs; docs/rlaif.md).

Only the standard library (urllib): no client package to install or pin.

Modes. ``completions``: ``POST {base}/completions`` with ``max_tokens=1, temperature=0, logprobs=top_logprobs``;
P("1") is the softmax over the probabilities of the top tokens that read "1" and "2" (whitespace stripped, so " 1"
counts as "1"); an answer absent from the top list counts as probability 0; neither present is a bad answer.
``chat``: ``POST {base}/chat/completions`` (temperature 0), the answer generated and parsed
(alignlab.judge.templates.parse_answer): P("1") is 1.0 or 0.0. ``auto`` (the default) probes completions with
log-probs once at start and falls back to chat when the server has no completions endpoint or returns no
log-probs. Chain of thought: completions generates the rationale in a first request, then reads the answer in a
second; chat asks for the reasoning and the final "ending + digit" in one reply.

Errors, per request: a timeout, a connection error, 5xx or 429 and a body that is not the promised JSON are
retried (``max_retries`` times, exponential backoff ``backoff_s * 2**attempt``), and so is a bad answer; what still
fails becomes a Readout with ``error`` set, which the report counts as a skip. 401/403/404 stop the run with one
line (a refused key or a wrong URL would otherwise turn every pair into a skip); other 4xx are skipped at once.
Requests are spaced by ``1 / requests_per_second`` (a shared limiter; 0 = unlimited). The API key is read from the
environment variable named by ``api_key_env`` and sent as a bearer token; it is never logged, cached, put into the
judge id or into an error message.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Sequence

from alignlab.judge.templates import JudgeTemplate, parse_answer
from alignlab.judge.types import Readout

APIS = {
    "auto": "completions with log-probs if the server has them (probed once), else chat generate-and-parse",
    "completions": "/v1/completions with logprobs: softmax over the log-probs of '1' and '2'",
    "chat": "/v1/chat/completions, temperature 0: the answer generated and parsed (P = 1 or 0)",
}
_STOP_CODES = {401: "the API key was refused", 403: "access forbidden", 404: "no such endpoint or model"}


class JudgeEndpointError(OSError):
    """The endpoint cannot be used at all (unreachable at start, key refused, wrong URL): stops the run."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class HTTPSettings:
    """How to talk to the endpoint. ``base_url`` ends with the API root (``http://host:8000/v1``)."""

    base_url: str
    model: str = ""  # the API's model name; "" = the first of GET {base}/models
    api: str = "auto"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    requests_per_second: float = 5.0
    top_logprobs: int = 5
    cot_max_new_tokens: int = 256


class RateLimiter:
    """Request starts at least ``1 / rps`` seconds apart (no bursts); rps <= 0: no limit."""

    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic, sleep=time.sleep):
        self.interval = 1.0 / rps if rps > 0 else 0.0
        self.clock, self.sleep, self._next = clock, sleep, -math.inf

    def wait(self) -> None:
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


class _Fail(Exception):
    """One failed attempt: ``reason`` is a SKIP_REASONS key; ``retry`` whether another attempt may help."""

    def __init__(self, reason: str, detail: str, retry: bool = True, code: int | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retry, self.code = reason, detail, retry, code


class HTTPJudge:
    """Judge backend over an OpenAI-compatible endpoint; construct with ``HTTPJudge.connect(settings)``."""

    def __init__(self, settings: HTTPSettings, api: str, model: str, sleep=time.sleep, clock=time.monotonic):
        self.s, self.api, self.model, self.sleep = settings, api, model, sleep
        self.limiter = RateLimiter(settings.requests_per_second, clock=clock, sleep=sleep)
        self.base = settings.base_url.rstrip("/")
        self.judge_id = f"http:{self.base}:{model}:{api}:top{settings.top_logprobs}:cot={settings.cot_max_new_tokens}"
        self._counts: dict[str, int] = {"requests": 0}

    @classmethod
    def connect(cls, settings: HTTPSettings, **kw) -> "HTTPJudge":
        """Resolve the model name (GET /models if unset) and, for ``api="auto"``, probe completions + log-probs."""
        if settings.api not in APIS:
            raise ValueError(f"api must be one of {sorted(APIS)}, got {settings.api!r}")
        judge = cls(settings, settings.api, settings.model, **kw)
        if not judge.model:
            judge.model = judge._first_model()
        api = settings.api
        if api == "auto":
            api = "completions" if judge._has_logprobs() else "chat"
        return cls(settings, api, judge.model, **kw)

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    # ------------------------------------------------------------------ transport

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        key = os.environ.get(self.s.api_key_env, "") if self.s.api_key_env else ""
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _call(self, path: str, payload: dict | None) -> dict:
        """One attempt: the parsed JSON object, or _Fail / JudgeEndpointError."""
        self.limiter.wait()
        self._counts["requests"] += 1
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.base + path, data=data, headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.s.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            if e.code in _STOP_CODES:
                raise JudgeEndpointError(
                    f"judge endpoint {self.base}{path}: HTTP {e.code} ({_STOP_CODES[e.code]}); check the URL, "
                    f"judge_model and the key in ${self.s.api_key_env}",
                    code=e.code,
                ) from None
            retry = e.code >= 500 or e.code == 429
            raise _Fail("http_error", f"HTTP {e.code} from {path}", retry=retry, code=e.code) from None
        except (TimeoutError, socket.timeout):
            raise _Fail("timeout", f"no answer from {path} within {self.s.timeout_s}s") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise _Fail("timeout", f"no answer from {path} within {self.s.timeout_s}s") from None
            raise _Fail("http_error", f"{path}: {type(e.reason).__name__}: {e.reason}") from None
        except (ConnectionError, http.client.HTTPException) as e:
            raise _Fail("http_error", f"{path}: {type(e).__name__}") from None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _Fail("malformed_body", f"{path}: the body is not JSON ({raw[:60]!r})") from None
        if not isinstance(body, dict):
            raise _Fail("malformed_body", f"{path}: the body is not a JSON object")
        return body

    def _with_retries(self, attempt_fn: Callable[[], Readout]) -> Readout:
        last: _Fail | None = None
        for attempt in range(self.s.max_retries + 1):
            if attempt:
                self._counts[f"retries/{last.reason}"] = self._counts.get(f"retries/{last.reason}", 0) + 1
                self.sleep(self.s.backoff_s * 2 ** (attempt - 1))
            try:
                return attempt_fn()
            except _Fail as f:
                last = f
                if not f.retry:
                    break
        return Readout(None, error=last.reason, detail=last.detail)

    # ------------------------------------------------------------------ start-up

    def _at_start(self, path: str, payload: dict | None) -> dict:
        """A start-up request, retried like any other; what still fails stops the run (JudgeEndpointError), except
        a non-retryable _Fail, which is re-raised for the caller to interpret."""
        last: _Fail | None = None
        for attempt in range(self.s.max_retries + 1):
            if attempt:
                self.sleep(self.s.backoff_s * 2 ** (attempt - 1))
            try:
                return self._call(path, payload)
            except _Fail as f:
                if not f.retry or f.code == 501:
                    raise
                last = f
        raise JudgeEndpointError(f"judge endpoint {self.base}: {last.detail} ({self.s.max_retries + 1} attempts)")

    def _first_model(self) -> str:
        try:
            return str(self._at_start("/models", None)["data"][0]["id"])
        except (_Fail, KeyError, IndexError, TypeError) as e:
            raise JudgeEndpointError(
                f"judge endpoint {self.base}: could not list its models ({getattr(e, 'detail', e)}); pass judge_model="
            ) from None

    def _has_logprobs(self) -> bool:
        """The probe of api=auto: True when /completions answers with top log-probs."""
        payload = {"model": self.model, "prompt": "Answer 1 or 2.\nAnswer=", "max_tokens": 1, "temperature": 0}
        try:
            return (
                _top_logprobs(self._at_start("/completions", payload | {"logprobs": self.s.top_logprobs})) is not None
            )
        except _Fail:
            return False  # 400/405/422/501 or a body without the completions layout: no usable completions here
        except JudgeEndpointError as e:
            if e.code == 404:
                return False  # no /completions: a chat-only server
            raise

    # ------------------------------------------------------------------ readout

    def readout(self, bodies: Sequence[str], template: JudgeTemplate) -> list[Readout]:
        read = self._read_completion if self.api == "completions" else self._read_chat
        return [read(b, template) for b in bodies]

    def _read_completion(self, body: str, t: JudgeTemplate) -> Readout:
        head, rationale = body + "\n", ""
        if t.cot:
            gen = self._with_retries(lambda: self._generate(head + t.rationale_cue))
            if gen.p1 is None and gen.error:
                return gen
            rationale = gen.rationale
            head = head + t.rationale_cue + " " + rationale + "\n"
        prompt = head + t.ending
        payload = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
        payload["logprobs"] = self.s.top_logprobs

        def attempt() -> Readout:
            top = _top_logprobs(self._call("/completions", payload))
            if top is None:
                raise _Fail("malformed_body", "/completions: no logprobs.top_logprobs in the body")
            s1 = sum(math.exp(lp) for tok, lp in top.items() if tok.strip() == "1")
            s2 = sum(math.exp(lp) for tok, lp in top.items() if tok.strip() == "2")
            if not math.isfinite(s1 + s2):
                raise _Fail("malformed_body", "/completions: a log-prob that is not a finite number")
            if s1 + s2 <= 0.0:
                best = max(top, key=top.get) if top else ""
                raise _Fail("bad_answer", f"neither '1' nor '2' in the top {len(top)} tokens (top: {best!r})")
            return Readout(s1 / (s1 + s2), mode="logprobs", answer="1" if s1 >= s2 else "2", rationale=rationale)

        return self._with_retries(attempt)

    def next_token_logprobs(self, prompt: str, top_logprobs: int) -> dict[str, float] | Readout:
        """{token: logprob} of the top tokens after ``prompt`` (completions, temperature 0, retried like a readout);
        a failure is a Readout with ``error`` set. Used by the d-RLAIF ratings (alignlab.judge.rating)."""
        payload = {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": top_logprobs}
        got: dict = {}

        def attempt() -> Readout:
            got["top"] = _top_logprobs(self._call("/completions", payload))
            if got["top"] is None:
                raise _Fail("malformed_body", "/completions: no logprobs.top_logprobs in the body")
            return Readout(0.5)

        r = self._with_retries(attempt)
        return got["top"] if r.error is None else r

    def _generate(self, prompt: str) -> Readout:
        payload = {"model": self.model, "prompt": prompt, "max_tokens": self.s.cot_max_new_tokens, "temperature": 0}
        body = self._call("/completions", payload)
        try:
            text = body["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise _Fail("malformed_body", "/completions: no choices[0].text") from None
        if not isinstance(text, str):
            raise _Fail("malformed_body", "/completions: choices[0].text is not a string")
        return Readout(0.5, rationale=text.strip())  # p1 unused: a generation, not an answer

    def _read_chat(self, body: str, t: JudgeTemplate) -> Readout:
        ask = f'{body}\nEnd your reply with "{t.ending}1" or "{t.ending}2".'
        if t.cot:
            ask = f'{body}\n{t.rationale_cue} first write your reasoning, then end with "{t.ending}1" or "{t.ending}2".'
        budget = self.s.cot_max_new_tokens if t.cot else 16
        payload = {"model": self.model, "messages": [{"role": "user", "content": ask}], "temperature": 0}
        payload["max_tokens"] = budget

        def attempt() -> Readout:
            reply = self._call("/chat/completions", payload)
            try:
                text = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise _Fail("malformed_body", "/chat/completions: no choices[0].message.content") from None
            if not isinstance(text, str):
                raise _Fail("malformed_body", "/chat/completions: the message content is not a string")
            answer = parse_answer(text, t.ending, require_ending=t.cot)
            if answer is None:
                raise _Fail("bad_answer", f"the reply is neither 1 nor 2: {text.strip()[:60]!r}")
            return Readout(1.0 if answer == 1 else 0.0, mode="parse", answer=str(answer), rationale=text.strip())

        return self._with_retries(attempt)


def _top_logprobs(body: dict) -> dict[str, float] | None:
    """{token: logprob} of the first generated position, from either log-prob layout servers use: the legacy
    completions one (``logprobs.top_logprobs[0]`` a dict, OpenAI / vLLM / llama-cpp-python) or the chat-style one
    (``logprobs.content[0].top_logprobs`` a list of {token, logprob}, llama.cpp's own server). None if absent."""
    try:
        lp = body["choices"][0].get("logprobs")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise _Fail("malformed_body", "/completions: no choices[0] in the body") from None
    if not isinstance(lp, dict):
        return None
    try:
        if isinstance(lp.get("top_logprobs"), list) and lp["top_logprobs"]:
            first = lp["top_logprobs"][0]
            return {str(k): float(v) for k, v in first.items()}
        if isinstance(lp.get("content"), list) and lp["content"]:
            return {str(e["token"]): float(e["logprob"]) for e in lp["content"][0]["top_logprobs"]}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _Fail("malformed_body", "/completions: logprobs in an unknown layout") from None
    return None
