"""One row per evaluated checkpoint (or best-of-n size): ``StudyPoint``, appended to points.jsonl as soon as it is
measured, so that a rerun of the same study skips every point already done (docs/study.md)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

POINTS_FILE = "points.jsonl"


@dataclass
class StudyPoint:
    mode: str  # daa | bon | rl
    method: str  # daa: dpo/ipo/slic...; bon: "bon"; rl: rloo/ppo/grpo; "base": the initial policy (d = 0)
    run: str  # the curve this point belongs to, e.g. "dpo beta=0.1", "bon rm=48", "rloo rm=48"
    step: int  # optimizer / RL step of the checkpoint; bon: n
    kl: float  # nats per response; daa/rl: k1 on the policy's own samples at T = 1; bon: log n - (n-1)/n
    sqrt_kl: float  # d = sqrt(max(kl, 0))
    gold: float  # mean gold over prompts (bon: the unbiased best-of-n expectation)
    beta: float | None = None  # daa: the loss's beta
    size: int | None = None  # bon / rl: proxy RM training pairs
    n: int | None = None  # bon: n
    epoch_fraction: float | None = None  # daa: share of the training run done at this checkpoint
    kl_se: float | None = None
    kl_kind: str = ""  # k1_own_samples_T1 | kl_bon_upper_bound
    kl_clamped: bool = False  # the KL estimate was negative and d was set to 0
    gold_se: float | None = None
    proxy: float | None = None  # bon / rl: the proxy RM (normalised on the base samples); daa: implicit margin
    proxy_se: float | None = None
    gold_terms: dict[str, float] = field(default_factory=dict)  # signed contributions, mean over prompts
    length: float | None = None  # completion tokens (incl. EOS)
    eos_share: float | None = None  # share of responses that ended with EOS
    implicit_acc: float | None = None  # daa: held-out pairs with a strictly larger implicit reward for chosen
    implicit_ties: float | None = None
    train_loss: float | None = None  # daa: the last training step's loss
    train_proxy: float | None = None  # rl: the proxy reward of the last step's rollouts (train prompts)
    train_kl: float | None = None  # rl: KL to the initial policy of the last step's rollouts (kl_init_seq)
    n_prompts: int = 0
    n_samples: int = 0
    checkpoint: str = ""

    @property
    def key(self) -> str:
        return f"{self.mode}/{self.run}/{self.step}"


def point_from_dict(row: dict) -> StudyPoint:
    names = {f.name for f in fields(StudyPoint)}
    return StudyPoint(**{k: v for k, v in row.items() if k in names})


def read_points(run_dir: Path) -> dict[str, StudyPoint]:
    """The points already measured, by key (a later row with the same key wins)."""
    path = Path(run_dir) / POINTS_FILE
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            p = point_from_dict(json.loads(line))
            out[p.key] = p
    return out


def append_point(run_dir: Path, point: StudyPoint) -> None:
    """Append one point (flushed at once: a killed study keeps every finished point)."""
    path = Path(run_dir) / POINTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(asdict(point) | {"key": point.key}) + "\n")
        fh.flush()


def checkpoint_steps(total: int, k: int) -> list[int]:
    """``k`` distinct checkpoint steps in 1..total, ending at ``total``, half of them (``k // 2``) inside the first
    quarter of the run where it has that many steps (DAA found the gold peaking after about 25% of the epoch), the
    rest evenly over the remainder; every step when ``total <= k``. Spacing is at least one step on each side, and
    ``floor(x + 0.5)`` (not Python's round-half-even, which maps 2.5 and 1.5 both to 2) keeps the points distinct."""
    if total < 1 or k < 1:
        raise ValueError(f"need total >= 1 and k >= 1, got {total}, {k}")
    if total <= k:
        return list(range(1, total + 1))
    first_quarter = max(1, total // 4)
    early = min(k // 2, first_quarter)
    late, rest = k - early, total - first_quarter
    steps = [math.floor(first_quarter * (i + 1) / early + 0.5) for i in range(early)]
    steps += [first_quarter + math.floor(rest * (i + 1) / late + 0.5) for i in range(late)]
    return steps
