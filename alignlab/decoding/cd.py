"""Controlled decoding (docs/conventions.md D3): a FUDGE-style prefix scorer and the cd decoders (tokenwise
through the shared candidate loop of ``guided``, blockwise here).

Prefix scorer V_θ([x, y^t]): a small head (linear or MLP) on the **frozen** proposal model's final hidden
state at the last token of the prefix, so scoring k candidates costs the forward the decoder does anyway.
Training it needs decoding itself and lives above ``api`` in ``cd_train``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab.decoding.guided import run_guided
from alignlab.decoding.lm import LM
from alignlab.decoding.loops import Ctx, Prepared, charge, finish_output, make_generator, prefill
from alignlab.decoding.scores import bon_kl_bound, draw, filter_logits
from alignlab.decoding.types import CDParams, Cost, DecodeOutput


class PrefixScorer(nn.Module):
    """V_θ(h) for final hidden states h [..., H] -> [...] fp32. Features are standardised with the training
    mean/std (stored), so the ridge penalty treats every hidden unit alike."""

    def __init__(self, hidden_size: int, kind: str = "linear", mlp_hidden: int = 256):
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ValueError(f"kind must be 'linear' or 'mlp', got {kind!r}")
        self.kind, self.hidden_size, self.mlp_hidden = kind, hidden_size, mlp_hidden
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))
        self.net = (
            nn.Linear(hidden_size, 1)
            if kind == "linear"
            else nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = (h.float().to(self.mean.device) - self.mean) / self.std
        return self.net(x).squeeze(-1)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "scorer.safetensors"))
        (path / "scorer.json").write_text(
            json.dumps({"kind": self.kind, "hidden_size": self.hidden_size, "mlp_hidden": self.mlp_hidden})
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PrefixScorer":
        path = Path(path)
        meta = json.loads((path / "scorer.json").read_text())
        s = cls(meta["hidden_size"], meta["kind"], meta["mlp_hidden"])
        s.load_state_dict(load_file(str(path / "scorer.safetensors")))
        return s.eval()


def run_cd(lm: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost]) -> list[DecodeOutput]:
    """Controlled decoding with the prefix scorer ``ctx.scorer``: tokenwise (top-k candidates reweighted by
    V_θ, the candidate loop of ``guided``) or blockwise (``run_blockwise``), by ``CDParams.mode``."""
    if ctx.scorer is None:
        raise ValueError("cd needs scorer= (train one with alignlab.decoding.train_prefix_scorer)")
    p = ctx.params
    assert isinstance(p, CDParams)
    return run_blockwise(lm, batch, ctx, costs) if p.mode == "blockwise" else run_guided(lm, batch, ctx, costs)


def run_blockwise(lm: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost]) -> list[DecodeOutput]:
    """Blockwise best-of-K: per block, K continuations of <= block_size tokens sampled from π_ref (forks of
    the prefix cache), scored by V_θ at their last token; the best continues. A block that ends in a stop
    id is scored on the finished sequence (its stop token is fed to get that hidden state)."""
    p, scorer = ctx.params, ctx.scorer
    assert isinstance(p, CDParams)
    K, A = p.num_blocks, len(batch)
    st = prefill(lm, batch, costs)
    gens = [[make_generator(p.seed, b.index, j) for j in range(K)] for b in batch]
    out: list[list[int]] = [[] for _ in range(A)]
    fin = [False] * A
    blocks = [0] * A
    active = list(range(A))
    while active:
        a = len(active)
        bst = lm.fork(st, K)  # row = i·K + j
        rows = a * K
        btoks: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows
        val = torch.zeros(rows)
        budget = min(p.block_size, p.max_new_tokens - len(out[active[0]]))
        row_gens = [gens[active[r // K]][r % K] for r in range(rows)]
        for _h in range(budget):
            z = filter_logits(bst.logits, p.block_temperature)
            tok = draw(z, row_gens).cpu()
            live = [r for r in range(rows) if not done[r]]
            tok = torch.where(torch.tensor(done), torch.tensor(lm.pad_id), tok)
            for r in live:
                btoks[r].append(int(tok[r]))
            # Every drawn token is fed (stop ids too): the hidden state after it is V's input. Rows already
            # done get a pad: their tokens and values are frozen, and a finished block is never continued.
            bst = lm.step(bst, tok, want_hidden=True)
            charge(costs, [active[r // K] for r in live])
            with torch.no_grad():
                v = scorer(bst.hidden).float().cpu()
            for r in live:
                val[r] = v[r]
                if int(tok[r]) in ctx.stops:
                    done[r] = True
            if all(done):
                break
        for i, o in enumerate(active):
            costs[o].scorer_calls += K
            blocks[o] += 1
        best = val.view(a, K).argmax(-1)  # first best on ties
        keep, pick = [], []
        for i, o in enumerate(active):
            r = i * K + int(best[i])
            out[o].extend(btoks[r])
            fin[o] = done[r]
            if not done[r] and len(out[o]) < p.max_new_tokens:
                keep.append(i)
                pick.append(r)
        if not keep:
            break
        st = lm.select(bst, pick)
        active = [active[i] for i in keep]
    return [
        finish_output(
            b,
            out[i],
            fin[i],
            ctx,
            costs[i],
            kl=blocks[i] * bon_kl_bound(K),
            kl_kind="bound Σ_blocks (log K − (K−1)/K)",
            extra={"mode": "blockwise", "num_blocks": K, "block_size": p.block_size, "blocks": blocks[i]},
        )
        for i, b in enumerate(batch)
    ]
