"""Pruning methods plugged into the one training loop (trainables.trial.train_epoch) through hooks.

Per-step work uses torch._foreach_* ops over the parameter list and never synchronises with the host;
scalars the loop reports are accumulated on the device and read in on_epoch_end.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from vocabulary.config import ConfigError, PruneConfig
from trainables.sparsity import SparsitySet

Project = Callable[[list[Tensor]], list[Tensor]]
MIN_ADMM_UPDATES = 2  # Z/U updates that must act on W (come before the phase's last step); DESIGN rule 12


def gradual_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f) (1 - t/T)^3, t clamped to [0, T]."""
    if total_steps <= 0:
        return final
    frac = min(max(step / total_steps, 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


def admm_schedule(interval: float, unit: str, steps_per_epoch: int, total_steps: int) -> list[int]:
    """The phase's 1-based steps after which ADMM updates Z and U: every ``interval`` steps or epochs.

    A fractional epoch interval is rounded to whole steps (at least 1); duplicates are dropped. An update at
    ``total_steps`` (the phase's last step) changes nothing that follows: the hard projection is Proj_S(W).
    """
    every = interval if unit == "step" else interval * steps_per_epoch
    out: list[int] = []
    k = 1
    while True:
        step = max(1, math.floor(k * every + 0.5))
        if step > total_steps:
            return out
        if not out or step > out[-1]:
            out.append(step)
        k += 1


def effective_admm_updates(interval: float, unit: str, steps_per_epoch: int, total_steps: int) -> int:
    """Z/U updates that act on W: those before the phase's last step."""
    return sum(1 for s in admm_schedule(interval, unit, steps_per_epoch, total_steps) if s < total_steps)


def check_admm_schedule(prune: PruneConfig, sparsify_epochs: int, steps_per_epoch: int) -> None:
    """Raise ConfigError("admm_interval") when fewer than MIN_ADMM_UPDATES Z/U updates act on W.

    With fewer, U never (or once) moves and "ADMM" is an L2 pull towards the first projection (DESIGN rule 12).
    A phase of 0 epochs (no sparsify phase) is not checked: there is no ADMM to speak of.
    """
    total = sparsify_epochs * steps_per_epoch
    if prune.method != "admm" or total == 0:
        return
    n = effective_admm_updates(prune.admm_interval, prune.admm_interval_unit, steps_per_epoch, total)
    if n >= MIN_ADMM_UPDATES:
        return
    longest = (total - 1) / MIN_ADMM_UPDATES  # in steps: updates at `longest`, 2*`longest` < total
    if longest < 1:
        hint = f"a phase of at least {MIN_ADMM_UPDATES + 1} steps (a smaller batch_size)"
    elif prune.admm_interval_unit == "step":
        hint = f"admm_interval at most {math.floor(longest)} steps"
    else:
        hint = f"admm_interval at most {longest / steps_per_epoch:.3g} epochs"
    raise ConfigError("admm_interval", f"{prune.admm_interval:g} {prune.admm_interval_unit}(s) gives {n} Z/U "
                      f"update(s) before the last step of the sparsify phase ({sparsify_epochs} epochs x "
                      f"{steps_per_epoch} steps); at least {MIN_ADMM_UPDATES} are needed for U to act: use "
                      f"{hint}, or more sparsify_epochs")


def check_gradual_schedule(prune: PruneConfig, sparsify_epochs: int, steps_per_epoch: int) -> None:
    """Raise ConfigError("gradual_interval") when a gradual schedule would raise the sparsity fewer than twice
    before the phase's last step: it would be a one-shot prune at the end, not a gradual one (rule 12)."""
    total = sparsify_epochs * steps_per_epoch
    if prune.method != "magnitude" or prune.schedule != "gradual" or total == 0:
        return
    raises = (total - 1) // prune.gradual_interval
    if raises < 2:
        raise ConfigError("gradual_interval", f"{prune.gradual_interval} steps gives {raises} sparsity raise(s) "
                          f"before the last step of the sparsify phase ({sparsify_epochs} epochs x "
                          f"{steps_per_epoch} steps); at least 2 are needed for a gradual schedule: use "
                          f"gradual_interval <= {max((total - 1) // 2, 1)} or more sparsify_epochs")


@torch.no_grad()
def rescale_dual(U: list[Tensor], rho_old: float, rho_new: float) -> list[Tensor]:
    """The scaled dual U = Y / rho after rho changes: U * rho_old / rho_new (Boyd et al. 2011, 3.4.1)."""
    return U if rho_new == rho_old else torch._foreach_mul(U, rho_old / rho_new)


@torch.no_grad()
def admm_update(W: list[Tensor], U: list[Tensor], project: Project, Z_prev: list[Tensor], rho: float
                ) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """One scaled-form ADMM Z/U update (Boyd et al. 2011, sec. 3.1.1 and 3.3).

    Z <- Proj_S(W + U); U <- U + W - Z. Returns (Z, U_new, primal, dual) with primal = sum ||W - Z||_F^2 and
    dual = rho^2 sum ||Z - Z_prev||_F^2 as 0-d device tensors (no host sync). Inputs are not modified.
    """
    WU = torch._foreach_add(W, U)
    Z = project(WU)
    r = torch._foreach_sub(W, Z)
    U_new = torch._foreach_add(U, r)
    primal = torch.stack(torch._foreach_norm(r)).square().sum()
    dual = torch.stack(torch._foreach_norm(torch._foreach_sub(Z, Z_prev))).square().sum() * rho**2
    return Z, U_new, primal, dual


class PruningMethod:
    """Hooks the training loop (trainables.trial.train_epoch) calls; ``params`` are the prunable parameters.

    - on_phase_start(params, total_steps, steps_per_epoch): once before the phase's first step.
    - before_step(params): after backward, before optimizer.step; may modify ``p.grad``.
    - after_step(params, step): after optimizer.step (step counts from 1 within the phase).
    - on_epoch_end(params, epoch) -> dict: epoch metrics (EPOCHS columns such as primal_residual, rho,
      mask_changes); the only hook that may synchronise with the host.
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


class Dense(PruningMethod):
    """No pruning (the dense phase and the dense control)."""


def _float_masks(masks: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    return [m.to(dtype=p.dtype, device=p.device) for m, p in zip(masks, like)]


class _FixedMask(PruningMethod):
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


class MaskedFinetune(_FixedMask):
    """Masked fine-tuning after the hard projection: pruned weights stay exactly zero."""

    def __init__(self, masks: list[Tensor] | None = None):
        self.masks = masks


class OneShotMagnitude(_FixedMask):
    """Project once at the phase start, then train with that mask fixed."""

    def __init__(self, sparsity_set: SparsitySet):
        self.sset = sparsity_set

    @torch.no_grad()
    def on_phase_start(self, params, total_steps, steps_per_epoch=None):
        self.masks = _float_masks(self.sset.masks([p.detach() for p in params]), params)
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
        torch._foreach_mul_(params, _float_masks(masks, params))
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


class GradualMagnitude(_FixedMask):
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
            self.masks = _float_masks(self.make_set(self.current).masks([p.detach() for p in params]), params)
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


class ADMM(PruningMethod):
    """ADMM pruning, scaled form: loss f(W) + (rho/2) sum ||W - Z + U||_F^2; Z/U updated on admm_schedule.

    The penalty's gradient rho (W - Z + U) is added to W.grad in before_step with foreach ops instead of
    building an autograd graph for it. After each update rho <- min(rho * rho_growth, rho_max) and U is
    rescaled by rho_old / rho_new, so the unscaled dual Y = rho U is unchanged by the rho step (Boyd 3.4.1).
    """

    def __init__(self, sparsity_set: SparsitySet, rho: float, rho_growth: float = 1.0, rho_max: float = 1.0,
                 interval: float = 1, unit: str = "epoch"):
        self.sset, self.rho, self.rho_growth, self.rho_max = sparsity_set, rho, rho_growth, rho_max
        self.interval, self.unit = interval, unit
        self.Z: list[Tensor] = []
        self.U: list[Tensor] = []
        self.schedule: set[int] = set()
        self.primal = self.dual = None
        self.updates = 0

    @torch.no_grad()
    def on_phase_start(self, params, total_steps, steps_per_epoch=None):
        self.Z = self.sset.project([p.detach().clone() for p in params])
        self.U = [torch.zeros_like(p) for p in params]
        self.schedule = set(admm_schedule(self.interval, self.unit, steps_per_epoch or total_steps, total_steps))
        self.primal = self.dual = None
        self.updates = 0

    @torch.no_grad()
    def before_step(self, params):
        # no per-parameter .detach(): under no_grad foreach ops read the parameters directly (one op each)
        diff = torch._foreach_sub(params, self.Z)
        torch._foreach_add_(diff, self.U)
        torch._foreach_add_([p.grad for p in params], diff, alpha=self.rho)

    @torch.no_grad()
    def after_step(self, params, step):
        if step not in self.schedule:
            return
        self.Z, self.U, self.primal, self.dual = admm_update([p.detach() for p in params], self.U,
                                                             self.sset.project, self.Z, self.rho)
        rho_new = min(self.rho * self.rho_growth, self.rho_max)
        self.U = rescale_dual(self.U, self.rho, rho_new)
        self.rho = rho_new
        self.updates += 1

    def on_epoch_end(self, params, epoch):
        nan = math.nan
        return {"primal_residual": float(self.primal) if self.primal is not None else nan,
                "dual_residual": float(self.dual) if self.dual is not None else nan, "rho": self.rho}

    @torch.no_grad()
    def penalty(self, params):
        diff = torch._foreach_sub([p.detach() for p in params], self.Z)
        torch._foreach_add_(diff, self.U)
        return torch.stack(torch._foreach_norm(diff)).square().sum() * (self.rho / 2)

    def state_dict(self):
        return {"Z": self.Z, "U": self.U, "rho": self.rho, "primal": self.primal, "dual": self.dual,
                "schedule": sorted(self.schedule), "updates": self.updates}

    def load_state_dict(self, state):
        self.Z, self.U, self.rho = state["Z"], state["U"], state["rho"]
        self.primal, self.dual = state["primal"], state["dual"]
        self.schedule, self.updates = set(state["schedule"]), state["updates"]


# The registry: config.METHODS names exactly these (tests/test_contracts.py checks it, and runs the method
# contract on every entry). A maker builds the sparsify-phase method from the prune config, the trial's
# sparsity set and a maker of that set at another level (gradual schedules).
METHODS: dict[str, Callable[[PruneConfig, SparsitySet, Callable[[float], SparsitySet]], PruningMethod]] = {
    "admm": lambda p, sset, make_set: ADMM(sset, p.rho, p.rho_growth, p.rho_max, p.admm_interval,
                                           p.admm_interval_unit),
    "magnitude": lambda p, sset, make_set: Magnitude(sset, p.schedule, make_set=make_set,
                                                     gradual_interval=p.gradual_interval),
}


def make_method(prune: PruneConfig, sset: SparsitySet, make_set: Callable[[float], SparsitySet]) -> PruningMethod:
    """The sparsify-phase method of ``prune.method`` (a key of METHODS)."""
    return METHODS[prune.method](prune, sset, make_set)
