"""Decoding-time alignment: best-of-N, ARGS, controlled decoding, Transfer Q* and Linear Alignment behind
one function, ``decode`` (docs/decoding.md; docs/conventions.md D).

Pure math lives in ``scores`` (candidate scores, estimators, BoN KL) and ``linear`` (LA combination); the
loops (``loops``, ``guided``, ``la``, ``cd``) only drive cached, batched model calls (``lm``). ``registry``
holds one DecodingSpec per method (parameters, loop, needs, cost); ``api.decode`` dispatches through it and
``cd_train`` (prefix-scorer training, which samples with ``decode``) sits above it.
"""

from alignlab.decoding.api import decode, prompt_text
from alignlab.decoding.cd import PrefixScorer
from alignlab.decoding.cd_train import train_prefix_scorer
from alignlab.decoding.registry import DECODING, METHODS, DecodingSpec, make_params
from alignlab.decoding.types import (
    ARGSParams,
    BestOfNParams,
    CDParams,
    Cost,
    DecodeOutput,
    GreedyParams,
    LAParams,
    SampleParams,
    StepInfo,
    TQIndirectParams,
    TQParams,
)

__all__ = [
    "decode",
    "prompt_text",
    "PrefixScorer",
    "train_prefix_scorer",
    "DECODING",
    "METHODS",
    "DecodingSpec",
    "make_params",
    "ARGSParams",
    "BestOfNParams",
    "CDParams",
    "Cost",
    "DecodeOutput",
    "GreedyParams",
    "LAParams",
    "SampleParams",
    "StepInfo",
    "TQIndirectParams",
    "TQParams",
]
