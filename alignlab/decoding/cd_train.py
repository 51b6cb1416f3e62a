"""Training the prefix scorer of controlled decoding (CD-FUDGE, docs/conventions.md D3).

Sample y ~ π_ref(·|x) (best-of-n decoding with ``return_all``), score the full y with the reward r, regress
every prefix [x, y^t], t = 1..|y| onto r([x, y]) (squared loss). The data are on-policy for π_ref, so V_θ
estimates Q^{π_ref}. The linear head is fitted in closed form (ridge, fp64, standardised features):
deterministic and takes about a second; the MLP head is fitted with Adam.

Validation is **by prompt**: all samples (and so all prefixes) of one prompt land on the same side of every
split. Prefixes of one response share its target and are nearly collinear, and the responses of one prompt
share its topic, so a split by sequence scores the head on near-copies of its training rows. The ridge
strength is chosen by prompt-grouped cross-validation on the training prompts; the held-out prompts are
touched only once, for the reported R².

This module sits above ``api`` (it samples with ``decode``); ``cd`` (the scorer and the decoders) is below
it, so imports run one way: cd_train -> api -> registry -> cd.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Hashable, Sequence

import torch
from torch import nn

from alignlab.decoding.api import decode
from alignlab.decoding.cd import PrefixScorer
from alignlab.decoding.lm import LM

L2_GRID = (0.01, 0.1, 1.0, 10.0)  # per-sample ridge strengths tried when l2=None
DEFAULT_L2 = 0.1  # used when there are too few training prompts to validate


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


def ridge_path(X: torch.Tensor, y: torch.Tensor, l2s: Sequence[float]) -> list[PrefixScorer]:
    """Linear heads on features X [n, H] and targets y [n], one per ridge strength in ``l2s``.

    λ = l2·n on standardised features (per-sample strength: it does not depend on how many prefixes there
    are). Standardisation and the Gram matrix, the O(n·H²) part, are computed once for the whole grid.
    """
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    Z = ((X - mean) / std).double()
    yd = y.double()
    gram, zy = Z.T @ Z, Z.T @ (yd - yd.mean())
    eye = torch.eye(Z.shape[1], dtype=torch.float64)
    out = []
    for l2 in l2s:
        w = torch.linalg.solve(gram + l2 * Z.shape[0] * eye, zy)
        scorer = PrefixScorer(X.shape[1], "linear")
        scorer.mean.copy_(mean)
        scorer.std.copy_(std)
        with torch.no_grad():
            scorer.net.weight.copy_(w.float().view(1, -1))
            scorer.net.bias.fill_(float(yd.mean()))
        out.append(scorer.eval())
    return out


def fit_scorer(
    X: torch.Tensor,
    y: torch.Tensor,
    kind: str = "linear",
    l2: float = DEFAULT_L2,
    steps: int = 300,
    lr: float = 1e-3,
    seed: int = 0,
) -> PrefixScorer:
    """Fit V_θ on features X [n, H] and targets y [n] (squared loss).

    l2: ridge strength per sample (linear only; λ = l2·n on standardised features); prefixes of one
    response are nearly collinear, so a weak ridge overfits.
    """
    if kind == "linear":
        return ridge_path(X, y, [l2])[0]
    scorer = PrefixScorer(X.shape[1], kind)
    mean, std = X.mean(0), X.std(0).clamp_min(1e-6)
    scorer.mean.copy_(mean)
    scorer.std.copy_(std)
    Zf, yf = ((X - mean) / std).float(), y.float()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scorer.net = nn.Sequential(nn.Linear(X.shape[1], scorer.mlp_hidden), nn.GELU(), nn.Linear(scorer.mlp_hidden, 1))
    opt = torch.optim.Adam(scorer.net.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        idx = torch.randint(0, Zf.shape[0], (min(256, Zf.shape[0]),), generator=g)
        loss = 0.5 * ((scorer.net(Zf[idx]).squeeze(-1) - yf[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return scorer.eval()


def r2_score(pred: torch.Tensor, y: torch.Tensor) -> float:
    """1 − SSE/SST of predictions [n] against targets [n] (SST around y's own mean); NaN below 2 targets or
    for constant targets (nothing to explain)."""
    if len(y) < 2 or float(y.max() - y.min()) == 0.0:
        return float("nan")
    pred, y = pred.double(), y.double()
    return float(1 - ((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum().clamp_min(1e-12))


def group_order(groups: Sequence[Hashable], seed: int) -> list[Hashable]:
    """The distinct group keys, first-seen order, shuffled with ``random.Random(seed)``."""
    keys = list(dict.fromkeys(groups))
    random.Random(seed).shuffle(keys)
    return keys


def split_by_prompt(groups: Sequence[Hashable], holdout: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train, held-out) indices of samples whose prompt keys are ``groups`` [n]: every sample of a prompt
    lands on the same side. round(holdout·G) of the G prompts are held out, at least 1 and at most G − 1
    when G >= 2 and holdout > 0; none otherwise."""
    keys = group_order(groups, seed)
    n_val = min(max(round(holdout * len(keys)), 1), len(keys) - 1) if holdout > 0 and len(keys) >= 2 else 0
    val = set(keys[:n_val])
    return [i for i, g in enumerate(groups) if g not in val], [i for i, g in enumerate(groups) if g in val]


def prompt_folds(groups: Sequence[Hashable], n_folds: int, seed: int = 0) -> list[list[int]]:
    """Sample indices split into ``n_folds`` folds by prompt (prompts dealt round-robin after a seeded
    shuffle, so fold sizes differ by at most one prompt)."""
    fold_of = {g: j % n_folds for j, g in enumerate(group_order(groups, seed))}
    return [[i for i, g in enumerate(groups) if fold_of[g] == f] for f in range(n_folds)]


def stack(feats: list[torch.Tensor], targets: list[float], idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix features X [Σ|y|, H] and targets y [Σ|y|] of the sequences ``idx`` (each prefix carries its
    sequence's final reward)."""
    if not idx:
        return torch.empty(0, feats[0].shape[1]), torch.empty(0)
    X = torch.cat([feats[i] for i in idx])
    y = torch.cat([torch.full((len(feats[i]),), float(targets[i])) for i in idx])
    return X, y


def choose_l2(
    feats: list[torch.Tensor],
    targets: list[float],
    groups: Sequence[Hashable],
    grid: Sequence[float] = L2_GRID,
    n_folds: int = 3,
    seed: int = 0,
) -> tuple[float, dict[float, float]]:
    """The ridge strength with the best pooled out-of-fold R² under prompt-grouped cross-validation over
    the given sequences (features [|y|, H] per sequence, final reward, prompt key). Returns (l2, {l2: R²});
    with fewer than 2 prompts (or constant rewards: R² undefined) there is nothing to validate on and l2 is
    DEFAULT_L2."""
    n_folds = min(n_folds, len(set(groups)))
    if n_folds < 2:
        return DEFAULT_L2, {}
    preds: list[list[torch.Tensor]] = [[] for _ in grid]
    ys = []
    for fold in prompt_folds(groups, n_folds, seed):
        held = set(fold)
        Xtr, ytr = stack(feats, targets, [i for i in range(len(feats)) if i not in held])
        Xva, yva = stack(feats, targets, fold)
        ys.append(yva)
        with torch.no_grad():
            for j, scorer in enumerate(ridge_path(Xtr, ytr, grid)):
                preds[j].append(scorer(Xva))
    y_all = torch.cat(ys)
    cv = {float(l2): r2_score(torch.cat(p), y_all) for l2, p in zip(grid, preds)}
    ok = [l2 for l2 in cv if not math.isnan(cv[l2])]
    best = max(ok, key=lambda l2: (cv[l2], l2)) if ok else DEFAULT_L2  # ties: the stronger ridge
    return best, cv


def train_prefix_scorer(
    model,
    tokenizer,
    prompts: list,
    reward,
    samples_per_prompt: int = 4,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    kind: str = "linear",
    l2: float | None = None,
    steps: int = 300,
    batch_size: int = 8,
    seed: int = 0,
    holdout: float = 0.2,
    l2_grid: Sequence[float] = L2_GRID,
    cv_folds: int = 3,
) -> tuple[PrefixScorer, dict]:
    """CD-FUDGE: rollouts of the reference model (best-of-n machinery with return_all: one prefill per
    prompt, N samples, one reward call), features of every prefix, a fitted head.

    Validation is by prompt (identical rendered prompts count as one): ``holdout`` of the prompts are held
    out; ``l2=None`` picks the ridge strength from ``l2_grid`` by ``cv_folds``-fold prompt-grouped
    cross-validation on the rest; the head is refitted on all training prompts. Returns the scorer and a
    report: sequences, prefixes, mean reward, R² on the training prefixes and on the held-out prompts'
    prefixes, the chosen l2 and the cross-validated R² per grid value, the held-out prompts (count and
    indices into ``prompts``), split = "by prompt", seconds.
    """
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
    seqs = [(o.prompt_index, s["completion_ids"], s["reward"]) for o in outs for s in o.extra["samples"]]
    seqs = [s for s in seqs if s[1]]
    pids = {o.prompt_index: o.prompt_ids for o in outs}
    groups = [tuple(pids[s[0]]) for s in seqs]  # the rendered prompt: duplicates of a prompt are one group
    lm = LM(model, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    feats = prefix_features(lm, [pids[s[0]] for s in seqs], [s[1] for s in seqs], batch_size)
    targets = [float(s[2]) for s in seqs]
    tr, val = split_by_prompt(groups, holdout, seed)
    cv: dict[float, float] = {}
    if kind == "linear" and l2 is None:
        l2, cv = choose_l2(
            [feats[i] for i in tr], [targets[i] for i in tr], [groups[i] for i in tr], l2_grid, cv_folds, seed
        )
    Xtr, ytr = stack(feats, targets, tr)
    scorer = fit_scorer(Xtr, ytr, kind, l2 if l2 is not None else DEFAULT_L2, steps, seed=seed)
    Xva, yva = stack(feats, targets, val)
    with torch.no_grad():
        r2_train, r2_val = r2_score(scorer(Xtr), ytr), r2_score(scorer(Xva), yva)
    val_keys = {groups[i] for i in val}
    report = {
        "sequences": len(seqs),
        "prefixes": int(sum(len(f) for f in feats)),
        "kind": kind,
        "mean_reward": sum(targets) / max(len(targets), 1),
        "split": "by prompt",
        "train_prompts": len({groups[i] for i in tr}),
        "heldout_prompts": len(val_keys),
        "heldout_prompt_indices": sorted(o.prompt_index for o in outs if tuple(o.prompt_ids) in val_keys),
        "heldout_sequences": len(val),
        "l2": l2 if kind == "linear" else None,
        "r2_cv": cv,
        "r2_train": r2_train,
        "r2_heldout": r2_val,
        "seconds": time.perf_counter() - t0,
    }
    return scorer, report
