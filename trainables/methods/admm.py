"""ADMM pruning (Zhang et al. 2018; scaled form after Boyd et al. 2011): the pure updates, the schedule of Z/U
updates, the pre-training check that enough of them act on W, and the hooks. Registered as ``admm``
(vocabulary/registry.py: its fields and its metrics primal_residual, dual_residual, rho)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from vocabulary.config import ConfigError, PruneConfig
from trainables.methods.base import Method, PruningMethod
from trainables.sparsity import SparsitySet

__all__ = ["ADMM", "METHOD", "MIN_ADMM_UPDATES", "Project", "admm_schedule", "admm_update", "check_admm_schedule",
           "effective_admm_updates", "make_admm", "rescale_dual"]

Project = Callable[[list[Tensor]], list[Tensor]]
MIN_ADMM_UPDATES = 2  # Z/U updates that must act on W (come before the phase's last step); DESIGN rule 12


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
    A phase of 0 epochs (no sparsify phase) is not checked: there is no ADMM to speak of. ADMM's check hook.
    """
    total = sparsify_epochs * steps_per_epoch
    if total == 0:
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


def make_admm(p: PruneConfig, sset: SparsitySet, make_set: Callable[[float], SparsitySet]) -> ADMM:
    """The sparsify phase's ADMM from its config fields."""
    return ADMM(sset, p.rho, p.rho_growth, p.rho_max, p.admm_interval, p.admm_interval_unit)


METHOD = Method(make=make_admm, check=check_admm_schedule)
