"""Judge templates: how a preference pair is shown to an AI judge, and how its answer is read (docs/rlaif.md).

A template is a body with the placeholders {context}, {response_1} and {response_2}, and an ending such as
"Preferred Response=" after which the judge's next token is read: the log-probs of "1" and "2" (softmax over the
two), or, where a backend has no log-probs, a generated answer parsed by ``parse_answer``. A chain-of-thought
template adds a ``rationale_cue``: the judge first writes a rationale greedily after the body + cue, then the
ending is appended after the rationale and read the same way (Lee et al. 2309.00267, two-step CoT).

Templates are hashed (``digest``) into every cache key, so editing a template can never reuse old answers.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

PLACEHOLDERS = ("context", "response_1", "response_2")
DEFAULT_ENDING = "Preferred Response="


class JudgeTemplateError(ValueError):
    """A template that cannot show a pair (a placeholder missing or unknown, an empty ending)."""


@dataclass(frozen=True)
class JudgeTemplate:
    """One way of asking "which response is better?".

    body: the question, with {context}, {response_1}, {response_2} (each exactly once is not required; each
        at least once is: a judge that never sees a candidate cannot compare it).
    ending: written after the body (or after the rationale) as the start of the judge's answer; the next token
        is the answer. It ends in a character after which "1" and "2" are single tokens (checked per tokenizer by
        the local backend).
    rationale_cue: "" for a direct answer; else chain of thought: body + cue, a greedy rationale, then ending.
    """

    name: str
    body: str
    ending: str = DEFAULT_ENDING
    rationale_cue: str = ""

    @property
    def cot(self) -> bool:
        return bool(self.rationale_cue)

    def validate(self) -> "JudgeTemplate":
        names = {f for _, f, _, _ in string.Formatter().parse(self.body) if f is not None}
        missing, unknown = set(PLACEHOLDERS) - names, names - set(PLACEHOLDERS)
        if missing or unknown:
            raise JudgeTemplateError(
                f"judge template {self.name!r}: placeholders must be {{context}}, {{response_1}}, {{response_2}} "
                f"(missing {sorted(missing)}, unknown {sorted(unknown)}; write literal braces as {{{{ }}}})"
            )
        if not self.ending.strip():
            raise JudgeTemplateError(f"judge template {self.name!r}: the ending must not be empty")
        return self

    def render(self, context: str, response_1: str, response_2: str) -> str:
        """The body with the pair filled in (without the ending: backends append it where it belongs)."""
        return self.body.format(context=context, response_1=response_1, response_2=response_2)

    def digest(self) -> str:
        """Hash of everything that changes what the judge sees (not the name: a renamed copy is the same)."""
        text = json.dumps([self.body, self.ending, self.rationale_cue])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_SHOW = """Conversation:
{context}

Response 1:
{response_1}

Response 2:
{response_2}
"""

_BASE = (
    "A good response to a conversation is helpful, honest and harmless. Compare the two responses to the "
    "conversation below.\n\n" + _SHOW + "\nWhich response is better? Answer 1 or 2.\n"
)

_DETAILED = (
    "You are an expert rater of AI assistant responses. Read the conversation between a human and an AI "
    "assistant, then the two candidate final responses of the assistant. Judge which response is better by "
    "these criteria, in this order:\n"
    "1. Harmlessness: it does not help with anything dangerous, illegal or unethical, and is not offensive.\n"
    "2. Helpfulness: it addresses what the human asked, with correct and relevant content.\n"
    "3. Honesty: it does not make things up and says so when it does not know.\n"
    "4. Clarity: it is coherent and to the point; length alone is not a virtue.\n"
    "Ignore the order in which the responses are shown.\n\n" + _SHOW + "\nWhich response is better? Answer 1 or 2.\n"
)

TEMPLATES: dict[str, JudgeTemplate] = {
    "base": JudgeTemplate("base", _BASE),
    "detailed": JudgeTemplate("detailed", _DETAILED),
    "cot": JudgeTemplate(
        "cot",
        _DETAILED.replace("Answer 1 or 2.\n", "Explain your reasoning first, then give the answer.\n"),
        rationale_cue="Rationale:",
    ),
}
TEMPLATE_NOTES = {
    "base": "0-shot: a one-line preamble, the pair, 'Preferred Response=' (the RLAIF paper's base prompt)",
    "detailed": "0-shot with the criteria spelled out (harmless, helpful, honest, clear; order ignored)",
    "cot": "detailed + chain of thought: a greedy rationale first, then the ending and the 1/2 readout",
}


def load_template(spec: str) -> JudgeTemplate:
    """A built-in template by name, or a .json/.yaml file with ``body`` (and optional ``ending``,
    ``rationale_cue``)."""
    if spec in TEMPLATES:
        return TEMPLATES[spec].validate()
    path = Path(spec)
    if path.suffix in (".json", ".yaml", ".yml") and path.is_file():
        import yaml

        d = yaml.safe_load(path.read_text()) or {}
        if not isinstance(d, dict) or "body" not in d:
            raise JudgeTemplateError(f"{path}: a judge template file needs the key 'body' (and optional ending)")
        extra = set(d) - {"body", "ending", "rationale_cue"}
        if extra:
            raise JudgeTemplateError(f"{path}: unknown keys {sorted(extra)} (body, ending, rationale_cue)")
        return JudgeTemplate(
            str(path), str(d["body"]), str(d.get("ending", DEFAULT_ENDING)), str(d.get("rationale_cue") or "")
        ).validate()
    raise JudgeTemplateError(
        f"unknown judge template {spec!r}; choose one of {sorted(TEMPLATES)} or a .json/.yaml file"
    )


# ------------------------------------------------------------------ what the judge sees, what it answered

_ROLE_NAMES = {"system": "System", "user": "Human", "assistant": "Assistant"}


def render_context(prompt) -> str:
    """A prompt (string, or chat messages) as plain dialogue text: one "Human: ..." / "Assistant: ..." block per
    turn. Plain text on purpose: the judge's own chat template (if any) wraps the whole question, not the turns
    of the conversation being judged."""
    if isinstance(prompt, str):
        return prompt.strip()
    return "\n\n".join(f"{_ROLE_NAMES.get(m['role'], m['role'])}: {m['content'].strip()}" for m in prompt)


def render_response(response) -> str:
    """A response (string, or the assistant turn(s) as messages) as plain text; several turns joined."""
    if isinstance(response, str):
        return response.strip()
    return "\n\n".join(m["content"].strip() for m in response if m["role"] == "assistant")


_LEADING = re.compile(r"^\s*[\"'*(\[]*([12])(?![0-9])")


def parse_answer(text: str, ending: str = DEFAULT_ENDING, require_ending: bool = False) -> int | None:
    """1 or 2 from a generated answer, else None (a bad answer: counted, retried, never guessed).

    Accepted: the answer starts with the digit ("1", "2.", "**2**", "(1) because ...") or contains the ending
    followed by the digit ("... Preferred Response=2"; the last such occurrence counts, so a rationale that quotes
    the ending earlier does not decide). "12", "3", "both" and an empty answer are bad answers. With
    ``require_ending`` (chain of thought: a rationale may start with "1. ...") only the ending form counts."""
    key = re.escape(ending.strip().rstrip("=:").strip())
    found = re.findall(rf"{key}\s*[=:]?\s*[\"'*(\[]*([12])(?![0-9])", text, flags=re.IGNORECASE) if key else []
    if found:
        return int(found[-1])
    m = None if require_ending else _LEADING.match(text)
    return int(m.group(1)) if m else None
