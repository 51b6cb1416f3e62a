"""Packed forward of sequences that share a prefix: one forward for a pair's prompt (docs/conventions.md L2.10).

A *group* is one prefix (a prompt) followed by k *branches* (completions) that each continue it. It is laid out as
ONE sequence ``[prefix, branch_1, ..., branch_k]`` with

* a mask under which a prefix token sees the prefix causally, and a branch token sees the whole prefix and its own
  branch causally, never another branch (nor another group);
* position ids that restart after the prefix: every branch starts at position len(prefix), as it would in its own
  row ``[prefix, branch]``.

So every branch token gets exactly the hidden state it would get in the two-row layout, computed once for the
prefix. The label shift (L2.2) is explicit: a branch's first token is scored by the prefix's last position, every
later one by the branch position before it (``pred_index``).

Rows: ``"group"`` puts each group in its own row (right-padded to the longest group of the batch): a group's numbers
then do not depend on which other groups share the batch, like the two-row layout. ``"dense"`` fills rows with
several groups (first-fit decreasing, block-diagonal mask), choosing the row length that minimises
positions x (1 + attn_cost x row length): least padding, but a group's fp32 rounding depends on its neighbours.

The layout is canonical: groups are ordered by (length, content) and the branches of a group by content, so the same
set of sequences gives the same tensors whatever the order they were given in; identical branches of a group are
computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROWS = ("group", "dense")


@dataclass(frozen=True)
class PackSpec:
    """How to lay out groups in rows: ``rows`` in ROWS; ``attn_cost``: the cost of one (query, key) pair of attention
    relative to one position's linear layers (sizes dense rows; see SequenceScorer)."""

    rows: str = "group"
    attn_cost: float = 0.0

    def __post_init__(self) -> None:
        if self.rows not in ROWS:
            raise ValueError(f"PackSpec.rows must be one of {ROWS}, got {self.rows!r}")


@dataclass
class PackedBatch:
    """Groups packed into R rows of L positions.

    input_ids / position_ids: [R, L] int64 (pad: pad_id / 0).
    segment:   [R, L] int64, the group of each position (-1: padding); unique over the batch.
    branch:    [R, L] int64, 0 for the prefix, 1.. for the branches of its group, -1 for padding.
    pred_index: [M] int64, flat index into R x L of the position whose hidden state scores each scored token.
    targets:   [M] int64, the scored token ids.
    seq_index: [M] int64, the output sequence of each scored token, non-decreasing (each sequence's tokens in order,
               so they fill SeqLogps.token like the two-row completion mask, row-major).
    n_seqs:    number of output sequences.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment: torch.Tensor
    branch: torch.Tensor
    pred_index: torch.Tensor
    targets: torch.Tensor
    seq_index: torch.Tensor
    n_seqs: int

    @property
    def positions(self) -> int:
        """Positions computed by the forward, padding included."""
        return self.input_ids.numel()

    @property
    def real_positions(self) -> int:
        return int((self.segment >= 0).sum())

    def to(self, device) -> "PackedBatch":
        t = {k: getattr(self, k).to(device) for k in ("input_ids", "position_ids", "segment", "branch")}
        s = {k: getattr(self, k).to(device) for k in ("pred_index", "targets", "seq_index")}
        return PackedBatch(**t, **s, n_seqs=self.n_seqs)

    def attention_mask(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[R, 1, L, L]: bool (True = attend) for ``dtype=None`` (SDPA), else additive (0 / dtype's min; eager).
        Padding positions attend to padding only (never a fully masked row: no NaN in backward)."""
        seg, br = self.segment, self.branch
        i = torch.arange(seg.shape[1], device=seg.device)
        causal = i[None, :] <= i[:, None]  # [q, k]: key at or before the query
        same = seg[:, :, None] == seg[:, None, :]
        visible = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])  # key in the prefix or the same branch
        allowed = (same & visible & causal)[:, None]
        if dtype is None:
            return allowed
        zero = torch.zeros((), dtype=dtype, device=seg.device)
        return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=seg.device))


# A group: (prefix ids, [(branch ids, n_scored, output sequence), ...]); the last n_scored ids of a branch are
# scored (all of them for a completion; the response after a context for T-REG).
Group = tuple[list[int], list[tuple[list[int], int, int]]]


