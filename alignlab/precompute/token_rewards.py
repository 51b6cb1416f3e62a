"""T-REG token rewards by contrastive prompting, computed once per dataset and cached (docs/conventions.md T1, T5.1).

For every response token: r̂_t = sigma(log pi_eval(y_t | c_better, y_<t) - log pi_eval(y_t | c_worse, y_<t)) - 0.5,
where c_better / c_worse are the prompt rewritten by two opposite instructions (a TregTemplate) and pi_eval is a
frozen causal LM: the reference model (default) or any model with the same tokenizer.

Alignment (T5.3.1-T5.3.4): the response ids scored under both contexts are the pair's training ids themselves
(chosen_ids / rejected_ids after truncation, EOS included), concatenated after the context ids; nothing is
re-tokenized. Only the context is truncated, from the left (a leading BOS is kept). Every row is checked before
scoring: the ids after each context must equal the training ids, else TokenRewardAlignmentError.

Cost (T6): two scored sequences per response, both contexts of a response in the same forward batch
(``batch_size`` responses = 2 x batch_size sequences per forward). fp32 log-softmax (SequenceScorer). Where the
model supports it (SequenceScorer.pack_spec) the two sequences run packed as one: their common context prefix once,
then each context's rest + the response as two branches (docs/conventions.md L2.10); identical contexts once.
Cache: ``<cache>/treg_rewards/<key>.safetensors``, next to ``<cache>/reflogps/``; key = refcache's
reference key (every token id, scorer fingerprint, dtype) + template + context texts + tokenizer + max_length.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from alignlab.data.collate import TokenRewardAlignmentError, pad_sequences
from alignlab.data.tokenize import PairTokenizer, TokenizedPair
from alignlab.losses.treg import rescale_token_rewards, token_rewards_from_logps
from alignlab.models.loading import cache_dir, model_fingerprint, tokenizer_fingerprint
from alignlab.models.scorer import SequenceScorer
from alignlab.ops.packing import PackedBatch, PackSpec, pack_groups
from alignlab.precompute.cache import rank_shard, store_atomic, sum_over_ranks
from alignlab.precompute.reference import forward_layout, reference_key


class TemplateError(ValueError):
    """A contrastive template pair that cannot produce two comparable contexts."""


class ScorerTokenizerError(ValueError):
    """The token-reward scorer does not share the training tokenizer (its ids would mean other tokens)."""


@dataclass(frozen=True)
class TregTemplate:
    """Two opposite instructions that replace the (last) user turn; placeholders {prompt} and optionally
    {response} (the response being scored, shown as a draft). Both must use the same placeholders, so the
    two contexts differ only in the direction of the instruction."""

    name: str
    better: str
    worse: str

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.better, self.worse]).encode()).hexdigest()[:16]

    @property
    def uses_response(self) -> bool:
        return "response" in _fields(self.better)

    def validate(self) -> "TregTemplate":
        fb, fw = _fields(self.better), _fields(self.worse)
        for side, f in (("better", fb), ("worse", fw)):
            if "prompt" not in f:
                raise TemplateError(f"template {self.name!r}: the {side} instruction has no {{prompt}} placeholder")
            if f - {"prompt", "response"}:
                raise TemplateError(
                    f"template {self.name!r}: unknown placeholder(s) {sorted(f - {'prompt', 'response'})} "
                    f"in the {side} instruction (allowed: {{prompt}}, {{response}})"
                )
        if fb != fw:
            raise TemplateError(
                f"template {self.name!r}: better uses {sorted(fb)} but worse uses {sorted(fw)}; both "
                "instructions must use the same placeholders"
            )
        return self


def _fields(text: str) -> set[str]:
    try:
        return {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        raise TemplateError(f"malformed template {text[:60]!r}: {e}") from None


# The project's own wording (T1.2, [inferred]): the paper's exact instructions could not be
# confirmed. "revision" (default) pastes the scored response as the draft to improve / worsen.
_REV = (
    "Below is a user request and a draft reply. Rewrite the reply so that it is {how}.\n\n"
    "Request:\n{{prompt}}\n\nDraft reply:\n{{response}}"
)
_GEN = "Answer the following request in a way that is {how}.\n\n{{prompt}}"
# "task": the embedded task's criteria named in the instruction (docs/gold_reward.md: specific new content,
# no restating of the request, no repetition, no disclaimers, a finished short answer). Not the paper's
# wording: a departure chosen on validation pairs (docs/treg.md, "Do the token rewards carry signal?").
_TASK = "Answer the request below {how}.\n\n{{prompt}}"
TEMPLATES: dict[str, TregTemplate] = {
    "revision": TregTemplate(
        "revision",
        _REV.format(how="more helpful, more correct, more coherent and more concise"),
        _REV.format(how="less helpful, less correct, less coherent and more verbose"),
    ),
    "generation": TregTemplate(
        "generation",
        _GEN.format(how="helpful, correct, coherent and concise"),
        _GEN.format(how="unhelpful, incorrect, incoherent and verbose"),
    ),
    "task": TregTemplate(
        "task",
        _TASK.format(
            how="directly: give specific, correct information in your own words in two to four complete "
            "sentences, do not restate the request, do not repeat yourself and do not add disclaimers"
        ),
        _TASK.format(
            how="evasively: give vague, incorrect filler, restate the request instead of answering it, "
            "repeat yourself and add disclaimers"
        ),
    ),
}


def resolve_template(spec: str | TregTemplate) -> TregTemplate:
    """A TregTemplate, a registered name, or a .json/.yaml file with keys ``better`` and ``worse``."""
    if isinstance(spec, TregTemplate):
        return spec.validate()
    if spec in TEMPLATES:
        return TEMPLATES[spec].validate()
    path = Path(spec)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        import yaml

        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict) or not {"better", "worse"} <= set(d):
            raise TemplateError(f"{path}: a template file needs the keys 'better' and 'worse'")
        return TregTemplate(str(path), str(d["better"]), str(d["worse"])).validate()
    raise TemplateError(f"unknown T-REG template {spec!r}; choose one of {sorted(TEMPLATES)} or a .json/.yaml file")


def check_same_tokenizer(train_tok, scorer_tok, scorer_model=None, name: str = "scorer") -> None:
    """The scorer reads the training ids: same vocabulary (id -> token) and special tokens, and an output layer
    covering every id. Chat templates may differ (contexts are rendered with the training tokenizer)."""
    a, b = train_tok.get_vocab(), scorer_tok.get_vocab()
    if a != b:
        diff = sorted(set(a.items()) ^ set(b.items()), key=lambda kv: kv[1])[:3]
        raise ScorerTokenizerError(
            f"T-REG {name}: its tokenizer differs from the training tokenizer ({len(b)} vs "
            f"{len(a)} entries; first differences {diff}); use a model with the same tokenizer"
        )
    for attr in ("bos_token_id", "eos_token_id"):
        if getattr(train_tok, attr) != getattr(scorer_tok, attr):
            raise ScorerTokenizerError(
                f"T-REG {name}: {attr} {getattr(scorer_tok, attr)} != training {getattr(train_tok, attr)}"
            )
    if scorer_model is not None:
        head = scorer_model.get_output_embeddings()
        n = getattr(head, "out_features", None) or scorer_model.config.vocab_size
        if n < len(train_tok):
            raise ScorerTokenizerError(f"T-REG {name}: output layer has {n} rows, fewer than the {len(train_tok)} ids")


# --------------------------------------------------------------------------- contexts


@dataclass
class ContextRows:
    """The two scored sequences of one response: context ids (better / worse) + the same response ids."""

    better_ctx: list[int]
    worse_ctx: list[int]
    response: list[int]
    source: str


def _render_instruction(prompt, instruction: str, response_text: str | None):
    """Chat messages whose last user turn is the instruction around the original request (earlier turns kept)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": instruction.format(prompt=prompt, response=response_text or "")}]
    msgs = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
    if last is None:
        raise ValueError("a chat prompt needs a user turn to wrap with the T-REG instruction")
    msgs[last]["content"] = instruction.format(prompt=msgs[last]["content"], response=response_text or "")
    return msgs


