"""Linear Alignment math (docs/conventions.md D5), pure functions over logits.

z_0: next-token logits of the context without the principle; z_p: with the principle in the system prompt.
Both [B, V]; everything is upcast to fp32 before combining (a bf16 difference of large logits loses bits).
"""

from __future__ import annotations

import torch

from alignlab.decoding.scores import draw, nucleus_keep

NEG_INF = float("-inf")


def la_logits(z0: torch.Tensor, zp: torch.Tensor, ratio: float) -> torch.Tensor:
    """z_LA = z_p + ratio·(z_p − z_0) = z_0 + (1 + ratio)·(z_p − z_0). ratio 0: principle prompting;
    ratio −1: plain decoding. Equal to classifier-free guidance with γ = 1 + ratio (cond = z_p)."""
    z0, zp = z0.float(), zp.float()
    return zp + ratio * (zp - z0)


def la_masked_logits(
    z0: torch.Tensor, zp: torch.Tensor, ratio: float, temperature: float, top_p: float
) -> torch.Tensor:
    """z_LA / T with every token outside the nucleus of softmax(z_p / T) set to −inf.

    The nucleus comes from the principle-conditioned distribution *before* the update (Linear_Alignment
    model.py, not demo.py). Masking in logit space keeps greedy exact even when the combined distribution
    would underflow to all zeros in probability space (R11: the reference code then returns token 0).
    """
    keep = nucleus_keep(zp.float() / temperature, top_p)
    return (la_logits(z0, zp, ratio) / temperature).masked_fill(~keep, NEG_INF)


def la_distribution(
    z0: torch.Tensor, zp: torch.Tensor, ratio: float, temperature: float = 1.0, top_p: float = 1.0
) -> torch.Tensor:
    """The LA sampling distribution (masked, renormalised), fp32 [B, V]."""
    return torch.softmax(la_masked_logits(z0, zp, ratio, temperature, top_p), dim=-1)


def la_select(
    z0: torch.Tensor,
    zp: torch.Tensor,
    ratio: float,
    temperature: float,
    top_p: float,
    greedy: bool,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Chosen token id per row: argmax of the masked logits, or a draw from their softmax."""
    return la_step(z0, zp, ratio, temperature, top_p, greedy, generators)[0]


def la_step(
    z0: torch.Tensor,
    zp: torch.Tensor,
    ratio: float,
    temperature: float,
    top_p: float,
    greedy: bool,
    generators: list[torch.Generator] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen ids [B], KL(q_LA ‖ softmax(z_0/T)) [B]) from one computation of the masked logits."""
    z = la_masked_logits(z0, zp, ratio, temperature, top_p)
    if greedy:
        tok = z.argmax(dim=-1)
    elif generators is None:
        raise ValueError("sampling needs one generator per row")
    else:
        tok = draw(z, generators)
    return tok, _kl_to_plain(z, z0, temperature)


def _kl_to_plain(z: torch.Tensor, z0: torch.Tensor, temperature: float) -> torch.Tensor:
    lq = torch.log_softmax(z, dim=-1)
    l0 = torch.log_softmax(z0.float() / temperature, dim=-1)
    q = lq.exp()
    return torch.where(q > 0, q * (lq - l0), torch.zeros_like(q)).sum(-1)


def la_step_kl(z0: torch.Tensor, zp: torch.Tensor, ratio: float, temperature: float, top_p: float) -> torch.Tensor:
    """KL(q_LA ‖ softmax(z_0/T)) per row: how far this step's LA distribution moved from plain decoding at
    the same temperature (finite: q_LA's support is a subset of the full vocabulary)."""
    return _kl_to_plain(la_masked_logits(z0, zp, ratio, temperature, top_p), z0, temperature)


def cfg_logits(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance on log-softmaxed scores: γ·(ℓ_cond − ℓ_uncond) + ℓ_uncond (HF's processor
    math). Provided to document and test the equivalence LA == CFG with γ = 1 + ratio."""
    lc = torch.log_softmax(cond.float(), -1)
    lu = torch.log_softmax(uncond.float(), -1)
    return guidance_scale * (lc - lu) + lu
