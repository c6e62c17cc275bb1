"""The uniform set: every prunable tensor at the same sparsity. Registered as ``uniform``
(vocabulary/registry.py: it reads ``sparsity``)."""

from __future__ import annotations

from vocabulary.config import PruneConfig
from trainables.sparsity_sets.base import SparsitySet, keep_count, topk_mask

__all__ = ["SET", "UniformSet", "make_uniform"]


class UniformSet(SparsitySet):
    """Each tensor keeps exactly n - floor(s*n) of its n weights, its largest by magnitude."""

    def __init__(self, level: float):
        self.level = level  # the nominal sparsity, a fraction in [0, 1)

    def masks(self, tensors):
        return [topk_mask(t.detach().abs().flatten(), keep_count(t.numel(), self.level)).view_as(t)
                for t in tensors]

    def kept_count(self, tensors):
        return sum(keep_count(t.numel(), self.level) for t in tensors)

    def target_sparsities(self, tensors):
        return [1.0 - keep_count(t.numel(), self.level) / t.numel() for t in tensors]


def make_uniform(prune: PruneConfig) -> UniformSet:
    return UniformSet(prune.sparsity)


SET = make_uniform
