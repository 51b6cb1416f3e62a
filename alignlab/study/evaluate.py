"""Evaluating one policy for a study point: samples on the evaluation prompts at T = 1, the gold (per term where it
has terms) and the proxy on them, KL(π‖π_ref) on the policy's own samples, length and EOS share; the implicit-reward
accuracy on held-out pairs (DAA). Built on the evaluation harness (alignlab.eval.harness) and the generation cache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from alignlab.eval.harness import MethodResult, result_from_generations, score_generations
from alignlab.models.loading import model_fingerprint
from alignlab.models.lora import reference_mode
from alignlab.rollout.cache import cached_generate
from alignlab.rollout.generate import Generation, SamplingParams


@dataclass
class Evaluated:
    """Per-prompt means (P values) and the per-sample result."""

    result: MethodResult
    gold: np.ndarray  # [P, K]
    proxy: np.ndarray | None  # [P, K]
    kl: np.ndarray  # [P, K]
    terms: dict[str, np.ndarray]  # [P, K] each

    def summary(self) -> dict:
        """The StudyPoint fields: means over prompts (each prompt's samples averaged first) and s.e. over prompts."""
        out = {}
        for name, v in (("gold", self.gold), ("proxy", self.proxy), ("kl", self.kl)):
            if v is not None:
                out[name], out[f"{name}_se"] = mean_se(v)
        out["gold_terms"] = {k: float(v.mean()) for k, v in self.terms.items()}
        out["length"] = float(np.mean(self.result.lengths))
        out["eos_share"] = float(np.mean(self.result.finished))
        out["n_prompts"], out["n_samples"] = self.gold.shape[0], self.gold.size
        return out


def mean_se(values: np.ndarray) -> tuple[float, float | None]:
    per = np.asarray(values, dtype=np.float64).reshape(len(values), -1).mean(axis=1)
    se = float(per.std(ddof=1) / math.sqrt(len(per))) if len(per) > 1 else None
    return float(per.mean()), se


def kl_own_samples(policy, tokenizer, gens: list[Generation]) -> list[float]:
    """Per sample log π(y|x) − log π_ref(y|x) at T = 1 on the policy's own T = 1 samples; π_ref is the LoRA
    policy with its adapter off (the base model, the initial policy of an RL run)."""
    pad = tokenizer.pad_token_id
    lp = score_generations(policy, gens, pad, 1.0)
    with reference_mode(policy):
        lr = score_generations(policy, gens, pad, 1.0)
    return [a - b for a, b in zip(lp, lr)]


def evaluate_policy(
    policy, tokenizer, prompts: list[str], params: SamplingParams, gold, proxy=None, kl: bool = True, name: str = ""
) -> Evaluated:
    """Sample ``params.num_samples`` responses per prompt at ``params`` (T = 1 for the study: the gold samples are
    also the KL samples), cached by the policy's fingerprint; ``kl=False``: the policy is the reference (KL 0)."""
    if params.temperature != 1.0:
        raise ValueError("study evaluation samples at T = 1 (the KL is that of the sampled distribution)")
    policy.eval()
    gens = cached_generate(policy, tokenizer, prompts, params, model_fingerprint(policy), progress=f"eval {name}")
    res = result_from_generations(name, gens, gold, prompts)
    shape = (len(prompts), params.num_samples)
    texts = [prompts[g.prompt_index] for g in gens]
    pv = None
    if proxy is not None:
        pv = np.asarray(proxy(texts, res.texts, res.finished), dtype=np.float64).reshape(shape)
    klv = kl_own_samples(policy, tokenizer, gens) if kl else [0.0] * len(gens)
    terms = {k: np.asarray(v, dtype=np.float64).reshape(shape) for k, v in res.extra.get("terms", {}).items()}
    g = np.asarray(res.gold, dtype=np.float64).reshape(shape)
    return Evaluated(res, g, pv, np.asarray(klv, dtype=np.float64).reshape(shape), terms)


@torch.no_grad()
def implicit_rewards(policy, tokenizer, pairs) -> tuple[float, float, float]:
    """(accuracy, ties, mean margin) of the implicit reward log π/π_ref (β omitted: it does not change the sign) on
    held-out pairs: accuracy counts chosen strictly above rejected, ties separately (spec: at π = π_ref the strict
    accuracy is 0 and ties 1)."""
    if not pairs:
        return float("nan"), float("nan"), float("nan")
    gens = [
        Generation(i, p.prompt_ids, ids, "", True)
        for i, p in enumerate(pairs)
        for ids in (p.chosen_ids, p.rejected_ids)
    ]
    pad = tokenizer.pad_token_id
    lp = np.asarray(score_generations(policy, gens, pad, 1.0))
    with reference_mode(policy):
        lr = np.asarray(score_generations(policy, gens, pad, 1.0))
    ratio = (lp - lr).reshape(-1, 2)
    margin = ratio[:, 0] - ratio[:, 1]
    return float(np.mean(margin > 0)), float(np.mean(margin == 0)), float(margin.mean())
