"""The RL algorithm registry: one ``RLAlgoSpec`` per algorithm (PPO, RLOO, GRPO), defaults as in TRL.

Each entry says where the KL-to-reference penalty goes (into the reward or into the loss), with which estimator
and default coefficient, whether a value model is needed, the group size, how the per-token losses are reduced
(an ``alignlab.losses.rl.aggregate`` mode), and which config keys among ``RL_KEYS`` the algorithm reads; a key
it does not list must stay at its default.
"""

from __future__ import annotations

from dataclasses import dataclass

RL_KEYS = (
    "cliprange_value",
    "vf_coef",
    "gae_lambda",
    "gamma",
    "whiten_rewards",
    "num_ppo_epochs",
    "value_model",
    "loss_type",
    "scale_rewards",
    "normalize_advantages",
    "epsilon_high",
    "missing_eos_penalty",
)


@dataclass(frozen=True)
class RLAlgoSpec:
    """One RL algorithm.

    kl_in: "reward" (per-token or summed k1 penalty subtracted from the reward) or "loss" (beta * k3 added to the
        per-token loss). kl_estimator: the default estimator for ``rl.per_token_kl``. default_kl_coef: 0 means no
        reference model is needed. default_group_size: completions sampled per prompt (contiguous rows).
    default_aggregation: an ``rl.aggregate`` mode; "sequence" = mean over sequences of sequence-ratio losses.
    reads: the keys of ``RL_KEYS`` this algorithm reads.
    """

    name: str
    summary: str
    kl_in: str
    kl_estimator: str
    default_kl_coef: float
    needs_value_model: bool
    default_group_size: int
    default_aggregation: str
    reads: tuple[str, ...]


RL_ALGOS: dict[str, RLAlgoSpec] = {
    s.name: s
    for s in (
        RLAlgoSpec(
            "ppo",
            "PPO with a value model: per-token k1 KL in the reward, GAE, clipped policy and value losses",
            kl_in="reward",
            kl_estimator="k1",
            default_kl_coef=0.05,
            needs_value_model=True,
            default_group_size=1,
            default_aggregation="token_mean",
            reads=(
                "cliprange_value",
                "vf_coef",
                "gae_lambda",
                "gamma",
                "whiten_rewards",
                "num_ppo_epochs",
                "value_model",
                "missing_eos_penalty",
            ),
        ),
        RLAlgoSpec(
            "rloo",
            "RLOO: leave-one-out baseline over k samples, summed k1 KL in the reward, sequence-level ratio",
            kl_in="reward",
            kl_estimator="k1",
            default_kl_coef=0.05,
            needs_value_model=False,
            default_group_size=2,
            default_aggregation="sequence",
            reads=("normalize_advantages", "num_ppo_epochs", "missing_eos_penalty"),
        ),
        RLAlgoSpec(
            "grpo",
            "GRPO: group-normalised advantages, per-token clipped loss, optional k3 KL in the loss",
            kl_in="loss",
            kl_estimator="k3",
            default_kl_coef=0.0,
            needs_value_model=False,
            default_group_size=8,
            default_aggregation="dapo",
            reads=("loss_type", "scale_rewards", "epsilon_high", "num_ppo_epochs", "missing_eos_penalty"),
        ),
    )
}


def get_rl_algo(name: str) -> RLAlgoSpec:
    if name not in RL_ALGOS:
        raise ValueError(f"unknown RL algorithm {name!r}; choose one of {', '.join(RL_ALGOS)}")
    return RL_ALGOS[name]


__all__ = ["RL_ALGOS", "RL_KEYS", "RLAlgoSpec", "get_rl_algo"]
