"""Training the prefix scorer of controlled decoding (CD-FUDGE, docs/conventions.md D3).

Sample y ~ π_ref(·|x) (best-of-n decoding with ``return_all``), score the full y with the reward r, regress
every prefix [x, y^t], t = 1..|y| onto r([x, y]) (squared loss). The data are on-policy for π_ref, so V_θ
estimates Q^{π_ref}. The linear head is fitted in closed form (ridge, fp64, standardised features):
deterministic and takes well under a second; the MLP head is fitted with Adam.

This module sits above ``api`` (it samples with ``decode``); ``cd`` (the scorer and the decoders) is below
it, so imports run one way: cd_train -> api -> registry -> cd.
"""

from __future__ import annotations

import random
import time

import torch
from torch import nn

from alignlab.decoding.api import decode
from alignlab.decoding.cd import PrefixScorer
from alignlab.decoding.lm import LM


def prefix_features(
    lm: LM, prompt_ids: list[list[int]], completions: list[list[int]], batch_size: int = 8
) -> list[torch.Tensor]:
    """Per sequence: hidden states [|y|, H] at each completion token (the state after reading y_t is the
    feature of the prefix y^{<=t}); one uncached forward per batch of full sequences."""
    feats = []
    for s in range(0, len(completions), batch_size):
        rows = [p + c for p, c in zip(prompt_ids[s : s + batch_size], completions[s : s + batch_size])]
        h, attn = lm.hidden_states(rows)
        T = h.shape[1]
        for i, c in enumerate(completions[s : s + batch_size]):
            feats.append(h[i, T - len(c) :].cpu())  # left-padded: the completion is the last |c| positions
    return feats


def fit_scorer(
    X: torch.Tensor,
    y: torch.Tensor,
    kind: str = "linear",
    l2: float = 0.1,
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
) -> PrefixScorer:
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


def train_prefix_scorer(
    model,
    tokenizer,
    prompts: list,
    reward,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    kind: str = "linear",
    l2: float = 0.1,
    steps: int = 300,
    batch_size: int = 8,
    seed: int = 0,
    holdout: float = 0.2,
) -> tuple[PrefixScorer, dict]:
    """CD-FUDGE: rollouts of the reference model (best-of-n machinery with return_all: one prefill per
    prompt, N samples, one reward call), features of every prefix, a fitted head. Returns the scorer and a
    report (sequences, prefixes, mean reward, train/held-out R² by sequence, seconds)."""
    t0 = time.perf_counter()
    outs = decode(
        model,
        tokenizer,
        prompts,
        method="best-of-n",
        reward=reward,
        n=samples_per_prompt,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        return_all=True,
        seed=seed,
        batch_size=batch_size,
        diagnostics=False,
    )
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

    report = {
        "sequences": len(seqs),
        "prefixes": int(sum(len(f) for f in feats)),
        "kind": kind,
        "mean_reward": sum(s[2] for s in seqs) / max(len(seqs), 1),
        "r2_train": r2(Xtr, ytr),
        "r2_heldout": r2(*stack(val)),
        "seconds": time.perf_counter() - t0,
    }
    return scorer, report
