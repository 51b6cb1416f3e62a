"""`alignlab label data=PAIRS judge=JUDGE output_dir=DIR`: label preference pairs with an AI judge (docs/rlaif.md).

1. validate the config (a key the chosen backend does not read is an error) and read the pairs, in any format
   `alignlab train` reads (bad rows stop naming file:line, or are counted with on_bad=skip);
2. open the judge: a local causal LM (built-in alias, hub id, directory) or an OpenAI-compatible endpoint
   (``judge=http://host:port/v1``), and the judge cache (``cache_dir``);
3. judge every pair in both orders (alignlab.judge.protocol); which response pass 1 shows first is drawn per pair
   from ``seed``, so the one-order ("pass 1") numbers are not inflated by position bias;
4. write ``labeled.jsonl`` (``mode=label``): TRL rows ``prompt, chosen, rejected, p_chosen, position_consistent, tie,
   original_label_agrees, source``, chosen being the response the judge prefers (p_chosen >= 0.5; the field
   ``alignlab train`` / ``alignlab rm`` read as a soft label). ``mode=agreement`` treats the data's labels as hidden
   gold and writes only the numbers. Both write ``agreement.json`` (agreement with the data's labels with and
   without the order swap, position consistency, ties, skips, the length baselines), ``report.md``,
   ``data_report.json`` and the resolved config.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from alignlab.config import ConfigError, reject_unread, save_config
from alignlab.data.formats import load_preference_records
from alignlab.judge import BackendOptions, backend_kind, open_backend
from alignlab.judge.agreement import agreement_stats
from alignlab.judge.cache import CACHE_FILE, JudgeCache
from alignlab.judge.http import APIS
from alignlab.judge.protocol import Judge
from alignlab.judge.templates import load_template, render_context, render_response
from alignlab.judge.types import SKIP_REASONS, Pair
from alignlab.models.loading import DEFAULT_MODEL, cache_dir

MODES = ("label", "agreement")  # their descriptions: alignlab.choices (alignlab label --help)
HF_KEYS = ("dtype", "device", "batch_size", "max_length", "chat_template")
HTTP_KEYS = (
    "judge_model",
    "api",
    "api_key_env",
    "timeout_s",
    "max_retries",
    "backoff_s",
    "requests_per_second",
    "top_logprobs",
)


@dataclass
class LabelConfig:
    data: str = ""  # preference pairs in any format train reads: JSONL(.gz) (path[a:b] for a row range), hf:org/name
    split: str = "train"  # split of an hf: / dataset-directory input
    limit: int = 0  # first N pairs (0 = all)
    on_bad: str = "error"  # malformed rows: "error" (default) or "skip" (counted)
    judge: str = DEFAULT_MODEL  # built-in alias, hub id, local model dir, or http(s)://host:port/v1
    template: str = "base"  # base | detailed | cot | a .json/.yaml file (body, ending, rationale_cue)
    mode: str = "label"  # label: labeled.jsonl + numbers; agreement: the data's labels as hidden gold, numbers only
    output_dir: str = "runs/label"
    seed: int = 0  # draws which response pass 1 shows first, per pair
    tie_threshold: float = 0.05  # abs(p - 0.5) below this is a tie
    cache_dir: str = ""  # judge cache directory; empty = <alignlab cache>/judge
    cot_max_new_tokens: int = 256  # cot template: the rationale's token budget (greedy)
    # local judge (hf)
    dtype: str = "float32"  # the judge's weights
    device: str = ""  # e.g. cuda; empty = cpu
    batch_size: int = 8  # judge prompts per forward
    max_length: int = 0  # longest judge prompt in tokens (longer: a counted skip); 0 = the model's context
    chat_template: bool = True  # wrap the question in the judge's chat template (if it has one)
    # endpoint judge (http)
    judge_model: str = ""  # the API's model name; empty = the first of GET /v1/models
    api: str = "auto"  # auto | completions | chat
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the API key (the key is never logged)
    timeout_s: float = 60.0  # per request
    max_retries: int = 3  # per request, after the first attempt (timeouts, 5xx, 429, malformed bodies, bad answers)
    backoff_s: float = 1.0  # wait before retry k: backoff_s * 2**(k-1)
    requests_per_second: float = 5.0  # request starts at most this often (0 = no limit)
    top_logprobs: int = 5  # completions: how many top log-probs to ask for

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("label needs data=PAIRS (a preference file in any format `alignlab train` reads)")
        if not self.judge:
            raise ConfigError("label needs judge= (a model alias, hub id, model directory or http(s)://host:port/v1)")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {sorted(MODES)}, got {self.mode!r}")
        if self.on_bad not in ("error", "skip"):
            raise ConfigError(f"on_bad must be 'error' or 'skip', got {self.on_bad!r}")
        if self.api not in APIS:
            raise ConfigError(f"api must be one of {sorted(APIS)}, got {self.api!r}")
        if not 0.0 <= self.tie_threshold < 0.5:
            raise ConfigError(f"tie_threshold must be in [0, 0.5), got {self.tie_threshold}")
        if self.limit < 0 or self.batch_size < 1 or self.max_length < 0 or self.cot_max_new_tokens < 1:
            raise ConfigError("limit and max_length must be >= 0, batch_size and cot_max_new_tokens >= 1")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0 or self.requests_per_second < 0:
            raise ConfigError("timeout_s must be > 0; max_retries, backoff_s and requests_per_second >= 0")
        if self.top_logprobs < 2:
            raise ConfigError("top_logprobs must be >= 2 (both answers must be able to appear)")
        if backend_kind(self.judge) == "http":
            reject_unread(self, HF_KEYS, "an http judge reads judge_model, api, api_key_env, timeout_s, ...")
        else:
            reject_unread(self, HTTP_KEYS, "a local judge reads dtype, device, batch_size, max_length, chat_template")

    def backend_options(self) -> BackendOptions:
        keys = set(BackendOptions.__dataclass_fields__)
        return BackendOptions(**{k: v for k, v in asdict(self).items() if k in keys} | {"device": self.device or None})


def main(cfg: LabelConfig) -> dict:
    out_dir = Path(cfg.output_dir)
    records, data_report = load_preference_records(cfg.data, cfg.split, cfg.limit or None, cfg.on_bad)
    print(data_report.summary(), flush=True)
    if not records:
        raise ConfigError(f"{cfg.data}: no usable pairs to label ({data_report.summary()})")
    template = load_template(cfg.template)  # a bad template fails before any model loads
    save_config(cfg, out_dir)
    (out_dir / "data_report.json").write_text(json.dumps(asdict(data_report), indent=2))
    backend = open_backend(cfg.judge, cfg.backend_options())
    cache = JudgeCache(Path(cfg.cache_dir or cache_dir() / "judge") / CACHE_FILE)
    judge = Judge(backend, template, cache, tie_threshold=cfg.tie_threshold)

    rng = random.Random(cfg.seed)
    a_is_chosen = [rng.random() < 0.5 for _ in records]
    texts = [(render_context(r.prompt), render_response(r.chosen), render_response(r.rejected)) for r in records]
    pairs = [_pair(ctx, c, rj, first) for (ctx, c, rj), first in zip(texts, a_is_chosen)]
    verdicts = judge.judge_pairs(pairs, progress=_progress)

    numbers = agreement_stats(verdicts, a_is_chosen, [len(t[1]) for t in texts], [len(t[2]) for t in texts])
    skipped = _skip_examples(records, verdicts)
    summary = {
        "data": cfg.data,
        "judge": cfg.judge,
        "judge_id": backend.judge_id,
        "template": template.name,
        "template_hash": template.digest(),
        "mode": cfg.mode,
        "tie_threshold": cfg.tie_threshold,
        "seed": cfg.seed,
        **numbers,
        "skipped_by_reason": dict(judge.stats.skipped_pairs),
        "skipped_examples": skipped,
        "judge_stats": judge.stats.as_dict(),
        "cache_file": str(cache.path),
    }
    if cfg.mode == "label":
        summary["labeled_file"] = str(out_dir / "labeled.jsonl")
        summary["written"] = _write_labeled(out_dir / "labeled.jsonl", records, verdicts, a_is_chosen)
    (out_dir / "agreement.json").write_text(json.dumps(summary, indent=2))
    report = _report(summary)
    (out_dir / "report.md").write_text(report)
    print(report)
    return summary


def _pair(context: str, chosen: str, rejected: str, chosen_first: bool) -> Pair:
    return Pair(context, chosen, rejected) if chosen_first else Pair(context, rejected, chosen)


def _progress(done: int, total: int) -> None:
    print(f"judged {done}/{total} new queries", file=sys.stderr, flush=True)


def _write_labeled(path: Path, records, verdicts, a_is_chosen) -> int:
    """TRL rows with chosen = the judge's pick; skipped pairs are not written (they are counted)."""
    n = 0
    with open(path, "w") as fh:
        for rec, v, first in zip(records, verdicts, a_is_chosen):
            if v.skip:
                continue
            v = v if first else v.flipped()  # now stated for the data's chosen
            keep = v.p >= 0.5
            row = {
                "prompt": rec.prompt,
                "chosen": rec.chosen if keep else rec.rejected,
                "rejected": rec.rejected if keep else rec.chosen,
                "p_chosen": v.p if keep else 1.0 - v.p,
                "position_consistent": v.consistent,
                "tie": v.tie,
                "original_label_agrees": None if v.p == 0.5 else v.p > 0.5,
                "source": rec.source,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _skip_examples(records, verdicts) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rec, v in zip(records, verdicts):
        if v.skip and len(out.setdefault(v.skip, [])) < 5:
            out[v.skip].append(f"{rec.source}: {v.detail}" if v.detail else rec.source)
    return out


def _fmt(s: dict, key: str) -> str:
    v, se = s.get(key), s.get(key + "_se")
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def _report(s: dict) -> str:
    st = s["judge_stats"]
    lines = [
        f"# alignlab label: {s['judge']} on {s['data']}",
        "",
        f"Template `{s['template']}` (hash {s['template_hash']}), judge id `{s['judge_id']}`, mode `{s['mode']}`. "
        f"{s['labeled']} of {s['pairs']} pairs labeled, {s['skipped']} skipped. Agreement = the judge's pick is the "
        "data's chosen (the human label); ± one binomial standard error.",
        "",
        "| quantity | value | pairs |",
        "|---|---|---|",
        f"| agreement, both orders averaged | {_fmt(s, 'agreement')} | {s['labeled']} |",
        f"| agreement, pass 1 only (no swap; order drawn per pair) | {_fmt(s, 'agreement_pass1')} | {s['labeled']} |",
        f"| agreement, non-tie pairs | {_fmt(s, 'agreement_non_tie')} | {s['non_tie_pairs']} |",
        f"| soft agreement (mean P(data's chosen better)) | {_fmt(s, 'soft_agreement')} | {s['labeled']} |",
        f"| position consistency (both passes pick the same) | {_fmt(s, 'position_consistency')} | {s['labeled']} |",
        f"| passes preferring the first shown (0.5 = no bias) | {_fmt(s, 'first_position_rate')} | {s['labeled']} |",
        f"| ties (abs(p - 0.5) < {s['tie_threshold']}) | {_fmt(s, 'tie_rate')} | {s['labeled']} |",
        f"| baseline: longer response wins | {_fmt(s, 'longer_wins')} | {s['labeled']} |",
        f"| baseline: shorter response wins | {_fmt(s, 'shorter_wins')} | {s['labeled']} |",
        "",
        "For comparison (Lee et al. 2309.00267): agreement 62.7% (PaLM 2 XS) to 78.0% (L); harmless dialogue 69.4% "
        "(base prompt); position consistency 44% (XS) to 82% (L).",
        "",
        "## Skips and requests",
        "",
        f"Queries (one order each): {st['queries']} needed, {st['cache_hits']} from the cache, "
        f"{st['requested']} asked; cache lines that did not parse (ignored, re-asked): {st['cache_corrupt_lines']}.",
        "",
    ]
    if s["skipped_by_reason"]:
        lines += ["| skipped pairs: reason | pairs | what it means | e.g. |", "|---|---|---|---|"]
        for reason, n in sorted(s["skipped_by_reason"].items()):
            eg = "; ".join(s["skipped_examples"].get(reason, [])[:2]).replace("|", "/")
            lines.append(f"| {reason} | {n} | {SKIP_REASONS.get(reason, '')} | {eg} |")
    else:
        lines.append("No pair was skipped.")
    if st["backend"]:
        lines += ["", "Backend: " + ", ".join(f"{k} {v}" for k, v in sorted(st["backend"].items()))]
    if s.get("labeled_file"):
        lines += ["", f"Labels: `{s['labeled_file']}` ({s['written']} rows; chosen = the judge's pick, p_chosen)."]
    return "\n".join(lines) + "\n"
