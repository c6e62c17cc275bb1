"""Pruning methods plugged into the one training loop (trainables.trial) through hooks.

A method is its module here (``admm.py``, ``magnitude.py``: the hooks, the maker, the pre-training check) and
its entry in ``vocabulary/registry.py`` METHODS (name, help, fields, metrics and that module's name); nothing
else names it. ``METHODS`` is the registry seen from here: name -> the module's ``Method`` record. The trial
builds a method with ``make_method`` and checks a configuration with ``check_method``, never by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

from vocabulary import registry
from vocabulary.config import PruneConfig
from trainables.methods.admm import (ADMM, MIN_ADMM_UPDATES, admm_schedule, admm_update, check_admm_schedule,
                                     effective_admm_updates, rescale_dual)
from trainables.methods.base import (Dense, FixedMask, MaskedFinetune, Method, PruningMethod, float_masks,
                                     no_check)
from trainables.methods.magnitude import (MAGNITUDE_SCHEDULES, GradualMagnitude, Magnitude, OneShotMagnitude,
                                          PerStepMagnitude, check_gradual_schedule, gradual_sparsity)
from trainables.registered import Registered
from trainables.sparsity import SparsitySet, sparsity_set

__all__ = ["ADMM", "MAGNITUDE_SCHEDULES", "METHODS", "MIN_ADMM_UPDATES", "Dense", "FixedMask", "GradualMagnitude",
           "Magnitude", "MaskedFinetune", "Method", "OneShotMagnitude", "PerStepMagnitude", "PruningMethod",
           "admm_schedule", "admm_update", "check_admm_schedule", "check_gradual_schedule", "check_method",
           "effective_admm_updates", "float_masks", "gradual_sparsity", "make_method", "metric_columns",
           "no_check", "rescale_dual"]


# vocabulary.registry.METHODS seen from trainables: name -> the ``Method`` its module registers
METHODS: Mapping[str, Method] = Registered(lambda: registry.METHODS, "METHOD", "a Method record",
                                          lambda value: isinstance(value, Method))


def make_method(prune: PruneConfig, sset: SparsitySet,
                make_set: Callable[[float], SparsitySet] | None = None) -> PruningMethod:
    """The sparsify-phase method of ``prune.method``; ``make_set(level)`` builds the set at another level
    (default: the trial's set, ``sparsity_set(prune, level)``)."""
    if make_set is None:
        def make_set(level: float) -> SparsitySet:
            return sparsity_set(prune, level)
    return METHODS[prune.method].make(prune, sset, make_set)


def check_method(prune: PruneConfig, sparsify_epochs: int, steps_per_epoch: int) -> None:
    """The pre-training check of ``prune.method`` (its ``Method.check``): raises ConfigError naming the field."""
    METHODS[prune.method].check(prune, sparsify_epochs, steps_per_epoch)


def metric_columns(method: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """An epochs row's method columns: every registered method's metrics, ``values`` (what the hooks of
    ``method`` returned from on_epoch_end) where given, the metric's missing value (NaN / null) elsewhere.

    Raises ValueError for a value ``method`` does not declare in vocabulary/registry.py: it has no column.
    """
    undeclared = sorted(set(values) - {m.name for m in registry.METHODS[method].metrics})
    if undeclared:
        raise ValueError(f"method {method} reports {', '.join(undeclared)} without declaring it (its metrics in "
                         f"vocabulary/registry.py METHODS)")
    return {m.name: values.get(m.name, m.missing) for m in registry.method_metrics()}
