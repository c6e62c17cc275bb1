"""What every pruning method shares: the hooks the one training loop calls (PruningMethod), the record a method
registers (Method: its maker and its pre-training check), and the fixed-mask machinery of masked training.

Per-step work uses torch._foreach_* ops over the parameter list and never synchronises with the host;
scalars the loop reports are accumulated on the device and read in on_epoch_end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from vocabulary.config import PruneConfig
from trainables.sparsity import SparsitySet

__all__ = ["Check", "Dense", "FixedMask", "Maker", "MaskedFinetune", "Method", "PruningMethod", "float_masks",
           "no_check"]


class PruningMethod:
    """Hooks the training loop (trainables.trial) calls; ``params`` are the prunable parameters.

    - on_phase_start(params, total_steps, steps_per_epoch): once before the phase's first step.
    - before_step(params): after backward, before optimizer.step; may modify ``p.grad``.
    - after_step(params, step): after optimizer.step (step counts from 1 within the phase).
    - on_epoch_end(params, epoch) -> dict: the epoch's values of the metrics the method declares in its
      registry entry (vocabulary/registry.py: epochs table columns such as primal_residual, rho,
      mask_changes); the only hook that may synchronise with the host. The loop refuses an undeclared key.
    - penalty(params) -> 0-d tensor: the method's term of the objective (0 for most).
    - state_dict()/load_state_dict(): everything needed for an exact resume, tensors included.
    Tensors in the state are on the parameters' device; the trial moves them there after loading.
    """

    def on_phase_start(self, params: list[Tensor], total_steps: int, steps_per_epoch: int | None = None) -> None:
        pass

    def before_step(self, params: list[Tensor]) -> None:
        pass

    def after_step(self, params: list[Tensor], step: int) -> None:
        pass

    def on_epoch_end(self, params: list[Tensor], epoch: int) -> dict:
        return {}

    @torch.no_grad()
    def penalty(self, params: list[Tensor]) -> Tensor:
        return torch.zeros((), device=params[0].device if params else "cpu")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# make(prune, sparsity_set, make_set) -> the sparsify phase's hooks; make_set(level) builds the trial's set at
# another sparsity level (gradual schedules)
Maker = Callable[[PruneConfig, SparsitySet, Callable[[float], SparsitySet]], PruningMethod]
# check(prune, sparsify_epochs, steps_per_epoch): raise ConfigError(field) for a configuration that would
# silently compute something else (DESIGN rule 12); called before any training
Check = Callable[[PruneConfig, int, int], None]


def no_check(prune: PruneConfig, sparsify_epochs: int, steps_per_epoch: int) -> None:
    """The check of a method whose every valid configuration means what it says."""


@dataclass(frozen=True)
class Method:
    """What a method's module registers as its ``METHOD`` (named by its vocabulary/registry.py entry)."""

    make: Maker
    check: Check = no_check


class Dense(PruningMethod):
    """No pruning (the dense phase and the dense control)."""


def float_masks(masks: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    """Masks in the parameters' dtype and device (what a foreach multiply takes)."""
    return [m.to(dtype=p.dtype, device=p.device) for m, p in zip(masks, like)]


class FixedMask(PruningMethod):
    """A fixed mask: gradients masked before the step, weights re-masked after it.

    The re-mask matters: Adam's moments and weight decay would otherwise move zeroed weights again.
    """

    masks: list[Tensor] | None = None

    def before_step(self, params):
        torch._foreach_mul_([p.grad for p in params], self.masks)

    @torch.no_grad()
    def after_step(self, params, step):
        torch._foreach_mul_(params, self.masks)

    def state_dict(self):
        return {"masks": self.masks}

    def load_state_dict(self, state):
        self.masks = state["masks"]


class MaskedFinetune(FixedMask):
    """Masked fine-tuning after the hard projection: pruned weights stay exactly zero."""

    def __init__(self, masks: list[Tensor] | None = None):
        self.masks = masks
