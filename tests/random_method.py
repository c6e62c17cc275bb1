"""A throwaway pruning method, written the way a newcomer adds one (tests/test_new_method.py registers it):
random pruning, a mask drawn at random once as the sparsify phase starts and kept by masked training.

This module is all of its behaviour: the hooks, the maker and the pre-training check. Its registration
(name, help, this module's name, its metric) is the one line test_new_method.REGISTRATION.
"""

from __future__ import annotations

import torch

from vocabulary.config import ConfigError, PruneConfig
from trainables.methods import FixedMask, Method, float_masks


class RandomMask(FixedMask):
    """The trial's sparsity set applied to random scores: a uniformly drawn member of the set (per layer for
    uniform, over all layers for global, per group for N:M), fixed for the phase."""

    def __init__(self, sparsity_set):
        self.sset = sparsity_set

    @torch.no_grad()
    def on_phase_start(self, params, total_steps, steps_per_epoch=None):
        scores = [torch.rand_like(p) for p in params]
        self.masks = float_masks(self.sset.masks(scores), params)
        torch._foreach_mul_(params, self.masks)

    def on_epoch_end(self, params, epoch):
        return {"random_kept": int(sum(int(m.sum()) for m in self.masks))}


def check_random(prune: PruneConfig, sparsify_epochs: int, steps_per_epoch: int) -> None:
    """The mask is drawn as the sparsify phase starts: without one, "random" would be magnitude pruning."""
    if sparsify_epochs == 0:
        raise ConfigError("sparsify_epochs", "random pruning draws its mask as the sparsify phase starts: "
                                             "use sparsify_epochs >= 1")


METHOD = Method(make=lambda prune, sset, make_set: RandomMask(sset), check=check_random)
