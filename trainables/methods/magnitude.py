"""The magnitude baseline: keep the largest weights, on one of MAGNITUDE_SCHEDULES (per_step, one_shot,
gradual), the gradual schedule's pure math and its pre-training check. Registered as ``magnitude``
(vocabulary/registry.py: its fields and its metric mask_changes)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from vocabulary.config import ConfigError, PruneConfig
from trainables.methods.base import FixedMask, Method, PruningMethod, float_masks
from trainables.sparsity import SparsitySet

__all__ = ["GradualMagnitude", "MAGNITUDE_SCHEDULES", "METHOD", "Magnitude", "OneShotMagnitude", "PerStepMagnitude",
           "check_gradual_schedule", "gradual_sparsity", "make_magnitude"]


def gradual_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f) (1 - t/T)^3, t clamped to [0, T]."""
    if total_steps <= 0:
        return final
    frac = min(max(step / total_steps, 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


def check_gradual_schedule(prune: PruneConfig, sparsify_epochs: int, steps_per_epoch: int) -> None:
    """Raise ConfigError("gradual_interval") when a gradual schedule would raise the sparsity fewer than twice
    before the phase's last step: it would be a one-shot prune at the end, not a gradual one (rule 12).
    The magnitude method's check hook (other schedules pass)."""
    total = sparsify_epochs * steps_per_epoch
    if prune.schedule != "gradual" or total == 0:
        return
    raises = (total - 1) // prune.gradual_interval
    if raises < 2:
        raise ConfigError("gradual_interval", f"{prune.gradual_interval} steps gives {raises} sparsity raise(s) "
                          f"before the last step of the sparsify phase ({sparsify_epochs} epochs x "
                          f"{steps_per_epoch} steps); at least 2 are needed for a gradual schedule: use "
                          f"gradual_interval <= {max((total - 1) // 2, 1)} or more sparsify_epochs")
class OneShotMagnitude(FixedMask):
    """Project once at the phase start, then train with that mask fixed."""

    def __init__(self, sparsity_set: SparsitySet):
        self.sset = sparsity_set

    @torch.no_grad()
    def on_phase_start(self, params, total_steps, steps_per_epoch=None):
        self.masks = float_masks(self.sset.masks([p.detach() for p in params]), params)
        torch._foreach_mul_(params, self.masks)


class PerStepMagnitude(PruningMethod):
    """Iterative hard thresholding: W <- Proj_S(W) after every optimizer step (the seed's definition).

    Gradients are NOT masked: a pruned weight receives gradient, moves off zero in the step, and re-enters
    the kept set at the next projection when it outgrows a kept one. That is what distinguishes this from
    one-shot (DESIGN rule 12); ``mask_changes`` per epoch counts the entries that left or entered the set.
    """

    def __init__(self, sparsity_set: SparsitySet):
        self.sset = sparsity_set
        self.masks: list[Tensor] | None = None  # bool, True = kept
        self.changes: Tensor | None = None

    @torch.no_grad()
    def _project(self, params) -> list[Tensor]:
        masks = self.sset.masks([p.detach() for p in params])
        torch._foreach_mul_(params, float_masks(masks, params))
        return masks

    def on_phase_start(self, params, total_steps, steps_per_epoch=None):
        self.masks = self._project(params)
        self.changes = torch.zeros((), dtype=torch.int64, device=params[0].device if params else "cpu")

    @torch.no_grad()
    def after_step(self, params, step):
        new = self._project(params)
        # count on the device, read once per epoch (no host sync in the step)
        self.changes += torch.stack([(a ^ b).sum() for a, b in zip(new, self.masks)]).sum()
        self.masks = new

    def on_epoch_end(self, params, epoch):
        changes, self.changes = int(self.changes), torch.zeros_like(self.changes)
        return {"mask_changes": changes}

    def state_dict(self):
        return {"masks": self.masks, "changes": self.changes}

    def load_state_dict(self, state):
        self.masks, self.changes = state["masks"], state["changes"]


class GradualMagnitude(FixedMask):
    """Zhu & Gupta (2017): sparsity rises on the cubic schedule every ``interval`` steps to the target.

    Previously pruned weights stay pruned (masks kept between raises, gradients masked). ``make_set(s)``
    builds the sparsity set at level s.
    """

    def __init__(self, sparsity_set: SparsitySet, make_set: Callable[[float], SparsitySet], interval: int = 1):
        self.sset, self.make_set, self.interval = sparsity_set, make_set, interval
        self.total_steps = 0
        self.current = 0.0

    def on_phase_start(self, params, total_steps, steps_per_epoch=None):
        self.total_steps, self.current = total_steps, 0.0
        self.masks = [torch.ones_like(p) for p in params]

    @torch.no_grad()
    def after_step(self, params, step):
        torch._foreach_mul_(params, self.masks)
        if step % self.interval == 0 or step == self.total_steps:
            final = self.sset.level
            target = final if step >= self.total_steps else gradual_sparsity(step, self.total_steps, final)
            self.current = max(self.current, target)  # sparsity only rises
            self.masks = float_masks(self.make_set(self.current).masks([p.detach() for p in params]), params)
            torch._foreach_mul_(params, self.masks)

    def state_dict(self):
        return {"masks": self.masks, "current": self.current, "total_steps": self.total_steps}

    def load_state_dict(self, state):
        self.masks, self.current, self.total_steps = state["masks"], state["current"], state["total_steps"]


MAGNITUDE_SCHEDULES = {"per_step": PerStepMagnitude, "one_shot": OneShotMagnitude, "gradual": GradualMagnitude}


def Magnitude(sparsity_set: SparsitySet, schedule: str = "per_step", *, make_set=None,
              gradual_interval: int = 1) -> PruningMethod:
    """The magnitude baseline with ``schedule`` (a key of MAGNITUDE_SCHEDULES)."""
    if schedule == "gradual":
        return GradualMagnitude(sparsity_set, make_set, gradual_interval)
    return MAGNITUDE_SCHEDULES[schedule](sparsity_set)


def make_magnitude(p: PruneConfig, sset: SparsitySet, make_set: Callable[[float], SparsitySet]) -> PruningMethod:
    """The sparsify phase's magnitude pruning from its config fields."""
    return Magnitude(sset, p.schedule, make_set=make_set, gradual_interval=p.gradual_interval)


METHOD = Method(make=make_magnitude, check=check_gradual_schedule)
