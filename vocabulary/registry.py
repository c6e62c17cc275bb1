"""The registries of pruning methods and sparsity sets: what each is called, what it reads and what it reports.

Torch-free declarations (no torch, no Ray, no pandas), so every package can read them: ``vocabulary.config``
takes the method and set names, the fields a method owns and the ``--method`` / ``--sparsity-set`` help from
here; ``results.schema`` takes the epochs table's method columns from ``Metric`` declarations. A method's
behaviour (its class, its maker, its pre-training checks) lives in the module its entry names, a sparsity
set's (its SparsitySet class and maker) likewise; registering a method or a set is one entry in METHODS or SETS
below, nothing else (docs/ARCHITECTURE.md, "How to add ...").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """A per-epoch value a method reports from ``on_epoch_end``: one column of the epochs table.

    ``type`` is "float" or "int" (results.schema maps it to an Arrow type); ``comment`` says what it measures.
    Rows of epochs where the method does not report it (other methods, the dense and fine-tune phases) hold
    ``missing``: NaN for a float, null for an int.
    """

    name: str
    type: str
    comment: str

    @property
    def missing(self) -> Any:
        return math.nan if self.type == "float" else None


@dataclass(frozen=True)
class MethodSpec:
    """One pruning method, torch-free.

    - ``help``: one line; the ``--method`` help lists it.
    - ``module``: the module that implements it; its ``METHOD`` is a ``trainables.methods.Method`` (the maker
      of the sparsify-phase hooks and the pre-training check). Named, not imported: vocabulary imports none
      of our packages, trainables resolves it.
    - ``fields``: the PruneConfig fields only this method reads (other methods' rows record them as null).
    - ``metrics``: the per-epoch values it reports (epochs table columns, in this order).
    """

    help: str
    module: str
    fields: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = ()


@dataclass(frozen=True)
class SetSpec:
    """One sparsity set, torch-free.

    - ``help``: one line; the ``--sparsity-set`` help lists it.
    - ``module``: the module that implements it; its ``SET`` is the maker of a ``trainables.sparsity.SparsitySet``
      from the PruneConfig. Named, not imported: trainables resolves it (``trainables.sparsity.SETS``).
    - ``fields``: the PruneConfig fields it reads (its maker reads no other).
    """

    help: str
    module: str
    fields: tuple[str, ...] = ()

    @property
    def fixed_level(self) -> bool:
        """True when the set does not read ``sparsity``: its pattern fixes the level (N:M keeps n of m), so a
        schedule that ramps the sparsity has no meaning with it."""
        return "sparsity" not in self.fields


# The pruning methods, in the order the tables show them.
METHODS: dict[str, MethodSpec] = {
    "admm": MethodSpec(
        help="ADMM: a penalty (rho) pulls the weights towards their projection onto the sparse set, "
             "updated every admm_interval",
        module="trainables.methods.admm",
        fields=("rho", "rho_growth", "rho_max", "admm_interval", "admm_interval_unit"),
        metrics=(Metric("primal_residual", "float", "ADMM sum ||W - Z||_F^2 at the last Z/U update, NaN otherwise"),
                 Metric("dual_residual", "float", "ADMM rho^2 sum ||Z - Z_prev||_F^2, NaN otherwise"),
                 Metric("rho", "float", "ADMM penalty weight at the epoch's end, NaN otherwise"))),
    "magnitude": MethodSpec(
        help="the magnitude baseline: keep the largest weights, on a schedule (per_step, one_shot or gradual)",
        module="trainables.methods.magnitude",
        fields=("schedule", "gradual_interval"),
        metrics=(Metric("mask_changes", "int",
                        "magnitude per_step: weights that entered or left the kept set this epoch"),)),
}

# The method every other method is compared against (paired, seed by seed) unless a sweep names another
# (python -m sweep run --reference; sweep.json "reference"; python -m analysis report --reference).
DEFAULT_REFERENCE = "magnitude"

# Configurations each Optuna sampler of the sweep draws at random before it models the space (TPE's and GP's
# n_startup_trials, NSGA-II's first generation): sweep.searcher.make_sampler passes them, sweep.json records
# the sweep's, and the report's "essentially random search" caution compares a study's size with it.
SAMPLER_STARTUP = {"tpe": 10, "gp": 10, "nsga2": 50}

# The sparsity sets (the --sparsity-set choices, in this order).
SETS: dict[str, SetSpec] = {
    "uniform": SetSpec("sparsity in every prunable layer", module="trainables.sparsity_sets.uniform",
                       fields=("sparsity",)),
    "global": SetSpec("one magnitude threshold over all prunable layers", module="trainables.sparsity_sets.global_",
                      fields=("sparsity",)),
    "nm": SetSpec("N:M groups: nm_n of every nm_m weights along the input dimension",
                  module="trainables.sparsity_sets.nm", fields=("nm_n", "nm_m")),
}


def method_metrics() -> list[Metric]:
    """Every registered method's metrics, in registry order, each name once (the epochs table's method columns).

    Two methods may report the same metric only with the same type (one column serves both).
    """
    seen: dict[str, Metric] = {}
    for name, spec in METHODS.items():
        for metric in spec.metrics:
            if metric.type not in ("float", "int"):
                raise ValueError(f"method {name}: metric {metric.name} has type {metric.type!r} (float or int)")
            if metric.name in seen and seen[metric.name].type != metric.type:
                raise ValueError(f"method {name}: metric {metric.name} is a {metric.type}, another method's "
                                 f"is a {seen[metric.name].type}")
            seen.setdefault(metric.name, metric)
    return list(seen.values())


def choices_help(specs: dict[str, MethodSpec] | dict[str, SetSpec]) -> str:
    """'name: help; name: help' for a registry (the generated part of a field's --help)."""
    return "; ".join(f"{name}: {spec.help}" for name, spec in specs.items())
