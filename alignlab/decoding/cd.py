"""Controlled decoding (specs/decoding.md §3): a FUDGE-style prefix scorer and the blockwise decoder.

Prefix scorer V_θ([x, y^t]): a small head (linear or MLP) on the **frozen** proposal model's final hidden
state at the last token of the prefix, so scoring k candidates costs the forward the decoder does anyway.
Training (CD-FUDGE): sample y ~ π_ref(·|x), score the full y with the reward r, regress every prefix
[x, y^t], t = 1..|y| onto r([x, y]) (squared loss). The data are on-policy for π_ref, so V_θ estimates
Q^{π_ref}. The linear head is fitted in closed form (ridge, fp64, standardised features): deterministic
and takes well under a second; the MLP head is fitted with Adam.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignlab.decoding.lm import LM
from alignlab.decoding.loops import Ctx, Prepared, _finish, charge, make_generator, prefill
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
        self.net = (nn.Linear(hidden_size, 1) if kind == "linear" else
                    nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = (h.float().to(self.mean.device) - self.mean) / self.std
        return self.net(x).squeeze(-1)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "scorer.safetensors"))
        (path / "scorer.json").write_text(json.dumps({"kind": self.kind, "hidden_size": self.hidden_size,
                                                      "mlp_hidden": self.mlp_hidden}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PrefixScorer":
        path = Path(path)
        meta = json.loads((path / "scorer.json").read_text())
        s = cls(meta["hidden_size"], meta["kind"], meta["mlp_hidden"])
        s.load_state_dict(load_file(str(path / "scorer.safetensors")))
        return s.eval()


def prefix_features(lm: LM, prompt_ids: list[list[int]], completions: list[list[int]], batch_size: int = 8
                    ) -> list[torch.Tensor]:
    """Per sequence: hidden states [|y|, H] at each completion token (the state after reading y_t is the
    feature of the prefix y^{<=t}); one uncached forward per batch of full sequences."""
    feats = []
    for s in range(0, len(completions), batch_size):
        rows = [p + c for p, c in zip(prompt_ids[s:s + batch_size], completions[s:s + batch_size])]
        h, attn = lm.hidden_states(rows)
        T = h.shape[1]
        for i, c in enumerate(completions[s:s + batch_size]):
            feats.append(h[i, T - len(c):].cpu())  # left-padded: the completion is the last |c| positions
    return feats


def fit_scorer(X: torch.Tensor, y: torch.Tensor, kind: str = "linear", l2: float = 0.1, steps: int = 300,
               lr: float = 1e-3, seed: int = 0) -> PrefixScorer:
    """Fit V_θ on features X [n, H] and targets y [n] (squared loss).

    l2: ridge strength per sample (λ = l2·n on standardised features), so it does not depend on how many
    prefixes there are; prefixes of one response are nearly collinear, so a weak ridge overfits.
    """
    scorer = PrefixScorer(X.shape[1], kind)
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    scorer.mean.copy_(mean)
    scorer.std.copy_(std)
    Z = ((X - mean) / std).double()
    if kind == "linear":
        yc = y.double() - y.double().mean()
        A = Z.T @ Z + l2 * Z.shape[0] * torch.eye(Z.shape[1], dtype=torch.float64)
        w = torch.linalg.solve(A, Z.T @ yc)
        with torch.no_grad():
            scorer.net.weight.copy_(w.float().view(1, -1))
            scorer.net.bias.fill_(float(y.double().mean()))
        return scorer.eval()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scorer.net = nn.Sequential(nn.Linear(X.shape[1], scorer.mlp_hidden), nn.GELU(), nn.Linear(scorer.mlp_hidden, 1))
    opt = torch.optim.Adam(scorer.net.parameters(), lr=lr, weight_decay=0.0)
    Zf, yf = Z.float(), y.float()
    for _ in range(steps):
        idx = torch.randint(0, Zf.shape[0], (min(256, Zf.shape[0]),), generator=g)
        loss = 0.5 * ((scorer.net(Zf[idx]).squeeze(-1) - yf[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return scorer.eval()


def train_prefix_scorer(model, tokenizer, prompts: list, reward, samples_per_prompt: int = 4, max_new_tokens: int = 32,
                        temperature: float = 1.0, kind: str = "linear", l2: float = 0.1, steps: int = 300,
                        batch_size: int = 8, seed: int = 0, holdout: float = 0.2) -> tuple[PrefixScorer, dict]:
    """CD-FUDGE: rollouts of the reference model (best-of-n machinery with return_all: one prefill per
    prompt, N samples, one reward call), features of every prefix, a fitted head. Returns the scorer and a
    report (sequences, prefixes, mean reward, train/held-out R² by sequence, seconds)."""
    from alignlab.decoding.api import decode

    t0 = time.perf_counter()
    outs = decode(model, tokenizer, prompts, method="best-of-n", reward=reward, n=samples_per_prompt,
                  temperature=temperature, max_new_tokens=max_new_tokens, return_all=True, seed=seed,
                  batch_size=batch_size, diagnostics=False)
    seqs = [(o.prompt_ids, s["completion_ids"], s["reward"]) for o in outs for s in o.extra["samples"]]
    seqs = [s for s in seqs if s[1]]
    lm = LM(model, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    feats = prefix_features(lm, [s[0] for s in seqs], [s[1] for s in seqs], batch_size)
    order = list(range(len(seqs)))
    random.Random(seed).shuffle(order)
    n_val = int(len(order) * holdout) if len(order) >= 5 else 0
    val, tr = order[:n_val], order[n_val:]

    def stack(ids):
        X = torch.cat([feats[i] for i in ids]) if ids else torch.empty(0, feats[0].shape[1])
        y = torch.cat([torch.full((len(feats[i]),), float(seqs[i][2])) for i in ids]) if ids else torch.empty(0)
        return X, y

    Xtr, ytr = stack(tr)
    scorer = fit_scorer(Xtr, ytr, kind, l2, steps, seed=seed)

    def r2(X, y):
        if len(y) < 2:
            return float("nan")
        with torch.no_grad():
            pred = scorer(X)
        return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-12))

    report = {"sequences": len(seqs), "prefixes": int(sum(len(f) for f in feats)), "kind": kind,
              "mean_reward": sum(s[2] for s in seqs) / max(len(seqs), 1), "r2_train": r2(Xtr, ytr),
              "r2_heldout": r2(*stack(val)), "seconds": time.perf_counter() - t0}
    return scorer, report


def run_blockwise(lm: LM, batch: list[Prepared], ctx: Ctx, costs: list[Cost], scorer: PrefixScorer) -> list[DecodeOutput]:
    """Blockwise best-of-K: per block, K continuations of <= block_size tokens sampled from π_ref (forks of
    the prefix cache), scored by V_θ at their last token; the best continues. A block that ends in a stop
    id is scored on the finished sequence (its stop token is fed to get that hidden state)."""
    p = ctx.params
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
    return [_finish(b, "cd", out[i], fin[i], ctx, costs[i], kl=blocks[i] * bon_kl_bound(K),
                    kl_kind="bound Σ_blocks (log K − (K−1)/K)",
                    extra={"mode": "blockwise", "num_blocks": K, "block_size": p.block_size, "blocks": blocks[i]})
            for i, b in enumerate(batch)]
