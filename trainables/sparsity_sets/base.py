"""What every sparsity set shares: the SparsitySet contract and the projection's tie rule.

Projection onto a cardinality set keeps the largest-magnitude entries and zeroes the rest; that is the
exact Euclidean projection. Tie rule (deterministic): among equal magnitudes the entry with the LOWER flat
index is kept (a stable descending sort, ``topk_mask``). For the global set the order is (tensor order, flat
index).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["SparsitySet", "keep_count", "topk_mask"]


def keep_count(numel: int, sparsity: float) -> int:
    """Entries a cardinality set keeps of ``numel`` at ``sparsity``: numel - floor(sparsity * numel)."""
    return numel - math.floor(sparsity * numel)


def topk_mask(flat_abs: Tensor, k: int) -> Tensor:
    """Bool mask of the k largest entries of a 1-D tensor; ties keep the lower index (stable sort)."""
    order = torch.sort(flat_abs, descending=True, stable=True).indices
    mask = torch.zeros_like(flat_abs, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


class SparsitySet:
    """A sparsity set S over a list of tensors.

    Contract (tests/test_contracts.py runs it on every set in trainables.sparsity.SETS):

    - ``masks(tensors)`` returns one bool tensor per input (same shape, True = kept) defining the Euclidean
      projection onto S with the module's tie rule;
    - ``project`` returns new tensors ``t * mask`` (inputs are not modified); projecting twice changes nothing;
    - ``kept_count(tensors)`` is the exact number of entries the masks keep, in all: the one source of the
      kept count (the trial checks the pruned model against it; never recompute it elsewhere);
    - ``target_sparsities`` gives the fraction of zeros S imposes per tensor (for the layer report);
    - ``sparsity`` is the overall fraction of zeros S imposes, 1 - kept / total.
    Stateless and picklable.
    """

    def masks(self, tensors: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def kept_count(self, tensors: list[Tensor]) -> int:
        raise NotImplementedError

    def target_sparsities(self, tensors: list[Tensor]) -> list[float]:
        raise NotImplementedError

    def sparsity(self, tensors: list[Tensor]) -> float:
        total = sum(t.numel() for t in tensors)
        return 1.0 - self.kept_count(tensors) / total if total else 0.0

    def project(self, tensors: list[Tensor]) -> list[Tensor]:
        return [t * m for t, m in zip(tensors, self.masks(tensors))]