def _left_truncate(ctx: list[int], budget: int, bos_id: int | None) -> list[int]:
    if len(ctx) <= budget:
        return ctx
    if budget < 1:
        raise ValueError(f"no room for a context: max_length leaves {budget} tokens")
    keep_bos = bos_id is not None and ctx[0] == bos_id and budget > 1
    return ([bos_id] + ctx[-(budget - 1) :]) if keep_bos else ctx[-budget:]


def build_context_rows(
    pt: PairTokenizer, template: TregTemplate, pair: TokenizedPair, side: str, max_length: int | None = None
) -> ContextRows:
    """Contexts for the chosen (side="chosen") or rejected response of ``pair``; the response ids are the
    training ids. ``max_length`` bounds context + response; only the context is cut (from the left)."""
    if pair.prompt is None:
        raise ValueError(
            f"{pair.source}: no prompt text; T-REG contexts are built from text (pairs made by "
            "tokenize_pairs or build_onpolicy_pairs keep it)"
        )
    ids = pair.chosen_ids if side == "chosen" else pair.rejected_ids
    text = pair.chosen_text if side == "chosen" else pair.rejected_text
    if template.uses_response and text is None:
        text = pt.tok.decode(ids, skip_special_tokens=True)  # the draft is context only, never scored
    ctx = [pt.prompt_ids(_render_instruction(pair.prompt, instr, text)) for instr in (template.better, template.worse)]
    if max_length is not None:
        ctx = [_left_truncate(c, max_length - len(ids), pt.bos_id) for c in ctx]
    return ContextRows(ctx[0], ctx[1], list(ids), pair.source)


