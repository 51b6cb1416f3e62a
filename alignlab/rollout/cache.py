"""Generations cached on disk, keyed by (model fingerprint, prompts, sampling parameters, tokenizer fingerprint).

The fingerprint covers every weight (LoRA adapters included), so a changed model never hits a stale entry.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from alignlab.models.loading import cache_dir, tokenizer_fingerprint
from alignlab.rollout.generate import Generation, SamplingParams, generate


def cached_generate(
    model, tokenizer, prompts: list[str], params: SamplingParams, model_fp: str, progress: str | None = None
) -> list[Generation]:
    blob = json.dumps(
        {"m": model_fp, "t": tokenizer_fingerprint(tokenizer), "p": prompts, "s": asdict(params)}, sort_keys=True
    )
    path = cache_dir() / "generations" / f"{hashlib.sha256(blob.encode()).hexdigest()[:24]}.jsonl"
    if path.exists():
        return [Generation(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    gens = generate(model, tokenizer, prompts, params, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(json.dumps(asdict(g)) for g in gens) + "\n")
    tmp.replace(path)
    return gens
