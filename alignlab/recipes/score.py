"""`alignlab score reward=gold input=FILE output_dir=DIR`: score any JSONL of prompt/response with any reward.

1. read ``input`` (rows with ``prompt``, ``response`` and optional ``finished``; bad rows stop naming file:line);
2. load the reward (the gold reward by version, a Hugging Face sequence-classification model dir or hub id);
3. score in batches; where the reward has terms (the gold), keep every term of every row;
4. write ``scores.jsonl`` (each row + reward + terms), ``summary.json`` (mean ± s.e. over rows of the reward and of
   every term, with the weighted contributions that add up to the mean), ``report.md`` and the resolved config.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alignlab.config import ConfigError, save_config
from alignlab.data.formats import load_scored_rows
from alignlab.eval.harness import mean_se
from alignlab.rewards import load_reward


@dataclass
class ScoreConfig:
    reward: str = (
        "gold"  # gold (= the current gold version) | gold-v1 | gold-v2 | dir or hub id of a sequence-classification RM
    )
    input: str = ""  # JSONL(.gz) with prompt, response and optional finished
    output_dir: str = "runs/score"
    limit: int = 0  # first N rows (0 = all)
    batch_size: int = 64  # rows per reward call

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("score needs input=FILE.jsonl (rows with prompt, response and optional finished)")
        if self.reward.lower() in ("none", ""):
            raise ConfigError("score needs a reward (reward=gold or a reward-model directory)")
        if self.batch_size < 1 or self.limit < 0:
            raise ConfigError("batch_size must be >= 1 and limit >= 0")


def _score_batch(reward, rows) -> tuple[list[float], list[dict]]:
    prompts, responses = [r.prompt for r in rows], [r.response for r in rows]
    finished = None if all(r.finished is None for r in rows) else [bool(r.finished) for r in rows]
    if hasattr(reward, "score"):  # a reward with terms: one call gives the total and every term
        s = reward.score(prompts, responses, finished)
        values, signed = s.values, s.terms()  # raw term values; signed contributions that sum to the total
        return list(s.total), [{k: (values[k][i], signed[k][i]) for k in signed} for i in range(len(rows))]
    return list(reward(prompts, responses, finished)), [{} for _ in rows]


def summarize(totals: list[float], terms: list[dict]) -> dict:
    """Mean ± s.e. over rows of the reward, of each raw term, and the mean signed contribution of each term
    (the contributions add up to the mean reward)."""
    out = {"n": len(totals)}
    out["reward"], out["reward_se"] = mean_se(totals)
    for k in terms[0] if terms and terms[0] else []:
        out[f"term/{k}"], out[f"term/{k}_se"] = mean_se([t[k][0] for t in terms])
        out[f"contribution/{k}"] = sum(t[k][1] for t in terms) / len(terms)
    return out


def main(cfg: ScoreConfig) -> dict:
    out_dir = Path(cfg.output_dir)
    rows = load_scored_rows(cfg.input, limit=cfg.limit or None)  # bad input fails before any model loads
    reward = load_reward(cfg.reward)
    save_config(cfg, out_dir)
    totals, terms = [], []
    for s in range(0, len(rows), cfg.batch_size):
        t, k = _score_batch(reward, rows[s : s + cfg.batch_size])
        totals += t
        terms += k
    summary = {"reward_name": getattr(reward, "name", cfg.reward), "input": cfg.input}
    summary |= summarize(totals, terms)
    with open(out_dir / "scores.jsonl", "w") as fh:
        for r, t, k in zip(rows, totals, terms):
            fh.write(
                json.dumps(
                    {
                        "source": r.source,
                        "prompt": r.prompt,
                        "response": r.response,
                        "finished": r.finished,
                        "reward": t,
                    }
                    | {f"term/{n}": v[0] for n, v in k.items()},
                    ensure_ascii=False,
                )
                + "\n"
            )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (out_dir / "report.md").write_text(_report(summary))
    print(_report(summary))
    return summary


def _report(s: dict) -> str:
    lines = [
        f"# alignlab score: {s['reward_name']} on {s['input']} ({s['n']} rows)",
        "",
        "| quantity | mean | ± s.e. | weighted contribution |",
        "|---|---|---|---|",
        f"| reward | {s['reward']:.4f} | {s['reward_se']:.4f} | |",
    ]
    for k in [k for k in s if k.startswith("term/") and not k.endswith("_se")]:
        name = k.split("/", 1)[1]
        c = s.get(f"contribution/{name}")
        lines.append(f"| {name} | {s[k]:.4f} | {s[k + '_se']:.4f} | {'' if c is None else f'{c:+.4f}'} |")
    return "\n".join(lines) + "\n"
