"""A local Hugging Face causal LM as the judge: log-prob readout of "1" vs "2", batched (docs/rlaif.md).

Prompt: with a chat template (and ``chat_template=True``), the template body is the user turn and the ending is
written as the start of the assistant's reply: ``chat([user: body]) + ending``; ids without the tokenizer's own
special tokens (the template writes them). Without one: ``body + "\\n" + ending`` with the tokenizer's special
tokens. Chain of thought: ``... + rationale_cue``, a greedy rationale (HF ``generate``, at most
``cot_max_new_tokens``, stopped at EOS), then ``" " + rationale + "\\n" + ending``.

Readout: the next-token logits after the ending, softmax over the two answer tokens only: P("1") =
sigmoid(l_1 - l_2), in float64. Which tokens: "1" and "2" written directly after the ending, no space, when the
tokenizer encodes ending + "1" as the ending's ids plus one token (SmolLM2: digits are always single tokens; "=1" is
["=", "1"] while " 1" is [" ", "1"], two tokens, so the no-space form is the one readable in one step). Otherwise
" 1" / " 2" if those are single tokens after the ending (SentencePiece-style "▁1"); otherwise the template cannot be
read with this tokenizer and that is an error naming both.

Batches: left padding with explicit position ids, the vocabulary projection on the last position only
(``logits_to_keep=1``), rows sorted by length so a batch pads little. A prompt longer than ``max_length`` is a
counted skip ("too_long"), never cut.
"""

from __future__ import annotations

from typing import Sequence

import torch

from alignlab.data.collate import left_pad
from alignlab.judge.templates import JudgeTemplate, JudgeTemplateError
from alignlab.judge.types import Readout
from alignlab.models.loading import load_model_and_tokenizer, model_fingerprint
from alignlab.models.scorer import position_ids_from_mask


