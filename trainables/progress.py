"""One INFO line per training epoch, on the logger ``trainables.progress``: phase, epoch, loss, accuracy,
throughput and the time the trial has left. Every phase's epochs are logged, the dense ones too (they are
not passed to a trial's ``report``). ``python -m trainables train`` shows them on stderr unless ``-q``; a
sweep leaves the logger alone (its live table is the progress). No torch here.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

from vocabulary.config import TrialConfig

log = logging.getLogger("trainables.progress")

__all__ = ["PHASES", "epochs_after", "epoch_done", "duration"]

PHASES = ("dense", "control", "sparsify", "finetune")  # the order a trial runs its phases in


def epochs_after(cfg: TrialConfig, phase: str) -> int:
    """The epochs of the phases that follow ``phase`` in a trial of ``cfg``."""
    counts = {"dense": cfg.dense.dense_epochs, "control": cfg.control_epochs if cfg.run.dense_control else 0,
              "sparsify": cfg.train.sparsify_epochs, "finetune": cfg.train.finetune_epochs}
    return sum(counts[p] for p in PHASES[PHASES.index(phase) + 1:])


def epoch_done(cfg: TrialConfig, row: Mapping[str, Any], *, phase_epochs: int, wall_s: float) -> None:
    """Log one finished epoch (``row``: the epochs-table row); the time left assumes every epoch still to
    come, in this phase and the next ones, takes as long as this one (``wall_s``, evaluation included)."""
    if not log.isEnabledFor(logging.INFO):
        return
    left = (phase_epochs - row["phase_epoch"] + epochs_after(cfg, row["phase"])) * wall_s
    rho = row.get("rho", math.nan)
    log.info("%s epoch %d/%d  loss %.4f  val_acc %.4f  density %.3f%s  %.0f img/s  %s left", row["phase"],
             row["phase_epoch"], phase_epochs, row["train_loss"], row["val_acc"], row["density"],
             f"  rho {rho:.3g}" if isinstance(rho, (int, float)) and math.isfinite(rho) else "", row["images_per_s"], duration(left))


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, ``12s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
