"""AI-feedback (RLAIF) labelling: an AI judge states which of two responses is better (docs/rlaif.md).

- ``templates``: how a pair is shown (``JudgeTemplate``, built-ins ``base``, ``detailed``, ``cot``) and answers parsed;
- ``protocol``: both orders per pair, averaged (``Judge``, ``combine``: judging (B, A) gives exactly 1 - p);
- ``cache``: every answered order in a JSONL file, so nothing is asked twice;
- ``local``: a Hugging Face causal LM, log-prob readout of "1" vs "2" (``HFJudge``);
- ``http``: an OpenAI-compatible endpoint, completions log-probs or chat generate-and-parse (``HTTPJudge``);
- ``agreement``: agreement with existing labels, position consistency, ties, the length baselines.

``open_backend(spec, options)`` turns the ``judge=`` string into a backend: ``http(s)://...`` is an endpoint,
anything else a model (built-in alias, hub id or local directory).
"""

from __future__ import annotations

from dataclasses import dataclass

from alignlab.judge.types import JudgeBackend

BACKENDS = {
    "hf": "a local causal LM (built-in alias, hub id or model directory): log-prob readout, batched",
    "http": "an OpenAI-compatible endpoint: completions log-probs, or chat generate-and-parse",
}

# What `alignlab rlaif` trains on the same pairs, prompts and budget (docs/rlaif.md); the rows of its table.
RLAIF_METHODS = {
    "dpo_gold": "DPO on the gold's labels (the demo's DPO: best vs worst sample by the gold)",
    "dpo_judge": "DPO on the judge's labels (both orders averaged; p > 0.5 keeps the pair, else swapped; ties dropped)",
    "rloo_judge_rm": "a reward model on the judge's soft labels (ties kept), then RLOO against it (RLAIF)",
    "d_rlaif": "RLOO with the judge's 1-10 rating of each response as the reward, no reward model (d-RLAIF)",
    "rloo_gold_rm": "a reward model on the gold's labels, then RLOO against it (the demo's RLHF row; optional)",
}


@dataclass(frozen=True)
class BackendOptions:
    """Everything a backend reads besides the judge's name (the flat label config, grouped)."""

    dtype: str = "float32"
    device: str | None = None
    batch_size: int = 8
    max_length: int = 0
    chat_template: bool = True
    cot_max_new_tokens: int = 256
    judge_model: str = ""
    api: str = "auto"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    requests_per_second: float = 5.0
    top_logprobs: int = 5


def backend_kind(spec: str) -> str:
    """ "http" for an endpoint URL, else "hf"."""
    return "http" if spec.startswith(("http://", "https://")) else "hf"


def open_backend(spec: str, o: BackendOptions = BackendOptions()) -> JudgeBackend:
    """The backend for ``judge=spec`` (an endpoint is contacted once here: model name, log-prob probe)."""
    if backend_kind(spec) == "http":
        from alignlab.judge.http import HTTPJudge, HTTPSettings

        settings = HTTPSettings(
            base_url=spec,
            model=o.judge_model,
            api=o.api,
            api_key_env=o.api_key_env,
            timeout_s=o.timeout_s,
            max_retries=o.max_retries,
            backoff_s=o.backoff_s,
            requests_per_second=o.requests_per_second,
            top_logprobs=o.top_logprobs,
            cot_max_new_tokens=o.cot_max_new_tokens,
        )
        return HTTPJudge.connect(settings)
    from alignlab.judge.local import HFJudge

    return HFJudge.load(
        spec,
        dtype=o.dtype,
        device=o.device,
        batch_size=o.batch_size,
        max_length=o.max_length,
        chat_template=o.chat_template,
        cot_max_new_tokens=o.cot_max_new_tokens,
    )
