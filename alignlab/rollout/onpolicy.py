"""On-policy preference pairs (the recipe of the SimPO and T-REG papers): sample k responses per prompt from
the model itself, rank them by a reward, best = chosen, worst = rejected. The pairs keep the **sampled ids**
(never re-tokenized text) and are cached on disk, keyed by everything that determines them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Callable

from alignlab.data.tokenize import TokenizedPair
from alignlab.models.loading import cache_dir
from alignlab.rollout.generate import Generation, SamplingParams, generate


@dataclass
class PairBuildReport:
    prompts: int
    samples: int
    pairs: int
    dropped_ties: int  # prompts whose best and worst sample got the same reward (no preference)
    chosen_reward_mean: float
    rejected_reward_mean: float
    cache_hit: bool
    path: str


def pairs_cache_key(model_fp: str, prompts: list[str], params: SamplingParams, reward_name: str) -> str:
    blob = json.dumps({"m": model_fp, "p": prompts, "s": asdict(params), "r": reward_name}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _rank(gens: list[Generation], rewards: list[float], k: int, n_prompts: int):
    for i in range(n_prompts):
        group = list(range(i * k, (i + 1) * k))
        best = max(group, key=lambda j: (rewards[j], -j))
        worst = min(group, key=lambda j: (rewards[j], j))
        yield i, best, worst


def build_onpolicy_pairs(
    model, tokenizer, prompts: list[str], reward_fn: Callable, reward_name: str, model_fp: str, params: SamplingParams
) -> tuple[list[TokenizedPair], list[dict], PairBuildReport]:
    """Returns (pairs, rows for a human-readable JSONL, report). k = params.num_samples >= 2."""
    if params.num_samples < 2:
        raise ValueError("on-policy pairs need at least 2 samples per prompt")
    key = pairs_cache_key(model_fp, prompts, params, reward_name)
    path = cache_dir() / "pairs" / f"{key}.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        meta = rows.pop(0)
        pairs = [
            TokenizedPair(
                r["prompt_ids"],
                r["chosen_ids"],
                r["rejected_ids"],
                r["source"],
                r.get("prompt"),
                r.get("chosen"),
                r.get("rejected"),
            )
            for r in rows
        ]
        return pairs, rows, PairBuildReport(**(meta["report"] | {"cache_hit": True, "path": str(path)}))
    gens = generate(model, tokenizer, prompts, params, progress="on-policy samples")
    rewards = reward_fn([prompts[g.prompt_index] for g in gens], [g.text for g in gens], [g.finished for g in gens])
    pairs, rows, ties = [], [], 0
    for i, b, w in _rank(gens, rewards, params.num_samples, len(prompts)):
        if rewards[b] == rewards[w]:
            ties += 1
            continue
        gb, gw = gens[b], gens[w]
        src = f"onpolicy[{i}]"
        pairs.append(
            TokenizedPair(gb.prompt_ids, gb.completion_ids, gw.completion_ids, src, prompts[i], gb.text, gw.text)
        )
        rows.append(
            {
                "source": src,
                "prompt": prompts[i],
                "chosen": gb.text,
                "rejected": gw.text,
                "chosen_reward": rewards[b],
                "rejected_reward": rewards[w],
                "prompt_ids": gb.prompt_ids,
                "chosen_ids": gb.completion_ids,
                "rejected_ids": gw.completion_ids,
            }
        )
    n = max(len(rows), 1)
    report = PairBuildReport(
        len(prompts),
        len(gens),
        len(pairs),
        ties,
        sum(r["chosen_reward"] for r in rows) / n,
        sum(r["rejected_reward"] for r in rows) / n,
        False,
        str(path),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"report": {k: v for k, v in asdict(report).items() if k not in ("cache_hit", "path")}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(json.dumps(r) for r in [meta] + rows) + "\n")
    tmp.replace(path)
    return pairs, rows, report
