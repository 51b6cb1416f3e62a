"""Pairwise preference losses as pure functions over per-sequence log-probs (torch only).

Every function returns **per-pair** losses [B]; the recipe divides the sum by the number of pairs in the
*effective* batch (all micro-batches and ranks of one optimizer step, docs/conventions.md R7), so the batch loss is
the mean over pairs. Notation follows L1: rho = log pi_theta(y|x) - log pi_ref(y|x)
with **summed** completion log-probs, h = rho_w - rho_l, z = beta * h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from alignlab.losses.types import PairLogps


def margin(p: PairLogps, normalize: bool = False) -> torch.Tensor:
    """h = rho_w - rho_l (summed); with ``normalize`` the length-normalised h̄ = rho_w/|y_w| - rho_l/|y_l|."""
    if p.ref_chosen is None or p.ref_rejected is None:
        raise ValueError("this loss needs reference log-probs (or reference_free=True)")
    rho_w = p.chosen - p.ref_chosen
    rho_l = p.rejected - p.ref_rejected
    if normalize:
        rho_w = rho_w / p.chosen_len.clamp(min=1)
        rho_l = rho_l / p.rejected_len.clamp(min=1)
    return rho_w - rho_l


def soft_sigmoid_loss(z: torch.Tensor, soft_label: torch.Tensor | None = None) -> torch.Tensor:
    """-log sigma(z); with a soft label p = P(chosen is better) per pair, the cross-entropy against p:

        -[p log sigma(z) + (1 - p) log sigma(-z)],   dL/dz = sigma(z) - p.

    p = 1 is exactly the hard loss; p = 0 is the hard loss of the swapped pair (z -> -z); p = 0.5 has zero
    gradient at z = 0. This is conservative DPO's form with a per-pair eps = 1 - p (cDPO note, Mitchell 2023;
    DPO reference code ``label_smoothing``), fed by the judge's probability as in RLAIF's soft labels (Lee et al.,
    arXiv 2309.00267; docs/specs rlhf.md §1.2, §5.2).
    """
    if soft_label is None:
        return -F.logsigmoid(z)
    q = soft_label.to(z.dtype)
    return -(q * F.logsigmoid(z) + (1 - q) * F.logsigmoid(-z))


def dpo(p: PairLogps, beta: float = 0.1, soft_label: torch.Tensor | None = None) -> torch.Tensor:
    """DPO, arXiv 2305.18290 Eq. 7: -log sigma(beta * h), h on **summed** completion log-probs.

    beta is the inverse KL strength (implicit reward r = beta * log pi/pi_ref). dL/dh at h=0 is -beta/2.
    ``soft_label`` p [B]: -[p log sigma(beta*h) + (1-p) log sigma(-beta*h)] (``soft_sigmoid_loss``).
    """
    return soft_sigmoid_loss(beta * margin(p), soft_label)


def dpo_norm(p: PairLogps, beta: float = 0.1, soft_label: torch.Tensor | None = None) -> torch.Tensor:
    """Length-normalised DPO (TRL ``sigmoid_norm``): -log sigma(beta * h̄), h̄ uses per-token **mean** log-ratios.
    ``soft_label`` as in ``dpo``."""
    return soft_sigmoid_loss(beta * margin(p, normalize=True), soft_label)


def cdpo(
    p: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0, soft_label: torch.Tensor | None = None
) -> torch.Tensor:
    """Conservative DPO (label smoothing eps = assumed flip probability; DPO reference code, cDPO note Eq. 3).

    -(1-eps) log sigma(z) - eps log sigma(-z), z = beta*h (summed). Equals DPO + eps*z; ln 2 at h = 0 for any eps.
    With a ``soft_label`` p the label is flipped with probability eps on top of p: the soft loss with
    p' = (1-eps) p + eps (1-p) (p = 1 gives cDPO, eps = 0 gives soft DPO).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    z = beta * margin(p)
    if soft_label is not None:  # written so that p = 1 gives the hard line below bit for bit
        q, up, down = soft_label.to(z.dtype), F.logsigmoid(z), F.logsigmoid(-z)
        return -(1.0 - label_smoothing) * (q * up + (1 - q) * down) - label_smoothing * ((1 - q) * up + q * down)
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def ipo(p: PairLogps, beta: float = 0.1, beta_convention: str = "azar", ipo_reduction: str = "mean") -> torch.Tensor:
    """IPO, arXiv 2310.12036 Eq. 17.

    beta_convention="azar": (h - 1/(2 beta))^2 (DPO reference code, TRL, OpenRLHF); "gpo": (beta*h - 1)^2
    (DAA notation, arXiv 2406.02900); GPO(b) = b^2 * Azar(b/2).
    ipo_reduction="mean" (default, TRL parity): h̄ from per-token **mean** log-ratios; "sum": summed h as
    in Eq. 17 as written and OpenRLHF. Exact conversion only for equal lengths n: L_mean(b) = L_sum(b/n)/n^2.
    """
    if ipo_reduction not in ("mean", "sum"):
        raise ValueError(f"ipo_reduction must be 'mean' or 'sum', got {ipo_reduction!r}")
    h = margin(p, normalize=ipo_reduction == "mean")
    if beta_convention == "azar":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if beta_convention == "gpo":
        return (beta * h - 1.0) ** 2
    raise ValueError(f"beta_convention must be 'azar' or 'gpo', got {beta_convention!r}")


def slic(p: PairLogps, beta: float = 0.1) -> torch.Tensor:
    """SLiC-style hinge on the reference-normalised margin (TRL ``hinge``): max(0, 1 - beta*h), h summed.

    1/beta is the required margin in nats. The original SLiC-HF (arXiv 2305.10425) used raw policy
    log-likelihoods; get that with reference_free=True plus sft_weight.
    """
    return torch.relu(1.0 - beta * margin(p))


def rdpo(
    p: PairLogps, beta: float = 0.1, length_alpha: float | None = None, soft_label: torch.Tensor | None = None
) -> torch.Tensor:
    """Length-regularised DPO (R-DPO, arXiv 2403.19159): -log sigma(beta*h + alpha_len*(|y_w| - |y_l|)).

    Lengths are scored completion tokens. The sign is our derivation (L3.5, [inferred]): a longer chosen
    answer gets a built-in margin, so the policy gains less by adding length. alpha_len=0 is exactly DPO;
    there is no default. ``soft_label`` as in ``dpo`` (swapping the pair negates the whole argument).
    """
    if length_alpha is None:
        raise ValueError("rdpo requires length_alpha (no default; see docs/conventions.md L3.5)")
    dlen = (p.chosen_len - p.rejected_len).to(p.chosen.dtype)
    return soft_sigmoid_loss(beta * margin(p) + length_alpha * dlen, soft_label)


def simpo_rewards(p: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO implicit rewards (beta/|y|) log pi_theta(y|x): per-token **mean** log-probs, no reference."""
    return beta * p.chosen / p.chosen_len.clamp(min=1), beta * p.rejected / p.rejected_len.clamp(min=1)


def simpo(
    p: PairLogps, beta: float = 2.0, gamma_beta_ratio: float = 0.25, label_smoothing: float = 0.0
) -> torch.Tensor:
    """SimPO (arXiv 2405.14734; princeton-nlp/SimPO@1b3e8f3 ``simpo_loss``): -log sigma(r_w - r_l - gamma).

    r = (beta/|y|) log pi_theta(y|x) (mean over tokens), gamma = beta * gamma_beta_ratio. Optional label
    smoothing in the cDPO form.
    """
    r_w, r_l = simpo_rewards(p, beta)
    z = r_w - r_l - beta * gamma_beta_ratio
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
