"""Pruning methods plugged into the one training loop (trainables.trial.train_epoch) through hooks.

Per-step work uses torch._foreach_* ops over the parameter list and never synchronises with the host;
scalars the loop reports are accumulated on the device and read in on_epoch_end.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from trainables.sparsity import SparsitySet

Project = Callable[[list[Tensor]], list[Tensor]]


def gradual_sparsity(step: int, total_steps: int, final: float, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017) cubic schedule: s_t = s_f + (s_i - s_f) (1 - t/T)^3, t clamped to [0, T]."""
    if total_steps <= 0:
        return final
    frac = min(max(step / total_steps, 0.0), 1.0)
    return final + (initial - final) * (1.0 - frac) ** 3


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
    """Hooks the training loop calls; ``params`` is the list of prunable parameters.

    - on_phase_start(params, steps_in_phase): once before the phase's first step.
    - before_step(params): after backward, before optimizer.step; may modify ``p.grad``.
    - after_step(params, step): after optimizer.step (step counts from 1 within the phase).
    - on_epoch_end(params, epoch) -> dict: epoch metrics (primal_residual, dual_residual, rho); may sync.
    - penalty(params) -> 0-d tensor: the method's term of the objective (0 for most).
    - state_dict()/load_state_dict(): everything needed for an exact resume, tensors included.
    """

    def on_phase_start(self, params: list[Tensor], steps_in_phase: int) -> None:
        pass

    def before_step(self, params: list[Tensor]) -> None:
        pass

    def after_step(self, params: list[Tensor], step: int) -> None:
        pass

    def on_epoch_end(self, params: list[Tensor], epoch: int) -> dict:
        return {"primal_residual": math.nan, "dual_residual": math.nan, "rho": math.nan}

    @torch.no_grad()
    def penalty(self, params: list[Tensor]) -> Tensor:
        return torch.zeros((), device=params[0].device if params else "cpu")

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Dense(PruningMethod):
    """No pruning (the dense phase)."""


def _float_masks(masks: list[Tensor], like: list[Tensor]) -> list[Tensor]:
    return [m.to(dtype=p.dtype, device=p.device) for m, p in zip(masks, like)]


class MaskedFinetune(PruningMethod):
    """Keeps pruned weights exactly zero: grads masked before the step, weights re-masked after it.

    The re-mask matters: Adam's moments and weight decay would otherwise move zeroed weights again.
    """

    def __init__(self, masks: list[Tensor] | None = None):
        self.masks = masks

    def before_step(self, params):
        grads = [p.grad for p in params]
        torch._foreach_mul_(grads, self.masks)

    @torch.no_grad()
    def after_step(self, params, step):
        torch._foreach_mul_(params, self.masks)

    def state_dict(self):
        return {"masks": self.masks}

    def load_state_dict(self, state):
        self.masks = state["masks"]


class Magnitude(PruningMethod):
    """Magnitude pruning onto ``sparsity_set`` with schedule per_step | one_shot | gradual."""

    def __init__(self, sparsity_set: SparsitySet, schedule: str = "per_step", *, make_set=None,
                 gradual_interval: int = 1):
        self.sset, self.schedule, self.make_set = sparsity_set, schedule, make_set
        self.gradual_interval = gradual_interval
        self.masks: list[Tensor] | None = None
        self.total_steps = 0
        self.current = 0.0

    @torch.no_grad()
    def _prune(self, params, sset: SparsitySet) -> None:
        self.masks = _float_masks(sset.masks([p.detach() for p in params]), params)
        torch._foreach_mul_(params, self.masks)

    def on_phase_start(self, params, steps_in_phase):
        self.total_steps = steps_in_phase
        if self.schedule == "gradual":
            self.current = 0.0
            self.masks = [torch.ones_like(p) for p in params]
        else:
            self._prune(params, self.sset)

    def before_step(self, params):
        if self.masks is not None:
            torch._foreach_mul_([p.grad for p in params], self.masks)

    @torch.no_grad()
    def after_step(self, params, step):
        if self.schedule == "per_step":
            self._prune(params, self.sset)  # the seed's definition: project after every optimizer step
        elif self.schedule == "one_shot":
            torch._foreach_mul_(params, self.masks)
        else:
            if step % self.gradual_interval == 0 or step == self.total_steps:
                target = self.sset.sparsity if step >= self.total_steps else gradual_sparsity(
                    step, self.total_steps, self.sset.sparsity)
                # sparsity only rises, and previously pruned weights stay pruned (masks kept between raises)
                torch._foreach_mul_(params, self.masks)
                self.current = max(self.current, target)
                self._prune(params, self.make_set(self.current))
            else:
                torch._foreach_mul_(params, self.masks)

    def state_dict(self):
        return {"masks": self.masks, "current": self.current, "total_steps": self.total_steps}

    def load_state_dict(self, state):
        self.masks, self.current, self.total_steps = state["masks"], state["current"], state["total_steps"]


class ADMM(PruningMethod):
    """ADMM pruning: loss f(W) + (rho/2) sum ||W - Z + U||_F^2, Z/U updated every ``interval`` units.

    The penalty's gradient rho (W - Z + U) is added to W.grad in before_step with foreach ops instead of
    building an autograd graph for it.
    """

    def __init__(self, sparsity_set: SparsitySet, rho: float, rho_growth: float = 1.0, rho_max: float = 1.0,
                 interval: int = 1, unit: str = "epoch"):
        self.sset, self.rho, self.rho_growth, self.rho_max = sparsity_set, rho, rho_growth, rho_max
        self.interval, self.unit = interval, unit
        self.Z: list[Tensor] = []
        self.U: list[Tensor] = []
        self.primal = self.dual = None

    @torch.no_grad()
    def on_phase_start(self, params, steps_in_phase):
        self.Z = self.sset.project([p.detach().clone() for p in params])
        self.U = [torch.zeros_like(p) for p in params]
        self.primal = self.dual = None

    @torch.no_grad()
    def before_step(self, params):
        # no per-parameter .detach(): under no_grad foreach ops read the parameters directly (one op each)
        diff = torch._foreach_sub(params, self.Z)
        torch._foreach_add_(diff, self.U)
        torch._foreach_add_([p.grad for p in params], diff, alpha=self.rho)

    @torch.no_grad()
    def _update(self, params):
        self.Z, self.U, self.primal, self.dual = admm_update([p.detach() for p in params], self.U,
                                                             self.sset.project, self.Z, self.rho)
        self.rho = min(self.rho * self.rho_growth, self.rho_max)

    def after_step(self, params, step):
        if self.unit == "step" and step % self.interval == 0:
            self._update(params)

    def on_epoch_end(self, params, epoch):
        if self.unit == "epoch" and epoch % self.interval == 0:
            self._update(params)
        nan = math.nan
        return {"primal_residual": float(self.primal) if self.primal is not None else nan,
                "dual_residual": float(self.dual) if self.dual is not None else nan, "rho": self.rho}

    @torch.no_grad()
    def penalty(self, params):
        diff = torch._foreach_sub([p.detach() for p in params], self.Z)
        torch._foreach_add_(diff, self.U)
        return torch.stack(torch._foreach_norm(diff)).square().sum() * (self.rho / 2)

    def state_dict(self):
        return {"Z": self.Z, "U": self.U, "rho": self.rho, "primal": self.primal, "dual": self.dual}

    def load_state_dict(self, state):
        self.Z, self.U, self.rho = state["Z"], state["U"], state["rho"]
        self.primal, self.dual = state["primal"], state["dual"]
