"""The loss registry: one ``LossSpec`` per loss, the only table the recipes consult.

Each entry says which function computes the per-pair loss, which per-sequence parts it needs (a reference or
not, per-token log-probs and token rewards or not), its default β, and which ``TrainConfig`` keys it reads and
under which argument name. ``alignlab train`` rejects a config that sets a key the chosen loss does not read
(docs/conventions.md R11), so the table is also the contract between the config and the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from alignlab.losses import preference, treg
from alignlab.losses.types import PairLogps, TokenTerms

# Config keys a loss may read, beyond beta (read by every loss). A key in this set that the chosen loss does not
# list in ``reads`` must stay at its default.
LOSS_KEYS = (
    "label_smoothing",
    "beta_convention",
    "ipo_reduction",
    "length_alpha",
    "gamma_beta_ratio",
    "reference_free",
    "alpha",
    "treg_template",
    "treg_scorer",
    "treg_weighting",
    "treg_tau",
)
TREG_KEYS = ("alpha", "treg_template", "treg_scorer", "treg_weighting", "treg_tau")


@dataclass(frozen=True)
class LossSpec:
    """One loss.

    fn: pure function, per-pair losses [B] (sequence losses take PairLogps; token-level ones PairLogps and
        TokenTerms). parts: token-level losses only, the builder of their components (TregParts), so that the
        loss and its treg/* metrics come from one computation.
    args: TrainConfig key -> argument name of ``fn`` (beta is always passed as ``beta``).
    reads: every TrainConfig key in LOSS_KEYS this loss reads (its ``args`` plus keys the recipe consumes for it,
        e.g. the T-REG template read by the token-reward precompute).
    reference_free: needs no reference log-probs. token_level: needs per-token policy log-probs and token rewards.
    simpo_rewards: the logged implicit rewards are SimPO's (β/|y|) log π, not β log π/π_ref.
    reads_soft_labels: ``fn`` takes ``soft_label`` ([B] p = P(chosen is better), from the data's ``p_chosen``)
        and has the soft form −[p·log σ(z) + (1−p)·log σ(−z)]; data with p_chosen and a loss without it is an
        error (``label_error``). reads_margin: ``fn`` takes the data's per-pair ``margin`` (no loss here does).
    summary: one line for --help and the docs.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    summary: str
    default_beta: float = 0.1
    args: dict[str, str] = field(default_factory=dict)
    extra_reads: tuple[str, ...] = ()
    reference_free: bool = False
    token_level: bool = False
    simpo_rewards: bool = False
    parts: Callable[..., treg.TregParts] | None = None
    reads_soft_labels: bool = False
    reads_margin: bool = False

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(self.args) + self.extra_reads

    def kwargs(self, values: dict) -> dict:
        """Arguments of ``fn`` (without beta) from the config values present in ``values`` (TrainConfig names)."""
        return {arg: values[key] for key, arg in self.args.items() if key in values}


_TREG_ARGS = {"treg_weighting": "weighting"}
_TREG_READS = ("alpha", "treg_template", "treg_scorer", "treg_tau")
_REF = ("reference_free",)

LOSSES: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec(
            "dpo",
            preference.dpo,
            "DPO: -log σ(β·h), h = summed log-ratio margin",
            extra_reads=_REF,
            reads_soft_labels=True,
        ),
        LossSpec(
            "dpo_norm",
            preference.dpo_norm,
            "DPO on per-token mean log-ratios (TRL sigmoid_norm)",
            extra_reads=_REF,
            reads_soft_labels=True,
        ),
        LossSpec(
            "cdpo",
            preference.cdpo,
            "conservative DPO: labels flipped with probability label_smoothing",
            args={"label_smoothing": "label_smoothing"},
            extra_reads=_REF,
            reads_soft_labels=True,
        ),
        LossSpec(
            "ipo",
            preference.ipo,
            "IPO: squared distance of the margin to 1/(2β)",
            args={"beta_convention": "beta_convention", "ipo_reduction": "ipo_reduction"},
            extra_reads=_REF,
        ),
        LossSpec("slic", preference.slic, "SLiC hinge: max(0, 1 − β·h)", extra_reads=_REF),
        LossSpec("hinge", preference.slic, "alias of slic (TRL's name)", extra_reads=_REF),
        LossSpec(
            "rdpo",
            preference.rdpo,
            "length-regularised DPO: margin shifted by length_alpha·(|y_w| − |y_l|)",
            args={"length_alpha": "length_alpha"},
            extra_reads=_REF,
            reads_soft_labels=True,
        ),
        LossSpec(
            "simpo",
            preference.simpo,
            "SimPO: reference-free, length-normalised reward with target margin γ",
            default_beta=2.0,
            args={"gamma_beta_ratio": "gamma_beta_ratio", "label_smoothing": "label_smoothing"},
            reference_free=True,
            simpo_rewards=True,
        ),
        LossSpec(
            "dpo_treg",
            treg.dpo_treg,
            "DPO + T-REG: token rewards from contrastive prompting regularise token log-probs",
            args=_TREG_ARGS,
            extra_reads=_TREG_READS + _REF,
            token_level=True,
            parts=treg.dpo_treg_parts,
        ),
        LossSpec(
            "simpo_treg",
            treg.simpo_treg,
            "SimPO + T-REG (length-normalised regulariser, no reference)",
            default_beta=2.0,
            args={"gamma_beta_ratio": "gamma_beta_ratio", "label_smoothing": "label_smoothing"} | _TREG_ARGS,
            extra_reads=_TREG_READS,
            reference_free=True,
            token_level=True,
            simpo_rewards=True,
            parts=treg.simpo_treg_parts,
        ),
    )
}


def label_error(spec: LossSpec, p_chosen: bool, margin: bool) -> str | None:
    """Why ``spec`` cannot train on data with per-pair ``p_chosen`` / ``margin`` fields (None: it can)."""
    if p_chosen and not spec.reads_soft_labels:
        soft = ", ".join(n for n, s in LOSSES.items() if s.reads_soft_labels)
        return (
            f"loss={spec.name} has no soft-label form, but the data carries p_chosen; use a loss that reads it "
            f"({soft}), or make hard labels first (1[p > 0.5], |p - 0.5| < 0.05 dropped as ties: "
            "python -m alignlab.data.labels IN.jsonl OUT.jsonl)"
        )
    if margin and not spec.reads_margin:
        readers = ", ".join(n for n, s in LOSSES.items() if s.reads_margin) or "none; alignlab rm does"
        return (
            f"loss={spec.name} does not read per-pair margins, but the data carries a 'margin' field (losses that "
            f"read it: {readers}); remove the field for alignlab train"
        )
    return None


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return LOSSES[name]


__all__ = ["LOSSES", "LOSS_KEYS", "TREG_KEYS", "LossSpec", "PairLogps", "TokenTerms", "get_loss", "label_error"]
