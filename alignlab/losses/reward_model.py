"""Bradley–Terry reward-model loss and metrics: pure functions over per-pair scalar rewards.

The reward model maps (prompt, response) to one scalar r. For a pair with chosen reward r_c and rejected reward
r_r, the Bradley–Terry model says P(chosen preferred) = σ(r_c − r_r), and training minimises its negative
log-likelihood. Everything here works on tensors of shape [B] (one entry per pair) and returns **per-pair** values:
the caller reduces them (the training step sums them and divides by the pairs of the effective batch, i.e. the
batch *mean*, as TRL's RewardTrainer and OpenRLHF's PairWiseLoss do).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    center_coef: float = 0.0,
    soft_label: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Per-pair Bradley–Terry loss, shape [B] (not reduced: take ``.mean()`` for the batch loss).

    With Δ = r_c − r_r − m (``margin`` m ≥ 0 per pair, or one float; None means m = 0):

        hard label:  L = −log σ(Δ)
        soft label:  L = −[p·log σ(Δ) + (1 − p)·log σ(−Δ)]     (``soft_label`` p = P(chosen is better))
        centering:   L += c·(r_c + r_r)²                        (``center_coef`` c; 0 = off)

    The margin is part of Δ in the soft form too, so p = 1 gives exactly the hard loss with the same margin (and
    p = 0 the hard loss of the swapped pair with margin −m). The centering term per pair averages to TRL's
    c·mean((r_c + r_r)²) over a batch (arXiv 2312.09244 Eq. 2; c = 0.01 is the recommended value). log σ is
    computed with ``logsigmoid`` (no overflow for large |Δ|).
    """
    delta = r_chosen - r_rejected
    if margin is not None:
        delta = delta - margin
    if soft_label is None:
        loss = -F.logsigmoid(delta)
    else:
        p = torch.as_tensor(soft_label, dtype=delta.dtype, device=delta.device)
        loss = -(p * F.logsigmoid(delta) + (1 - p) * F.logsigmoid(-delta))
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


def reward_metrics(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, sources: list[str] | None = None
) -> dict[str, float]:
    """Metrics of a set of pairs (each value a mean over the pairs unless named otherwise):

    - ``accuracy``: share of pairs with r_c > r_r, **strict**: a tie counts as wrong;
    - ``margin``: mean of r_c − r_r; ``ties``: share of pairs with r_c == r_r;
    - ``rewards/chosen``, ``rewards/rejected``: mean reward of each side;
    - ``rewards/min``, ``rewards/mean``, ``rewards/max``: over all 2B rewards (TRL's min_reward, mean_reward,
      max_reward);
    - ``accuracy/<source>``: accuracy over the pairs whose entry in ``sources`` (one key per pair) is that source,
      when ``sources`` is given.
    An empty set gives NaN values.
    """
    rc, rr = r_chosen.detach().double().reshape(-1), r_rejected.detach().double().reshape(-1)
    if rc.numel() == 0:
        nan = math.nan
        return dict.fromkeys(
            ["accuracy", "margin", "ties", "rewards/chosen", "rewards/rejected", "rewards/min", "rewards/mean"]
            + ["rewards/max"],
            nan,
        )
    wins = (rc > rr).double()
    both = torch.cat([rc, rr])
    out = {
        "accuracy": wins.mean().item(),
        "margin": (rc - rr).mean().item(),
        "ties": (rc == rr).double().mean().item(),
        "rewards/chosen": rc.mean().item(),
        "rewards/rejected": rr.mean().item(),
        "rewards/min": both.min().item(),
        "rewards/mean": both.mean().item(),
        "rewards/max": both.max().item(),
    }
    if sources is not None:
        if len(sources) != rc.numel():
            raise ValueError(f"{len(sources)} source keys for {rc.numel()} pairs")
        for src in sorted(set(sources)):
            keep = torch.tensor([s == src for s in sources])
            out[f"accuracy/{src}"] = wins[keep].mean().item()
    return out
