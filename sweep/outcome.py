"""A finished Ray trial's status: the one definition that the searcher (what Optuna is told), the live table,
the end writer (the rows of trials that could not write their own) and the final summary share.

No Ray here: it reads the last result dict the trainable reported (``trial_done`` is the trainable's final
report marker, see sweep.ray_tune.to_tune_metrics).
"""

from __future__ import annotations

from results.schema import STATUSES

__all__ = ["STATUSES", "trial_status"]


def trial_status(result: dict | None, errored: bool) -> str:
    """One of STATUSES: failed (errored after its retries, or never reported), stopped (ended without the
    final report: a scheduler such as ASHA stopped it), else the trial's own final status (ok | diverged)."""
    if errored or not result:
        return "failed"
    if not result.get("trial_done"):
        return "stopped"
    status = result.get("status")
    return status if status in ("ok", "diverged") else "failed"