def check_rows(rows: ContextRows, training_ids: list[int], bos_id: int | None = None) -> None:
    """The ids scored after each context must be exactly the training ids (T5.3.1); no doubled BOS."""
    for name, ctx in (("better", rows.better_ctx), ("worse", rows.worse_ctx)):
        if not ctx:
            raise TokenRewardAlignmentError(f"{rows.source}: empty {name} context")
        if bos_id is not None and len(ctx) >= 2 and ctx[0] == ctx[1] == bos_id:
            raise TokenRewardAlignmentError(f"{rows.source}: {name} context starts with a duplicated BOS")
    if rows.response != list(training_ids):
        n = next(
            (i for i, (a, b) in enumerate(zip(rows.response, training_ids)) if a != b),
            min(len(rows.response), len(training_ids)),
        )
        raise TokenRewardAlignmentError(
            f"{rows.source}: response ids scored under the contrastive contexts differ from the training ids "
            f"(lengths {len(rows.response)} vs {len(training_ids)}, first difference at token {n})"
        )


# --------------------------------------------------------------------------- scoring


@dataclass
class TokenRewardResult:
    """rewards[k] = (chosen r̂, rejected r̂) lists for pairs[k]; forward_calls / rows: scorer work done here
    (0 on a cache hit)."""

    rewards: list[tuple[list[float], list[float]]]
    cache_hit: bool
    path: Path | None
    forward_calls: int = 0
    rows: int = 0


