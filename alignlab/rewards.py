"""Reward protocol: how any reward plugs into decoding, evaluation and (later) RL.

A reward is text-in: ``reward(prompts, responses, finished=None) -> list[float]``, one float per
(prompt, response) pair, plus a ``name``. Text-in is deliberate: the policy and a reward model usually
have different tokenizers, so token ids never cross between them; each reward tokenises the decoded
policy text itself (and the policy text never contains special tokens, docs/conventions.md R11). ``finished``
tells whether
the response ended at EOS (True), was cut by a budget (False) or is unknown (None); partial sequences
scored by ARGS are passed with finished=False.

Implementations: the built-in gold reward (``alignlab.task.gold.GoldReward`` already satisfies the
protocol), ``HFRewardModel`` (any ``AutoModelForSequenceClassification`` dir or hub id), ``FunctionReward``
(a Python function). ``load_reward(spec)`` resolves a string.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from alignlab.data.tokenize import PairTokenizer
from alignlab.models.reward_model import FORMAT, FORMAT_KEY, reward_normalisation


@runtime_checkable
class Reward(Protocol):
    name: str

    def __call__(
        self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool] | None = None
    ) -> list[float]: ...


class FunctionReward:
    """Wraps ``fn(prompt, response) -> float`` (or ``fn(prompt, response, finished)`` with ``takes_finished``)."""

    def __init__(self, fn: Callable, name: str = "function", takes_finished: bool = False):
        self.fn, self.name, self.takes_finished = fn, name, takes_finished

    def __call__(self, prompts, responses, finished=None) -> list[float]:
        fin = list(finished) if finished is not None else [None] * len(responses)
        if self.takes_finished:
            return [float(self.fn(p, r, f)) for p, r, f in zip(prompts, responses, fin)]
        return [float(self.fn(p, r)) for p, r in zip(prompts, responses)]


class HFRewardModel:
    """A Hugging Face sequence-classification reward model, scored on text with its own tokenizer.

    Formatting: with a chat template, [user: prompt, assistant: response] is rendered by the RM's template
    (no generation prompt); without one, ``prompt + separator + response``. The rendered text is tokenised
    once; a BOS is added only if the tokenizer adds one itself and the text does not already start with it
    (never two). Over-long inputs keep their **last** ``max_length`` tokens (the response end matters most).
    The score is logit ``label_index`` (default 0 for a 1-label head, else the last label).

    Reward models trained by ``alignlab rm`` (alignlab.models.reward_model) are recognised by their config.json:
    - ``alignlab_reward_format="prompt_response_eos"``: they are scored on the input layout they were trained on,
      the prompt rendered as a user turn with the generation prompt, then the response's own ids and one EOS
      (alignlab.data.tokenize.PairTokenizer: ids concatenated, never a re-tokenised joined string);
    - ``alignlab_reward_offset`` / ``alignlab_reward_scale``: every returned score is (raw − offset) / scale (absent:
      0 and 1, i.e. raw logits; ``self.offset`` / ``self.scale`` hold them, ``normalize=False`` ignores them).
    """

    def __init__(
        self,
        path_or_model,
        tokenizer=None,
        name: str | None = None,
        max_length: int = 1024,
        batch_size: int = 16,
        separator: str = "\n\n",
        label_index: int | None = None,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        normalize: bool = True,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if isinstance(path_or_model, str):
            self.model = AutoModelForSequenceClassification.from_pretrained(path_or_model, dtype=dtype)
            self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path_or_model)
            self.name = name or path_or_model
        else:
            if tokenizer is None:
                raise ValueError("pass the reward model's own tokenizer with a model object")
            self.model, self.tokenizer, self.name = path_or_model, tokenizer, name or type(path_or_model).__name__
        if device is not None:
            self.model.to(device)
        self.model.eval()
        self.max_length, self.batch_size, self.separator = max_length, batch_size, separator
        n_labels = self.model.config.num_labels
        self.label_index = label_index if label_index is not None else (0 if n_labels == 1 else n_labels - 1)
        tok = self.tokenizer
        probe = tok("a", add_special_tokens=True)["input_ids"]
        self._auto_bos = (
            tok.bos_token_id is not None
            and probe[:1] == [tok.bos_token_id]
            and tok("a", add_special_tokens=False)["input_ids"][:1] != [tok.bos_token_id]
        )
        self.last_texts: list[str] = []  # what was sent to the model in the latest call (for audits)
        self.offset, self.scale = reward_normalisation(self.model.config) if normalize else (0.0, 1.0)
        trained_format = getattr(self.model.config, FORMAT_KEY, None)
        if trained_format not in (None, FORMAT):
            raise ValueError(f"{self.name}: unknown {FORMAT_KEY}={trained_format!r} (this alignlab reads {FORMAT!r})")
        self._pairs = PairTokenizer(tok) if trained_format == FORMAT else None

    def format(self, prompt: str, response: str) -> str:
        tok = self.tokenizer
        if self._pairs is not None:  # the text of encode()'s ids (audits only: the ids are never re-tokenised)
            return tok.decode(self.encode(prompt, response))
        if tok.chat_template:
            return tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
            )
        return prompt + self.separator + response

    def encode(self, prompt: str, response: str) -> list[int]:
        if self._pairs is not None:  # alignlab rm's layout: prompt ids + response ids + EOS, last max_length kept
            return (self._pairs.prompt_ids(prompt) + self._pairs.completion_ids(response))[-self.max_length :]
        return self._ids(self.format(prompt, response))

    def _ids(self, text: str) -> list[int]:
        """Token ids of a formatted text (``format``), left-truncated to max_length."""
        tok = self.tokenizer
        if tok.chat_template:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if self._auto_bos and ids[:1] != [tok.bos_token_id]:
                ids = [tok.bos_token_id] + ids
        else:
            ids = tok(text, add_special_tokens=True)["input_ids"]
        if tok.bos_token_id is not None and ids[:2] == [tok.bos_token_id] * 2:
            ids = ids[1:]  # a template that writes BOS itself + a tokenizer that adds one
        return ids[-self.max_length :]

    @torch.no_grad()
    def __call__(self, prompts, responses, finished=None) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self._pairs is not None:
            rows = [self.encode(p, r) for p, r in zip(prompts, responses)]
            self.last_texts = [self.tokenizer.decode(r) for r in rows]
        else:
            self.last_texts = [self.format(p, r) for p, r in zip(prompts, responses)]
            rows = [self._ids(t) for t in self.last_texts]  # format once: it runs the chat template
        device = next(self.model.parameters()).device
        out: list[float] = []
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s : s + self.batch_size]
            # The classifier locates each row's last token as the last id != config.pad_token_id; pad with an
            # id that occurs in no row of the chunk so a real EOS/pad-valued token is never mistaken for pad.
            pad = self._free_id(chunk)
            T = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, r in enumerate(chunk):  # right padding: positions 0.. are the same as unbatched
                ids[i, : len(r)] = torch.tensor(r)
                attn[i, : len(r)] = 1
            old = self.model.config.pad_token_id
            self.model.config.pad_token_id = pad
            try:
                logits = self.model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
            finally:
                self.model.config.pad_token_id = old
            raw = logits[:, self.label_index].double().cpu()
            out.extend(((raw - self.offset) / self.scale).tolist())
        return out

    def _free_id(self, rows: list[list[int]]) -> int:
        used = {t for r in rows for t in r}
        pad = self.tokenizer.pad_token_id
        if pad is not None and pad not in used:
            return pad
        for cand in range(self.model.config.vocab_size - 1, -1, -1):
            if cand not in used:
                return cand
        raise ValueError("every vocabulary id occurs in the batch; use batch_size=1")


class CachedEmbedder:
    """Memoises sentence embeddings by text (LRU, ``maxsize`` texts). Decoding calls an embedding-based reward
    (the gold reward) once per step with the same prompt every time; only the responses are new."""

    def __init__(self, inner=None, maxsize: int = 4096):
        self._inner, self.maxsize = inner, maxsize
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def inner(self):
        if self._inner is None:
            from alignlab.task.embed import get_embedder

            self._inner = get_embedder()
        return self._inner

    def embed(self, texts: list[str]) -> torch.Tensor:
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            for t, e in zip(todo, self.inner.embed(todo)):
                self._cache[t] = e
        rows = []
        for t in texts:
            e = self._cache.pop(t)
            self._cache[t] = e  # re-insert: most recently used last
            rows.append(e)
        while len(self._cache) > self.maxsize:  # evict least recently used, after this call's rows are taken
            self._cache.pop(next(iter(self._cache)))
        return torch.stack(rows) if rows else self.inner.embed([])


def load_reward(spec: str | None, **kw) -> Reward | None:
    """ "gold" -> the built-in gold reward (current version; "gold-v1"/"gold-v2" pick one); "none"/None -> None;
    anything else -> HFRewardModel(spec) (a local
    dir or hub id of a sequence-classification model)."""
    if spec is None or spec.lower() in ("none", ""):
        return None
    if spec == "gold" or spec.startswith("gold-v"):
        from alignlab.task.gold import DEFAULT_VERSION, GoldReward

        version = DEFAULT_VERSION if spec == "gold" else spec[len("gold-") :]
        return GoldReward(embedder=CachedEmbedder(), version=version)
    return HFRewardModel(spec, **kw)
