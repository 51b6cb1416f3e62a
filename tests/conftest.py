import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Reference-log-prob and pair caches go to a per-test directory; the (expensive) model cache stays shared."""
    from alignlab.models.loading import cache_dir

    if not os.environ.get("ALIGNLAB_MODEL_CACHE"):
        monkeypatch.setenv("ALIGNLAB_MODEL_CACHE", str(cache_dir() / "models"))
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "alignlab_cache"))
    yield


def make_pairs(tokenizer, n: int, seed: int = 0, max_words: int = 6):
    """Random preference pairs with unequal prompt/completion lengths (tiny byte-level tokenizer)."""
    from alignlab.data.tokenize import TokenizedPair

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa"]
    eos = tokenizer.eos_token_id

    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))

    pairs = []
    for i in range(n):
        p = tokenizer(text(rng.randint(1, 4)), add_special_tokens=False)["input_ids"]
        c = tokenizer(" " + text(rng.randint(1, max_words)), add_special_tokens=False)["input_ids"] + [eos]
        r = tokenizer(" " + text(rng.randint(1, max_words)), add_special_tokens=False)["input_ids"] + [eos]
        pairs.append(TokenizedPair(p, c, r, f"toy[{i}]"))
    return pairs


@pytest.fixture
def tiny():
    from tiny_models import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    return tok, tiny_causal_lm(tok, seed=0)