@torch.no_grad()
def compute_token_rewards(
    model,
    tokenizer,
    pairs: list[TokenizedPair],
    template: str | TregTemplate = "revision",
    batch_size: int = 8,
    max_length: int | None = None,
    indices: list[int] | None = None,
    device=None,
    packing: str = "shared_prompt",
) -> TokenRewardResult:
    """Score ``pairs[indices]`` (default all) without caching. ``batch_size`` responses per forward (2 sequences
    each); ``packing`` as TrainConfig.packing."""
    tpl = resolve_template(template)
    pt = PairTokenizer(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    indices = list(range(len(pairs))) if indices is None else indices
    jobs = []
    for k in indices:  # every context built and checked before the first forward
        for side in ("chosen", "rejected"):
            rows = build_context_rows(pt, tpl, pairs[k], side, max_length)
            check_rows(rows, pairs[k].chosen_ids if side == "chosen" else pairs[k].rejected_ids, pt.bos_id)
            jobs.append((k, side, rows))
    jobs.sort(key=lambda j: -(max(len(j[2].better_ctx), len(j[2].worse_ctx)) + len(j[2].response)))
    device = device if device is not None else next(model.parameters()).device
    scorer = SequenceScorer(model, packing=packing)
    pack = scorer.pack_spec
    was_training = model.training
    model.eval()
    out: dict[tuple[int, str], list[float]] = {}
    calls = n_rows = 0
    for s in range(0, len(jobs), batch_size):
        chunk = jobs[s : s + batch_size]
        ctxs = [c for _, _, r in chunk for c in (r.better_ctx, r.worse_ctx)]  # rows 2j (better), 2j+1 (worse)
        resps = [r.response for _, _, r in chunk for _ in range(2)]
        ids, attn, comp = pad_sequences(ctxs, resps, pad_id)
        for j, c in enumerate(ctxs):  # the ids actually scored are the training ids
            if ids[j, len(c) : len(c) + len(resps[j])].tolist() != resps[j]:
                raise TokenRewardAlignmentError(f"{chunk[j // 2][2].source}: scored ids differ from training ids")
        packed = {} if pack is None else {"packed": _context_groups(chunk, pad_id, pack).to(device)}
        tok = scorer(ids.to(device), attn.to(device), comp.to(device), return_tokens=True, **packed).token.float().cpu()
        mask = comp[:, 1:]
        calls += 1
        n_rows += ids.shape[0]
        for j, (k, side, r) in enumerate(chunk):
            lp_b, lp_w = tok[2 * j][mask[2 * j]], tok[2 * j + 1][mask[2 * j + 1]]
            if lp_b.numel() != len(r.response) or lp_w.numel() != len(r.response):
                raise TokenRewardAlignmentError(
                    f"{r.source}: {lp_b.numel()}/{lp_w.numel()} scored tokens for a {len(r.response)}-token response"
                )
            out[(k, side)] = token_rewards_from_logps(lp_b, lp_w).tolist()
    model.train(was_training)
    rewards = [(out[(k, "chosen")], out[(k, "rejected")]) for k in indices]
    return TokenRewardResult(rewards, False, None, calls, n_rows)


def _context_groups(chunk: list[tuple[int, str, ContextRows]], pad_id: int, pack: PackSpec) -> PackedBatch:
    """The 2 x len(chunk) scored sequences (2j: better context + response, 2j+1: worse) packed: per response, the
    two contexts' common prefix once, then the rest of each context + the response (only the response scored)."""
    groups = []
    for j, (_, _, r) in enumerate(chunk):
        n = next((i for i, (a, b) in enumerate(zip(r.better_ctx, r.worse_ctx)) if a != b), None)
        n = min(len(r.better_ctx), len(r.worse_ctx)) if n is None else n
        ctxs = (r.better_ctx, r.worse_ctx)
        branches = [(ctx[n:] + r.response, len(r.response), 2 * j + side) for side, ctx in enumerate(ctxs)]
        groups.append((r.better_ctx[:n], branches))
    return pack_groups(groups, 2 * len(chunk), pad_id, pack)


def _texts_fingerprint(pairs: list[TokenizedPair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen_text, p.rejected_text], sort_keys=True).encode())
    return h.hexdigest()


