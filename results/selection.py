"""The one rule that judges a configuration on all its seeds (DESIGN rule 15), shared by the sweep's searcher
(what Optuna is told), the analysis tables (which configuration is chosen, which seeds are paired) and the
report's summary. Plain Python: no torch, no Ray, no pandas.

A configuration is arch, method, every hyperparameter, and the device type and precision it ran on (a CPU
float32 run and a CUDA bf16 run are two configurations, never seeds of one). Its seeds are the sweep's
``--seeds`` (``sweep.json``), or, given rows only, every seed any row of it ran, in any status; with
several experiments merged, the union over them. Every row of the configuration counts.
"""

from __future__ import annotations

from typing import Iterable

from results.schema import STATUSES
from vocabulary.config import precision

COMPLETE, DIVERGED, STOPPED, INCOMPLETE = "complete", "diverged", "stopped", "incomplete"
# in precedence order: one diverged seed makes the configuration diverged whatever its other seeds did
STATES = (DIVERGED, STOPPED, INCOMPLETE, COMPLETE)
# the columns (derived from the trials table's ``device``) that join the hyperparameters in a configuration
IDENTITY_COLUMNS = ("device_type", "precision")

RULE = ("A configuration is judged on all its seeds (the sweep's --seeds; given rows only, every seed any row "
        "of it ran), and device type and precision are part of it. It is complete when every seed finished ok; "
        "only a complete configuration can be chosen, and its score is the mean over all its seeds. A diverged "
        "seed counts against the configuration: it is never chosen and is listed as diverged. A seed stopped "
        "by the scheduler means the configuration is never chosen. A failed seed (an infrastructure error) or "
        "one still running or never run leaves it incomplete: not chosen. The paired comparison uses the seeds "
        "both chosen configurations completed, and says when pairs were lost.")


def config_state(statuses: Iterable[tuple[int, str | None]], expected_seeds: Iterable[int] = ()) -> str:
    """One of STATES for a configuration whose rows (or Ray trials) are ``(seed, status)`` pairs, ``status``
    one of results.schema.STATUSES or None (still running); ``expected_seeds``: the seeds it must have
    (the sweep's --seeds), on top of those seen. A seed may appear more than once (merged experiments):
    every one of its rows counts."""
    rows = [(seed, status) for seed, status in statuses]
    seen = {status for _, status in rows}
    if DIVERGED in seen:
        return DIVERGED
    if "stopped" in seen:
        return STOPPED
    missing = set(expected_seeds) - {seed for seed, _ in rows}
    if not rows or missing or seen - {"ok"}:
        return INCOMPLETE  # failed, still running, an unknown status, or a seed never run
    return COMPLETE


def chosen_allowed(state: str) -> bool:
    """Whether a configuration in ``state`` may be the chosen one."""
    return state == COMPLETE


def paired_seeds(first: Iterable[int], second: Iterable[int]) -> tuple[list[int], list[int]]:
    """(seeds both chosen configurations completed, seeds only one of them has: the pairs lost), sorted."""
    a, b = set(first), set(second)
    return sorted(a & b), sorted(a ^ b)


def device_type(device: str | None) -> str | None:
    """The device type of a trials row's ``device`` ("cuda:0" -> "cuda", "cpu" -> "cpu"); None if unknown."""
    if device is None or not isinstance(device, str) or not device.strip():
        return None
    return device.strip().split(":", 1)[0].lower()


def device_precision(kind: str | None) -> str | None:
    """The compute precision a device type runs at (vocabulary.config.precision); None if unknown."""
    return None if kind is None else precision(kind)


def seed_status(told: dict) -> str:
    """The status (one of STATUSES) of one seed as sweep.searcher.classify stored it in the Optuna storage:
    ``state`` ok or pruned (stopped), or fail with ``why`` (its status, or why an ok trial had no objectives:
    failed)."""
    if told.get("state") == "ok":
        return "ok"
    if told.get("state") == "pruned":
        return "stopped"
    return told.get("why") if told.get("why") in STATUSES else "failed"
