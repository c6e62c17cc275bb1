"""A throwaway sparsity set, written the way a newcomer adds one (tests/test_new_set.py registers it): row
sparsity, the same fraction of zeros in every output row (a conv's filter, a linear layer's row).

This module is all of its behaviour: the SparsitySet and its maker ``SET``. Its registration (name, help, this
module's name, the fields it reads) is the one line test_new_set.REGISTRATION.
"""

from __future__ import annotations

import torch

from vocabulary.config import PruneConfig
from trainables.sparsity import SparsitySet, keep_count


class RowSet(SparsitySet):
    """Each row of r weights (dim 0 indexes the rows) keeps its r - floor(s*r) largest by magnitude: the
    Euclidean projection onto "at most that many nonzeros per row"; ties keep the lower index in the row."""

    def __init__(self, level: float):
        self.level = level

    def masks(self, tensors):
        out = []
        for t in tensors:
            rows = t.detach().abs().reshape(t.shape[0], -1)
            order = torch.sort(rows, dim=1, descending=True, stable=True).indices
            keep = torch.zeros_like(rows, dtype=torch.bool)
            keep.scatter_(1, order[:, : self._per_row(t)], True)
            out.append(keep.view_as(t))
        return out

    def _per_row(self, t) -> int:
        return keep_count(t.numel() // t.shape[0], self.level)

    def kept_count(self, tensors):
        return sum(self._per_row(t) * t.shape[0] for t in tensors)

    def target_sparsities(self, tensors):
        return [1.0 - self._per_row(t) * t.shape[0] / t.numel() for t in tensors]


def make_row(prune: PruneConfig) -> RowSet:
    return RowSet(prune.sparsity)


SET = make_row
