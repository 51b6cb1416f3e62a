"""Deterministic batch plan: which pairs each rank sees at each optimizer step.

The data order is a pure function of (seed, epoch), so an interrupted run resumes at step k with exactly
the batches an uninterrupted run would have seen, with no sampler state to save. One global batch =
world x grad_accum x per_device pairs. Within a global batch, pairs are sorted by length before being
cut into micro-batches (less padding; the gradient of the step does not depend on the split, docs/conventions.md R7).
The incomplete tail of each epoch is dropped and counted (every rank must run the same number of steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchPlan:
    n_examples: int
    per_device: int
    grad_accum: int
    world: int
    seed: int
    lengths: list[int]  # per pair, used for length-sorting inside a global batch

    @property
    def global_size(self) -> int:
        return self.per_device * self.grad_accum * self.world

    @property
    def steps_per_epoch(self) -> int:
        return self.n_examples // self.global_size

    @property
    def dropped_per_epoch(self) -> int:
        return self.n_examples - self.steps_per_epoch * self.global_size

    def global_batch(self, step: int) -> list[int]:
        if self.steps_per_epoch == 0:
            raise ValueError(f"{self.n_examples} pairs cannot fill one global batch of {self.global_size}")
        epoch, offset = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        perm = torch.randperm(self.n_examples, generator=g).tolist()
        idx = perm[offset * self.global_size : (offset + 1) * self.global_size]
        return sorted(idx, key=lambda i: (-self.lengths[i], i))

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This rank's grad_accum micro-batches; micro-batch j of rank r is chunk j*world + r."""
        idx = self.global_batch(step)
        chunks = [idx[k : k + self.per_device] for k in range(0, len(idx), self.per_device)]
        return [chunks[j * self.world + rank] for j in range(self.grad_accum)]