def _row_capacity(lengths: list[int], attn_cost: float) -> int:
    """Row length for dense rows minimising sum over rows of L x (1 + attn_cost x L), padding included."""
    longest, total = max(lengths), sum(lengths)
    best, best_cost = longest, None
    for k in range(1, len(lengths) + 1):
        cap = max(longest, -(-total // k))
        rows = len(_first_fit(lengths, cap))
        cost = rows * cap * (1.0 + attn_cost * cap)
        if best_cost is None or cost < best_cost - 1e-9:
            best, best_cost = cap, cost
    return best


def _first_fit(lengths: list[int], cap: int) -> list[list[int]]:
    """Item indices per row, first-fit in the given order (the caller sorts longest first)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i, n in enumerate(lengths):
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(cap - n)
    return rows


def pack_groups(groups: list[Group], n_seqs: int, pad_id: int, spec: PackSpec | None = None) -> PackedBatch:
    """Lay out ``groups`` (see Group) in rows; every output sequence 0..n_seqs-1 must occur in exactly one branch."""
    spec = spec or PackSpec()
    canon = []
    for prefix, branches in groups:
        uniq = sorted({(tuple(ids), n) for ids, n, _ in branches})
        slot = {key: j + 1 for j, key in enumerate(uniq)}
        outs = [(seq, slot[(tuple(ids), n)]) for ids, n, seq in branches]
        size = len(prefix) + sum(len(ids) for ids, _ in uniq)
        canon.append((size, tuple(prefix), uniq, outs))
    canon.sort(key=lambda g: (-g[0], g[1], g[2]))
    lengths = [g[0] for g in canon]
    if spec.rows == "dense":
        rows = _first_fit(lengths, _row_capacity(lengths, spec.attn_cost))
    else:
        rows = [[i] for i in range(len(canon))]
    L = max(sum(lengths[i] for i in r) for r in rows)
    R = len(rows)
    ids = torch.full((R, L), pad_id, dtype=torch.long)
    pos = torch.zeros((R, L), dtype=torch.long)
    seg = torch.full((R, L), -1, dtype=torch.long)
    br = torch.full((R, L), -1, dtype=torch.long)
    scored: dict[int, tuple[list[int], list[int]]] = {}
    for r, members in enumerate(rows):
        off = 0
        for g in members:
            _, prefix, uniq, outs = canon[g]
            P = len(prefix)
            ids[r, off : off + P] = torch.tensor(prefix, dtype=torch.long)
            pos[r, off : off + P] = torch.arange(P)
            seg[r, off : off + P] = g
            br[r, off : off + P] = 0
            start = {}
            o = off + P
            for j, (b, _) in enumerate(uniq, start=1):
                n = len(b)
                ids[r, o : o + n] = torch.tensor(b, dtype=torch.long)
                pos[r, o : o + n] = torch.arange(P, P + n)
                seg[r, o : o + n] = g
                br[r, o : o + n] = j
                start[j] = o
                o += n
            for seq, j in outs:
                b, n_scored = uniq[j - 1]
                first = len(b) - n_scored
                if P == 0 and first == 0:  # nothing scores the first position of a row (as in the two-row layout)
                    first = 1
                preds = [(start[j] + t - 1 if t > 0 else off + P - 1) for t in range(first, len(b))]
                scored[seq] = ([r * L + p for p in preds], list(b[first:]))
            off = o
    if sorted(scored) != list(range(n_seqs)):
        raise ValueError(f"pack_groups: output sequences {sorted(scored)} are not 0..{n_seqs - 1}")
    pred = [p for s in range(n_seqs) for p in scored[s][0]]
    tgt = [t for s in range(n_seqs) for t in scored[s][1]]
    sidx = [s for s in range(n_seqs) for _ in scored[s][1]]
    as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return PackedBatch(ids, pos, seg, br, as_long(pred), as_long(tgt), as_long(sidx), n_seqs)


def pack_pairs(
    prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], pad_id: int, spec: PackSpec | None
) -> PackedBatch:
    """B pairs as B groups [prompt, chosen, rejected]; output sequences [0, B) chosen, [B, 2B) rejected (PairBatch)."""
    B = len(prompts)
    groups = [(p, [(c, len(c), k), (r, len(r), B + k)]) for k, (p, c, r) in enumerate(zip(prompts, chosen, rejected))]
    return pack_groups(groups, 2 * B, pad_id, spec)