def token_rewards_key(
    pairs: list[TokenizedPair],
    scorer_fp: str,
    dtype: str,
    template: TregTemplate,
    tokenizer,
    max_length: int | None,
    layout: str = "",
) -> str:
    """refcache.reference_key (token ids, scorer, dtype, forward layout) + template + texts + tokenizer/chat
    template + budget."""
    blob = "|".join(
        [
            reference_key(pairs, scorer_fp, dtype, layout),
            template.fingerprint(),
            _texts_fingerprint(pairs),
            tokenizer_fingerprint(tokenizer),
            str(max_length),
            "treg-v1",
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _lengths(pairs: list[TokenizedPair]) -> torch.Tensor:
    return torch.tensor([n for p in pairs for n in (len(p.chosen_ids), len(p.rejected_ids))], dtype=torch.int64)


def _flatten(rewards: list[tuple[list[float], list[float]]]) -> torch.Tensor:
    return torch.tensor([v for rc, rr in rewards for v in rc + rr], dtype=torch.float32)


def _unflatten(flat: torch.Tensor, lengths: torch.Tensor) -> list[tuple[list[float], list[float]]]:
    parts = torch.split(flat, lengths.tolist())
    return [(parts[2 * k].tolist(), parts[2 * k + 1].tolist()) for k in range(len(parts) // 2)]


def cached_token_rewards(
    model,
    tokenizer,
    pairs: list[TokenizedPair],
    template: str | TregTemplate = "revision",
    batch_size: int = 8,
    max_length: int | None = None,
    accelerator=None,
    scorer_fp: str | None = None,
    packing: str = "shared_prompt",
) -> TokenRewardResult:
    """Load or compute (and store) r̂ for every pair. Under ``accelerator`` each rank scores a shard of the
    pairs and one all-reduce joins them (as refcache.reference_logps)."""
    tpl = resolve_template(template)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    layout = forward_layout(SequenceScorer(model, packing=packing))
    key = token_rewards_key(pairs, scorer_fp or model_fingerprint(model), dtype, tpl, tokenizer, max_length, layout)
    path = cache_dir() / "treg_rewards" / f"{key}.safetensors"  # a sibling of reflogps/, not inside it
    expected = _lengths(pairs)
    if path.exists():
        d = load_file(str(path))
        if torch.equal(d["lengths"], expected):
            return TokenRewardResult(_unflatten(d["values"], d["lengths"]), True, path)
    mine = rank_shard(len(pairs), accelerator)
    res = compute_token_rewards(
        model,
        tokenizer,
        pairs,
        tpl,
        batch_size,
        max_length,
        mine,
        accelerator.device if accelerator is not None else None,
        packing,
    )
    if accelerator is not None and accelerator.num_processes > 1:  # every rank joins the all-reduce
        full: list[tuple[list[float], list[float]]] = [
            ([0.0] * len(p.chosen_ids), [0.0] * len(p.rejected_ids)) for p in pairs
        ]
        for k, r in zip(mine, res.rewards):
            full[k] = r
        flat = sum_over_ranks(_flatten(full), accelerator)
    else:
        flat = _flatten(res.rewards)
    store_atomic(path, {"values": flat, "lengths": expected}, accelerator)
    return TokenRewardResult(_unflatten(flat, expected), False, path, res.forward_calls, res.rows)


def token_rewards_for_pairs(
    model,
    tokenizer,
    pairs: list[TokenizedPair],
    template: str | TregTemplate = "revision",
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[tuple[list[float], list[float]]]:
    """(chosen r̂, rejected r̂) per pair, one float per training response token; cached on disk. ``model`` is the
    frozen scorer (the reference: call before applying LoRA / training). Pairs must carry their prompt text."""
    return cached_token_rewards(model, tokenizer, pairs, template, batch_size, max_length).rewards


def token_rewards_for_training(
    cfg, accelerator, model, tokenizer, pairs: list[TokenizedPair], model_fp: str | None = None
) -> TokenRewardResult:
    """The train loop's entry: scorer = ``model`` as given (call before LoRA: the reference) unless
    ``cfg.treg_scorer`` names another frozen LM, which must share the tokenizer. Contexts + response are bounded
    by 2 x max_length (the revision context holds the prompt and the response as the draft). ``model_fp``: the
    caller's model_fingerprint(model), if it has one (saves hashing the weights again)."""
    scorer_model, name, scorer_fp = model, "reference", model_fp
    if cfg.treg_scorer:
        from alignlab.models.loading import load_model_and_tokenizer

        scorer_model, scorer_tok = load_model_and_tokenizer(
            cfg.treg_scorer, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
        name, scorer_fp = f"scorer {cfg.treg_scorer!r}", None
        check_same_tokenizer(tokenizer, scorer_tok, scorer_model, name)
        scorer_model.to(accelerator.device)
    res = cached_token_rewards(
        scorer_model,
        tokenizer,
        pairs,
        cfg.treg_template,
        cfg.ref_batch_size,
        2 * cfg.max_length,
        accelerator,
        scorer_fp,
        getattr(cfg, "packing", "shared_prompt"),
    )
    if accelerator.is_main_process:
        print(
            f"[alignlab] T-REG token rewards ({name}, template {cfg.treg_template}, tau {cfg.treg_tau:g}): "
            f"{'cache hit' if res.cache_hit else f'computed in {res.forward_calls} forward calls'} ({res.path})"
        )
    if cfg.treg_tau != 1.0:  # the cache holds the paper's r̂ (tau = 1); the contrast temperature is applied here
        res.rewards = rescale_rewards(res.rewards, cfg.treg_tau)
    return res


def rescale_rewards(
    rewards: list[tuple[list[float], list[float]]], tau: float
) -> list[tuple[list[float], list[float]]]:
    """Every pair's (chosen, rejected) r̂ lists at contrast temperature ``tau`` (losses.treg.rescale_token_rewards)."""
    return [
        (rescale_token_rewards(torch.tensor(c), tau).tolist(), rescale_token_rewards(torch.tensor(r), tau).tolist())
        for c, r in rewards
    ]
