"""Live terminal view of a sweep: a Ray Tune callback that keeps a compact table of trials.

What it shows (``LiveTable.render``)::

    sweep: 2 running, 1 pending, 3 finished (2 ok, 1 diverged, 0 failed, 0 stopped), 1m05s
    trial     study                        seed phase     epoch val_acc  pruned status
    1e3757c3  mobilenet_v2-admm               0 sparsify      2  0.3529 RUNNING
    ...
    best final_val_acc per study:
      mobilenet_v2-admm                  0.4510  957e4ad8  (2 ok)

Running trials first (oldest first), then the most recently finished, at most ``max_rows`` rows in all.
A finished trial's status is its outcome: ``ok`` or ``diverged`` (the trial's own final status), ``stopped``
(ended without the final report: a scheduler such as ASHA stopped it), ``failed`` (errored after its retries).
The best per study counts ``ok`` trials only (a diverged trial is neither scored as zero nor as best).

Output goes to the ``sweep.progress`` logger (the CLI shows it on stdout), not to a callable, because Tune
pickles callbacks into its experiment state. When stdout is a terminal each block is drawn at the top of a
cleared screen (ANSI home + clear, like ``watch``), so the table stays whole even though Ray's forwarded worker
logs interleave with it (they show below it until the next block; moving the cursor up over "the previous
block" would erase them and garble the table); otherwise blocks are plain text, one after the other.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any, Callable

from ray import tune

from .outcome import STATUSES, trial_status

__all__ = ["LiveTable", "study_of"]

_LOG = "sweep.progress"
_HOME_AND_CLEAR = "\x1b[H\x1b[2J"  # cursor to the top left, clear the screen


def study_of(config: dict) -> str:
    """The study a trial belongs to: ``_study`` from our searcher, else ``<arch>-<method>``."""
    return config.get("_study") or f"{config.get('arch')}-{config.get('method')}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _acc(value: Any) -> str:
    v = _number(value)
    return "-" if v is None else f"{v:.4f}"


def _duration(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LiveTable(tune.Callback):
    """Tune callback: a table of running and recently finished trials, the best ``final_val_acc`` per study and
    a counts line, logged to ``sweep.progress``.

    Logs at most once every ``interval_s`` seconds on ``on_trial_result``, always on trial complete and error.
    ``clock`` (seconds, monotonic) is injectable for tests and must pickle (a module-level function does).
    ``redraw``: True/False forces the clear-screen redraw on/off; None (default): on when stdout is a terminal.

    State is plain dicts and numbers, so the callback pickles; the rate limit restarts after unpickling (a
    restored sweep shows its first result at once). Tune calls callbacks from its driver loop only, so no
    locking.
    """

    # pruned: projected_val_acc, what the trial would score pruned onto its target set now (DESIGN rule 14:
    # what early stopping ranks); val_acc: the weights as they are (dense during ADMM's sparsify phase)
    HEADER = f"{'trial':9} {'study':28} {'seed':>4} {'phase':9} {'epoch':>5} {'val_acc':>7} {'pruned':>7} status"

    def __init__(self, interval_s: float = 10.0, max_rows: int = 20, *,
                 clock: Callable[[], float] = time.monotonic, redraw: bool | None = None, total: int = 0):
        if interval_s < 0 or max_rows < 1:
            raise ValueError(f"interval_s must be >= 0 and max_rows >= 1 (got {interval_s}, {max_rows})")
        self.interval_s = interval_s
        self.max_rows = max_rows
        self.clock = clock
        self.redraw = redraw
        self.total = total  # trials the sweep will run (0: unknown, no ETA)
        self.rows: dict[str, dict[str, Any]] = {}  # trial id -> row; insertion order = first seen
        self.finished_order: list[str] = []  # trial ids, in the order they finished
        self.best: dict[str, tuple[float, str]] = {}  # study -> (final_val_acc, trial id), ok trials only
        self.ok_per_study: dict[str, int] = {}
        self.tune_counts: dict[str, int] = {}  # Tune status -> trials, from the latest callback's trial list
        self.started_at: float | None = None  # when this process first saw a trial (the pace's clock)
        self.last_emit: float | None = None
        # the ETA's pace counts only trials finished while this process watched (``timed``): trials that had
        # finished before a resume (Tune restored them finished, or this table was unpickled) are ``earlier``,
        # done but not timed, so neither the downtime nor the earlier trials skew the pace
        self.timed = 0
        self.earlier: set[str] = set()  # trial ids

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["last_emit"] = None
        # unpickled in another process (a resume): its clock restarts, what finished here becomes earlier
        state.update(started_at=None, earlier=self.earlier | set(self.finished_order), timed=0)
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("earlier", set(state.get("finished_order", [])))  # pickled by an older version
        state.setdefault("timed", 0)
        self.__dict__.update(state)

    # -- Tune hooks ---------------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        # Tune calls this when the trial's actor has started, BEFORE it sets the trial RUNNING: counting
        # Tune's status here showed a started trial (e.g. one building the dense control) as pending
        row = self._see(trials, trial)
        if trial.status == "PENDING":  # counted as pending by _see just now
            self.tune_counts["PENDING"] -= 1
        row["status"] = "RUNNING"

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        row = self._see(trials, trial)
        row.update(phase=result.get("phase", row["phase"]), epoch=result.get("epoch", row["epoch"]),
                   val_acc=result.get("val_acc", row["val_acc"]),
                   pruned=result.get("projected_val_acc", row["pruned"]))
        now = self.clock()
        if self.last_emit is None or now - self.last_emit >= self.interval_s:
            self.emit(now)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trials, trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trials, trial, errored=True)

    # -- state ---------------------------------------------------------------------------------------------
    def _see(self, trials, trial) -> dict[str, Any]:
        if self.started_at is None:
            self.started_at = self.clock()
            # Tune's restored trials that had finished before this process watched (not this event's trial)
            self.earlier |= {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR") and t is not trial}
        self.tune_counts = {}
        for t in trials:
            self.tune_counts[t.status] = self.tune_counts.get(t.status, 0) + 1
        row = self.rows.get(trial.trial_id)
        if row is None:
            config = trial.config or {}
            row = self.rows[trial.trial_id] = {
                "trial_id": trial.trial_id, "study": study_of(config), "seed": config.get("seed", "-"),
                "phase": "-", "epoch": None, "val_acc": None, "pruned": None, "status": "RUNNING"}
        if row["status"] in ("RUNNING", "PENDING", "PAUSED"):
            row["status"] = trial.status
        return row

    def _finish(self, trials, trial, *, errored: bool) -> None:
        row = self._see(trials, trial)
        result = trial.last_result or {}
        row["status"] = trial_status(result, errored)
        if not errored:
            row.update(phase=result.get("phase", row["phase"]), epoch=result.get("epoch", row["epoch"]),
                       val_acc=result.get("final_val_acc", result.get("val_acc", row["val_acc"])),
                       pruned=result.get("final_val_acc", result.get("projected_val_acc", row["pruned"])))
        if trial.trial_id in self.finished_order:  # a trial reported twice (e.g. after a restore)
            self.finished_order.remove(trial.trial_id)
        elif trial.trial_id not in self.earlier:
            self.timed += 1
        self.finished_order.append(trial.trial_id)
        acc = _number(result.get("final_val_acc"))
        if row["status"] == "ok":
            self.ok_per_study[row["study"]] = self.ok_per_study.get(row["study"], 0) + 1
            if acc is not None and not math.isnan(acc) and acc > self.best.get(row["study"], (-math.inf, ""))[0]:
                self.best[row["study"]] = (acc, trial.trial_id)
        self.emit(self.clock())

    # -- output --------------------------------------------------------------------------------------------
    def render(self, now: float | None = None) -> str:
        """The current block as text (no ANSI codes); ``now`` from ``clock`` for the elapsed time."""
        now = self.clock() if now is None else now
        finished = [self.rows[i] for i in self.finished_order]
        by_outcome = {k: sum(r["status"] == k for r in finished) for k in STATUSES}
        running = [r for r in self.rows.values() if r["status"] == "RUNNING"]
        pending = self.tune_counts.get("PENDING", 0)
        elapsed = _duration(now - self.started_at) if self.started_at is not None else "0m00s"
        counts = ", ".join(f"{by_outcome[k]} {k}" for k in STATUSES)
        lines = [f"sweep: {len(running)} running, {pending} pending, {len(finished)} finished ({counts}), "
                 f"{elapsed}{self._eta(now, len(finished))}",
                 self.HEADER]
        shown = running[:self.max_rows]
        shown += list(reversed(finished))[:self.max_rows - len(shown)]
        lines += [self._row(r) for r in shown]
        hidden_running = len(running) - min(len(running), self.max_rows)
        hidden_finished = len(finished) - (len(shown) - min(len(running), self.max_rows))
        if hidden_running or hidden_finished:
            lines.append(f"(+{hidden_running} running, +{hidden_finished} finished not shown)")
        lines.append("best final_val_acc per study:")
        for study in sorted({r["study"] for r in self.rows.values()}):
            acc, trial_id = self.best.get(study, (None, ""))
            lines.append(f"  {study:32} {_acc(acc):>7}  {trial_id:8}  ({self.ok_per_study.get(study, 0)} ok)")
        return "\n".join(lines)

    def _eta(self, now: float, finished: int) -> str:
        """", about Xm left" from the pace of the trials finished while this process watched (empty until one
        has); trials finished before a resume count as done, not in the pace."""
        done = max(finished, len(self.earlier | set(self.finished_order)))
        if not self.total or not self.timed or self.started_at is None:
            return ""
        left = max(self.total - done, 0)
        if left == 0:
            return ", done"
        return f", about {_duration((now - self.started_at) / self.timed * left)} left ({done}/{self.total})"

    @staticmethod
    def _row(r: dict[str, Any]) -> str:
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        return (f"{r['trial_id'][:9]:9} {r['study'][:28]:28} {str(r['seed']):>4} {str(r['phase'])[:9]:9} "
                f"{epoch:>5} {_acc(r['val_acc']):>7} {_acc(r['pruned']):>7} {r['status']}")

    def emit(self, now: float) -> None:
        """Log the current block to ``sweep.progress`` (on a cleared screen when redrawing)."""
        self.last_emit = now
        logger = logging.getLogger(_LOG)
        if not logger.isEnabledFor(logging.INFO):
            return
        redraw = self.redraw if self.redraw is not None else _stdout_is_tty()
        logger.info((_HOME_AND_CLEAR if redraw else "") + self.render(now))


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False
