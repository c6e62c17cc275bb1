"""The global set: one magnitude threshold over all prunable tensors. Registered as ``global``
(vocabulary/registry.py: it reads ``sparsity``); the module's name has an underscore because ``global`` is a
Python keyword."""

from __future__ import annotations

import torch

from vocabulary.config import PruneConfig
from trainables.sparsity_sets.base import SparsitySet, keep_count, topk_mask

__all__ = ["SET", "GlobalSet", "make_global"]


class GlobalSet(SparsitySet):
    """One threshold over all tensors: keep N - floor(s*N) largest of the concatenation."""

    def __init__(self, level: float):
        self.level = level  # the nominal sparsity, a fraction in [0, 1)

    def masks(self, tensors):
        if not tensors:
            return []
        flat = torch.cat([t.detach().abs().flatten() for t in tensors])
        mask = topk_mask(flat, keep_count(flat.numel(), self.level))
        return [m.view_as(t) for m, t in zip(mask.split([t.numel() for t in tensors]), tensors)]

    def kept_count(self, tensors):
        return keep_count(sum(t.numel() for t in tensors), self.level)

    def target_sparsities(self, tensors):
        # the per-tensor split is decided by the weights; the set fixes only the overall fraction
        return [self.sparsity(tensors) for _ in tensors]


def make_global(prune: PruneConfig) -> GlobalSet:
    return GlobalSet(prune.sparsity)


SET = make_global