class HFJudge:
    """Judge backend over a causal LM + tokenizer (see module doc)."""

    def __init__(
        self,
        model,
        tokenizer,
        name: str,
        batch_size: int = 8,
        max_length: int = 0,
        chat_template: bool = True,
        cot_max_new_tokens: int = 256,
    ):
        self.model, self.tok = model.eval(), tokenizer
        self.batch_size, self.cot_max_new_tokens = batch_size, cot_max_new_tokens
        self.max_length = max_length or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        self.chat = bool(chat_template and getattr(tokenizer, "chat_template", None))
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        self.judge_id = f"hf:{name}:{model_fingerprint(model)}:{dtype}:chat={int(self.chat)}:cot={cot_max_new_tokens}"
        self._answers: dict[str, tuple[int, int, str]] = {}
        self._counts = {"forward_batches": 0, "queries": 0, "generated_rationales": 0}

    @classmethod
    def load(cls, name: str, dtype: str = "float32", device: str | None = None, **kw) -> "HFJudge":
        """Load a judge by hub id, local dir or built-in alias (alignlab.models.loading)."""
        model, tok = load_model_and_tokenizer(name, dtype=dtype, device=device)
        return cls(model, tok, name, **kw)

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    # ------------------------------------------------------------------ prompt text and answer tokens

    def head(self, body: str) -> str:
        """What comes before the ending (or before the rationale cue)."""
        if self.chat:
            msgs = [{"role": "user", "content": body}]
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return body + "\n"

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=not self.chat)["input_ids"]

    def answer_tokens(self, ending: str) -> tuple[int, int, str]:
        """(id of "1", id of "2", the separator before them) after ``ending`` (``answer_token_ids``), cached."""
        if ending not in self._answers:
            self._answers[ending] = answer_token_ids(self.tok, ending)
        return self._answers[ending]

    # ------------------------------------------------------------------ readout

    def readout(self, bodies: Sequence[str], template: JudgeTemplate) -> list[Readout]:
        id1, id2, _ = self.answer_tokens(template.ending)
        heads = [self.head(b) for b in bodies]
        rationales = [""] * len(bodies)
        if template.cot:
            rationales = self._rationales([h + template.rationale_cue for h in heads])
            texts = [h + template.rationale_cue + " " + r + "\n" + template.ending for h, r in zip(heads, rationales)]
        else:
            texts = [h + template.ending for h in heads]
        rows = [self.encode(t) for t in texts]
        out: list[Readout | None] = [None] * len(rows)
        ok = []
        for i, r in enumerate(rows):
            if len(r) > self.max_length:
                out[i] = Readout(None, error="too_long", detail=f"{len(r)} tokens > max_length {self.max_length}")
            else:
                ok.append(i)
        ok.sort(key=lambda i: len(rows[i]))
        for s in range(0, len(ok), self.batch_size):
            idx = ok[s : s + self.batch_size]
            last = self._last_logits([rows[i] for i in idx])
            p1 = torch.sigmoid(last[:, id1].double() - last[:, id2].double()).tolist()
            top = last.argmax(-1).tolist()
            for i, p, t in zip(idx, p1, top):
                if p != p:  # NaN logits (an overflowing fp16 forward): never a label
                    out[i] = Readout(None, error="bad_answer", detail="the judge's logits are not finite")
                    continue
                out[i] = Readout(p, mode="logprobs", answer=self.tok.decode([t]), rationale=rationales[i])
        self._counts["queries"] += len(rows)
        return out

    @torch.no_grad()
    def _last_logits(self, rows: list[list[int]]) -> torch.Tensor:
        """Next-token logits after each row, [B, V] fp32 (left padding, explicit positions)."""
        ids, attn = left_pad(rows, self.tok.pad_token_id)
        device = next(self.model.parameters()).device
        ids, attn = ids.to(device), attn.to(device)
        out = self.model(
            input_ids=ids, attention_mask=attn, position_ids=position_ids_from_mask(attn), logits_to_keep=1
        )
        self._counts["forward_batches"] += 1
        return out.logits[:, -1].float().cpu()

    @torch.no_grad()
    def _rationales(self, prompts: list[str]) -> list[str]:
        """Greedy rationales (chain-of-thought templates), stopped at EOS or ``cot_max_new_tokens``."""
        out = [""] * len(prompts)
        rows = [self.encode(p) for p in prompts]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        device = next(self.model.parameters()).device
        for s in range(0, len(order), self.batch_size):
            idx = [i for i in order[s : s + self.batch_size] if len(rows[i]) < self.max_length]
            if not idx:
                continue
            ids, attn = left_pad([rows[i] for i in idx], self.tok.pad_token_id)
            budget = min(self.cot_max_new_tokens, self.max_length - ids.shape[1])
            gen = self.model.generate(
                input_ids=ids.to(device),
                attention_mask=attn.to(device),
                max_new_tokens=max(budget, 1),
                do_sample=False,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id,
            )
            for j, i in enumerate(idx):
                out[i] = self.tok.decode(gen[j, ids.shape[1] :], skip_special_tokens=True).strip()
            self._counts["generated_rationales"] += len(idx)
        return out


def answer_token_ids(tok, ending: str) -> tuple[int, int, str]:
    """(id of "1", id of "2", separator): "1"/"2" directly after ``ending`` when ``ending + "1"`` encodes as the
    ending's ids plus one token, else " 1"/" 2" when those are; else JudgeTemplateError (module doc)."""
    base = tok(ending, add_special_tokens=False)["input_ids"]
    for sep in ("", " "):
        ids = []
        for d in "12":
            full = tok(ending + sep + d, add_special_tokens=False)["input_ids"]
            if full[: len(base)] == base and len(full) == len(base) + 1:
                ids.append(full[-1])
        if len(ids) == 2 and ids[0] != ids[1]:
            return ids[0], ids[1], sep
    raise JudgeTemplateError(
        f"judge template ending {ending!r}: neither '1'/'2' nor ' 1'/' 2' is one token after it with this "
        f"tokenizer ({type(tok).__name__}); end the template with another character, e.g. '='"
    )
