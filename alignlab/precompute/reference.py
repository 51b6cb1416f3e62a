"""Reference log-probs: computed once, cached on disk, never recomputed per step (docs/conventions.md R1).

Cache key = sha256 over (every prompt/chosen/rejected token id after truncation, reference fingerprint,
dtype). Hashing the final ids covers dataset, tokenizer, chat template and max lengths at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from alignlab.data.collate import collate_pairs
from alignlab.data.tokenize import TokenizedPair
from alignlab.models.loading import cache_dir
from alignlab.models.scorer import SequenceScorer
from alignlab.precompute.cache import pairs_fingerprint, rank_shard, store_atomic, sum_over_ranks


def reference_key(pairs: list[TokenizedPair], model_fp: str, dtype: str, layout: str = "") -> str:
    """``layout``: forward_layout(scorer); "" (the two-row forward) keeps the keys written before packing existed."""
    blob = f"{pairs_fingerprint(pairs)}|{model_fp}|{dtype}" + (f"|{layout}" if layout else "")
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def forward_layout(scorer: SequenceScorer) -> str:
    """The forward layout the scorer's numbers come from, for cache keys: "" two rows per pair, "packed-group" or
    "packed-dense". Equal within fp32 rounding; keyed apart so that the policy and its cached reference come from
    the same layout (step-0 rewards 0, R6.4)."""
    spec = scorer.pack_spec
    return "" if spec is None else f"packed-{spec.rows}"


@torch.no_grad()
def compute_logps(
    scorer: SequenceScorer,
    pairs: list[TokenizedPair],
    indices: list[int],
    pad_id: int,
    batch_size: int,
    device,
    progress: str | None = None,
) -> torch.Tensor:
    """[len(indices), 2] summed (chosen, rejected) log-probs; batches sorted by length to cut padding, packed
    (prompt once per pair) when the scorer's ``pack_spec`` says so. ``progress``: a progress bar's label (pairs
    done, ETA; longest batches first, so the ETA is pessimistic) -- a precompute can take as long as training."""
    order = sorted(
        range(len(indices)),
        key=lambda k: (
            -len(pairs[indices[k]].prompt_ids)
            - max(len(pairs[indices[k]].chosen_ids), len(pairs[indices[k]].rejected_ids))
        ),
    )
    out = torch.zeros(len(indices), 2)
    pack = getattr(scorer, "pack_spec", None)
    bar = tqdm(total=len(order), desc=progress, unit="pair", dynamic_ncols=True, disable=progress is None)
    for s in range(0, len(order), batch_size):
        ks = order[s : s + batch_size]
        idx = [indices[k] for k in ks]
        b = collate_pairs([pairs[i] for i in idx], idx, pad_id, pack=pack).to(device)
        packed = {"packed": b.packed} if b.packed is not None else {}
        lp = scorer(b.input_ids, b.attention_mask, b.completion_mask, **packed).sum.float().cpu()
        n = len(ks)
        out[ks, 0], out[ks, 1] = lp[:n], lp[n:]
        bar.update(n)
    bar.close()
    return out


def reference_logps(
    accelerator, scorer: SequenceScorer, pairs: list[TokenizedPair], pad_id: int, key: str, batch_size: int = 8
) -> tuple[torch.Tensor, bool, Path]:
    """Load or compute the [N, 2] reference table. Each rank computes a shard; one all-reduce joins them.

    Returns (table, cache_hit, path).
    """
    path = cache_dir() / "reflogps" / f"{key}.safetensors"
    if path.exists():
        return load_file(str(path))["ref_logps"], True, path
    mine = rank_shard(len(pairs), accelerator)
    was_training = scorer.training
    scorer.eval()
    table = torch.zeros(len(pairs), 2)
    if mine:
        label = "reference log-probs" if accelerator.is_main_process else None
        table[mine] = compute_logps(scorer, pairs, mine, pad_id, batch_size, accelerator.device, progress=label)
    scorer.train(was_training)
    table = sum_over_ranks(table, accelerator)
    store_atomic(path, {"ref_logps": table}, accelerator)
    return table, False, path
