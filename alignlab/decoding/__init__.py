"""Decoding-time alignment: best-of-N, ARGS, controlled decoding, Transfer Q* and Linear Alignment behind
one function, ``decode`` (docs/decoding.md; specs/decoding.md).

Pure math lives in ``scores`` (candidate scores, estimators, BoN KL) and ``linear`` (LA combination); the
loops (``loops``, ``guided``, ``la``, ``cd``) only drive cached, batched model calls (``lm``).
"""
from alignlab.decoding.api import decode, prompt_text
from alignlab.decoding.cd import PrefixScorer, train_prefix_scorer
from alignlab.decoding.types import (METHODS, ARGSParams, BestOfNParams, CDParams, Cost, DecodeOutput, GreedyParams,
                                     LAParams, SampleParams, StepInfo, TQParams, make_params)

__all__ = ["decode", "prompt_text", "PrefixScorer", "train_prefix_scorer", "METHODS", "ARGSParams", "BestOfNParams",
           "CDParams", "Cost", "DecodeOutput", "GreedyParams", "LAParams", "SampleParams", "StepInfo", "TQParams",
           "make_params"]
