"""The N:M set: n of every m consecutive weights along the input dimension (2:4 is what sparse tensor cores
run). Registered as ``nm`` (vocabulary/registry.py: it reads ``nm_n`` and ``nm_m``, not ``sparsity``)."""

from __future__ import annotations

import torch
from torch import Tensor

from vocabulary.config import PruneConfig
from trainables.sparsity_sets.base import SparsitySet

__all__ = ["SET", "NMSet", "make_nm"]


class NMSet(SparsitySet):
    """Keep the n largest of every m consecutive weights along the input dimension (dim 1).

    Conv [out, in, kh, kw] groups run over ``in`` at each (out, kh, kw); Linear [out, in] over ``in``.
    Tensors whose input dimension is not divisible by m (depthwise convs, in=1) stay dense: their target
    sparsity is 0, which the layer report shows.
    """

    def __init__(self, n: int = 2, m: int = 4):
        self.n, self.m = n, m
        self.level = 1.0 - n / m  # on the layers it applies to; overall less (see sparsity())

    def _supported(self, t: Tensor) -> bool:
        return t.dim() >= 2 and t.shape[1] % self.m == 0

    def masks(self, tensors):
        return [self._mask(t) if self._supported(t) else torch.ones_like(t, dtype=torch.bool) for t in tensors]

    def _mask(self, t: Tensor) -> Tensor:
        moved = t.detach().abs().movedim(1, -1)  # [out, kh, kw, in]
        groups = moved.reshape(-1, self.m)  # [out*kh*kw*in/m, m]
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, order[:, : self.n], True)
        return keep.reshape(moved.shape).movedim(-1, 1)

    def kept_count(self, tensors):
        return sum(t.numel() // self.m * self.n if self._supported(t) else t.numel() for t in tensors)

    def target_sparsities(self, tensors):
        return [1.0 - self.n / self.m if self._supported(t) else 0.0 for t in tensors]


def make_nm(prune: PruneConfig) -> NMSet:
    return NMSet(prune.nm_n, prune.nm_m)


SET = make_nm
