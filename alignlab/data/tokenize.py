"""Tokenization of preference records into prompt / completion ids (docs/conventions.md L2.6-L2.7).

Policy (documented in docs/data.md):
- The prompt is rendered with the tokenizer's chat template (generation prompt on) when it has one; a plain
  string prompt becomes one user turn. Without a template, the prompt text is used as is.
- The completion is tokenized on its own without special tokens and the **ids are concatenated** after the
  prompt ids (never re-tokenize joined strings). It ends with exactly one EOS (end-of-turn) id.
- Truncation: the prompt keeps its **last** ``max_prompt_length`` tokens (left-truncation); then each
  completion keeps its **first** tokens so the sequence fits ``max_length`` (right-truncation, same rule for
  chosen and rejected). A completion that would become empty drops the pair. All counted in TokenizeReport.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alignlab.data.types import PreferenceRecord, Text


class TokenizationError(ValueError):
    """A template/BOS/EOS inconsistency that would corrupt log-probs (names the example source)."""


@dataclass
class TokenizedPair:
    """Token ids of one preference pair. chosen_ids/rejected_ids are completion ids only (after the prompt).

    prompt / chosen_text / rejected_text: the source text, when known (tokenize_pairs, on-policy pairs). Only
    used to build *other* contexts around the same ids (T-REG's contrastive prompts); the ids above are always
    what is scored, never a re-tokenization of this text.
    p_chosen / margin: the record's optional soft label and Bradley–Terry margin (alignlab.data.labels), or None.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str
    prompt: Text | None = None
    chosen_text: str | None = None
    rejected_text: str | None = None
    p_chosen: float | None = None
    margin: float | None = None


@dataclass
class TokenizeReport:
    total: int = 0
    kept: int = 0
    truncated_prompt: int = 0
    truncated_completion: int = 0
    dropped_empty: int = 0
    dropped_sources: list[str] = field(default_factory=list)

    def as_metrics(self) -> dict[str, int]:
        return {
            "data/total": self.total,
            "data/kept": self.kept,
            "data/truncated_prompt": self.truncated_prompt,
            "data/truncated_completion": self.truncated_completion,
            "data/dropped_empty": self.dropped_empty,
        }

    def summary(self) -> str:
        return (
            f"{self.kept}/{self.total} pairs kept; prompts truncated: {self.truncated_prompt}; "
            f"completions truncated: {self.truncated_completion}; "
            f"dropped (empty after truncation): {self.dropped_empty}"
        )


def as_messages(prompt: Text) -> list[dict]:
    """A prompt as chat messages: a plain string becomes one user turn; a message list is copied."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _completion_text(completion: Text) -> str:
    if isinstance(completion, str):
        return completion
    # A completion given as messages: the assistant turn(s) that answer the prompt.
    return "\n".join(m["content"] for m in completion if m.get("role") == "assistant")


class PairTokenizer:
    """Turns prompts/completions into ids under one fixed convention; reused by training, eval and decoding."""

    def __init__(self, tokenizer, use_chat_template: bool | None = None):
        self.tok = tokenizer
        self.use_chat_template = bool(tokenizer.chat_template) if use_chat_template is None else use_chat_template
        self.eos_id = tokenizer.eos_token_id
        if self.eos_id is None:
            raise TokenizationError("tokenizer has no eos_token; set one (the completion must end with EOS)")
        self.bos_id = tokenizer.bos_token_id
        # Does the tokenizer itself prepend BOS (Llama-style)? Then rendered text must not carry one too.
        probe = tokenizer("a", add_special_tokens=True)["input_ids"]
        self.auto_bos = (
            self.bos_id is not None
            and len(probe) > 0
            and probe[0] == self.bos_id
            and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [self.bos_id]
        )

    def prompt_ids(self, prompt: Text) -> list[int]:
        if self.use_chat_template:
            text = self.tok.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=False)
        else:
            text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        if self.auto_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def completion_ids(self, completion: Text) -> list[int]:
        ids = self.tok(_completion_text(completion), add_special_tokens=False)["input_ids"]
        if not ids or ids[-1] != self.eos_id:
            ids = ids + [self.eos_id]
        return ids

    def audit(self, prompt_ids: list[int], completion_ids: list[int], source: str) -> None:
        """R3: no doubled BOS, exactly one EOS at the end of the completion."""
        if self.bos_id is not None and len(prompt_ids) >= 2 and prompt_ids[0] == prompt_ids[1] == self.bos_id:
            raise TokenizationError(f"{source}: prompt starts with a duplicated BOS token (template + tokenizer)")
        if completion_ids.count(self.eos_id) != 1 or completion_ids[-1] != self.eos_id:
            raise TokenizationError(f"{source}: completion must end with exactly one EOS id {self.eos_id}")


def truncate_pair(
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    max_length: int,
    max_prompt_length: int,
    report: TokenizeReport,
) -> tuple[list[int], list[int], list[int]] | None:
    """Apply the truncation policy; returns None (and counts) if a completion would become empty."""
    if len(prompt) > max_prompt_length:
        prompt = prompt[-max_prompt_length:]
        report.truncated_prompt += 1
    budget = max_length - len(prompt)
    if budget <= 0:
        return None
    if len(chosen) > budget or len(rejected) > budget:
        report.truncated_completion += 1
    chosen, rejected = chosen[:budget], rejected[:budget]
    return prompt, chosen, rejected


def tokenize_pairs(
    records: list[PreferenceRecord],
    tokenizer,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    use_chat_template: bool | None = None,
    audit_first: int = 64,
) -> tuple[list[TokenizedPair], TokenizeReport]:
    """Tokenize and truncate; the report counts every truncation and drop (never silent loss)."""
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length})")
    pt = PairTokenizer(tokenizer, use_chat_template)
    report = TokenizeReport(total=len(records))
    out: list[TokenizedPair] = []
    for i, rec in enumerate(records):
        p, c, r = pt.prompt_ids(rec.prompt), pt.completion_ids(rec.chosen), pt.completion_ids(rec.rejected)
        if i < audit_first:
            pt.audit(p, c, rec.source)
            pt.audit(p, r, rec.source)
        cut = truncate_pair(p, c, r, max_length, max_prompt_length, report)
        if cut is None:
            report.dropped_empty += 1
            report.dropped_sources.append(rec.source)
            continue
        out.append(
            TokenizedPair(
                *cut,
                source=rec.source,
                prompt=rec.prompt,
                chosen_text=_completion_text(rec.chosen),
                rejected_text=_completion_text(rec.rejected),
                p_chosen=rec.p_chosen,
                margin=rec.margin,
            )
        )
    report.kept = len(out)
    return out, report


def stop_ids(tokenizer) -> list[int]:
    """EOS plus any end-of-turn tokens the vocabulary has (R3.5)."""
    ids = {tokenizer.eos_token_id}
    for t in ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None and tid >= 0:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)
