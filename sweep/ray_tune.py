"""What runs inside Ray: the trainable, the shared dense store (an actor), the end-writer callback. The
Tuner is assembled in sweep.driver.

The trainable wraps ``trainables.trial.run_trial`` (contract: docs/ARCHITECTURE.md): metrics and checkpoints
leave through the ``report`` callable we give it; at the end it writes the trial's Parquet tables into
``<experiment>/results``. Ray's own key ``done`` is renamed ``trial_done`` so Tune never mistakes our
final-report marker for its own.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
from ray import tune

from results import schema
from vocabulary.config import TrialConfig
from results.files import read_bytes, write_bytes

from .outcome import trial_status
from .searcher import META_KEYS, trial_row

__all__ = ["sweep_trainable", "TrialContext", "DenseStoreActor", "start_dense_store", "RayDenseStore", "EndWriter",
           "MissingCheckpoints", "split_config", "to_tune_metrics", "row_id", "finished_row", "failed_row",
           "drop_missing_checkpoints", "checkpoint_epochs", "last_line", "read_error", "DENSE_DIR", "LEASE_S"]

log = logging.getLogger(__name__)

DENSE_DIR = "dense"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares (pickled once by tune.with_parameters)."""

    experiment: str  # absolute path or URI of the experiment folder
    name: str
    space: str
    dense_actor: str  # name of the DenseStoreActor


# -- dense store -------------------------------------------------------------------------------------
LEASE_S = 120.0  # a builder that has not renewed its grant for this long is presumed dead (node lost)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class DenseStoreActor:
    """Grants one builder per key; keeps payloads in memory and persists them to ``<experiment>/dense``.

    State: ``payloads`` (key -> bytes), ``leases`` (key -> (token, last renewal) of the builder at work),
    ``builds`` (grants per key; the test's "built once" evidence, also kept in ``dense/builds.json``).
    A builder renews its lease while it trains; one that raises gives the lease back, one whose node died
    stops renewing and its lease expires, so a waiting trial is granted the build instead of waiting forever.
    Persisted payloads make a restarted actor (``max_restarts``) and a resumed sweep reuse finished models.
    """

    def __init__(self, experiment: str, lease_s: float = LEASE_S):
        self.experiment = experiment
        self.lease_s = lease_s
        self.payloads: dict[str, bytes] = {}
        self.leases: dict[str, tuple[str, float]] = {}
        stored = read_bytes(experiment, posixpath.join(DENSE_DIR, "builds.json"))
        self.builds: dict[str, int] = json.loads(stored) if stored else {}

    def acquire(self, key: str) -> tuple[str, bytes | str | None]:
        """("ready", payload) | ("build", token): build, then put(key, token, payload) | ("wait", None)."""
        import uuid

        if key not in self.payloads:
            stored = read_bytes(self.experiment, posixpath.join(DENSE_DIR, f"{key}.bin"))
            if stored is not None:
                self.payloads[key] = stored  # resume: the persisted dense model is reused
        if key in self.payloads:
            return "ready", self.payloads[key]
        lease = self.leases.get(key)
        if lease is not None and time.monotonic() - lease[1] < self.lease_s:
            return "wait", None
        if lease is not None:
            log.warning("dense build of %s: builder silent for %.0f s, granting the build again", key, self.lease_s)
        token = uuid.uuid4().hex
        self.leases[key] = (token, time.monotonic())
        self.builds[key] = self.builds.get(key, 0) + 1
        self._save_builds()
        return "build", token

    def renew(self, key: str, token: str) -> bool:
        """Keep a build lease alive; False when it was lost (expired and granted to another trial)."""
        if self.leases.get(key, (None,))[0] != token:
            return False
        self.leases[key] = (token, time.monotonic())
        return True

    def put(self, key: str, token: str, payload: bytes) -> None:
        if key not in self.payloads:  # a late builder whose lease expired still delivers a valid model
            write_bytes(self.experiment, posixpath.join(DENSE_DIR, f"{key}.bin"), payload)
            self.payloads[key] = payload
        if self.leases.get(key, (None,))[0] == token:
            del self.leases[key]

    def release(self, key: str, token: str) -> None:
        if self.leases.get(key, (None,))[0] == token:
            del self.leases[key]

    def stats(self) -> dict[str, int]:
        return dict(self.builds)

    def lease_seconds(self) -> float:
        return self.lease_s

    def _save_builds(self) -> None:
        write_bytes(self.experiment, posixpath.join(DENSE_DIR, "builds.json"), json.dumps(self.builds).encode())


def start_dense_store(name: str, experiment: str, lease_s: float = LEASE_S):
    """The sweep's dense store, pinned to the driver's node (it dies with the driver, never with a worker)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return DenseStoreActor.options(
        name=name, get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
    ).remote(experiment, lease_s)


class RayDenseStore:
    """DenseStore protocol (docs/ARCHITECTURE.md) over the named DenseStoreActor; works across nodes."""

    def __init__(self, actor_name: str, poll_s: float = 0.5):
        self.actor = ray.get_actor(actor_name)
        self.poll_s = poll_s

    def get_or_build(self, key: str, build: Callable[[], bytes], wait: bool = True) -> bytes | None:
        while True:
            state, value = ray.get(self.actor.acquire.remote(key))
            if state == "ready":
                return value
            if state == "build":
                return self._build(key, value, build)
            if not wait:
                return None
            time.sleep(self.poll_s)

    def _build(self, key: str, token: str, build: Callable[[], bytes]) -> bytes:
        import threading

        stop = threading.Event()
        every = ray.get(self.actor.lease_seconds.remote()) / 4

        def renew() -> None:
            while not stop.wait(every):
                try:
                    ray.get(self.actor.renew.remote(key, token))
                except Exception:  # noqa: BLE001 - renewal is best effort; the build goes on
                    log.debug("lease renewal of %s failed", key, exc_info=True)

        thread = threading.Thread(target=renew, daemon=True, name=f"dense-lease-{key[:8]}")
        thread.start()
        try:
            payload = build()
        except BaseException:
            stop.set()
            ray.get(self.actor.release.remote(key, token))
            raise
        stop.set()
        ray.get(self.actor.put.remote(key, token, payload))
        return payload


# -- the trainable -----------------------------------------------------------------------------------
def split_config(config: dict) -> tuple[dict, dict]:
    """(TrialConfig flat dict, sweep metadata)."""
    flat = {k: v for k, v in config.items() if k not in META_KEYS}
    meta = {k: config[k] for k in META_KEYS if k in config}
    return flat, meta


def to_tune_metrics(metrics: dict) -> dict:
    """Rename ``done`` (Tune reserves it) and drop non-scalars Tune cannot aggregate."""
    out = {("trial_done" if k == "done" else k): v for k, v in metrics.items()
           if k not in ("trial_id", "config_json", "provenance_json")}  # Tune fills trial_id itself
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str, bool)) or v is None}


def sweep_trainable(config: dict, data: Any = None, context: TrialContext | None = None) -> None:
    """Ray function trainable: resume from Tune's checkpoint, run the trial, write its Parquet tables."""
    from trainables.trial import run_trial

    flat, meta = split_config(config)
    trial_id = row_id(meta, tune.get_context().get_trial_id())
    done = finished_row(context.experiment, flat, trial_id)
    if done is not None:
        # the driver died after this trial wrote its results but before Tune recorded its end: on resume
        # it reports its stored end instead of training again
        final = done.get("final_val_acc")
        tune.report({**to_tune_metrics(done), "val_acc": final, "projected_val_acc": final, "trial_done": True})
        return
    store = RayDenseStore(context.dense_actor)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        m = to_tune_metrics(metrics)
        if checkpoint_dir:
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        else:
            tune.report(m)

    checkpoint = tune.get_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        resume_from = checkpoint.to_directory(os.path.join(tmp, "resume")) if checkpoint else None
        # tables first, final report second: a scheduler may stop the trial on its final report
        run_trial(TrialConfig.from_dict(flat), data=data, report=report, resume_from=resume_from,
                  dense_store=store, trial_id=trial_id, runner={"ray_node": ray.get_runtime_context().get_node_id()},
                  on_result=lambda result: result.write(
                      context.experiment, trial_id=trial_id, experiment=context.name,
                      extra={"study": meta.get("_study", ""), "optuna_trial": int(meta.get("_optuna_trial", -1)),
                             "space": context.space, "stage": meta.get("_stage", schema.TUNING)}))


def row_id(meta: dict, tune_id: str) -> str:
    """The id a trial's rows (and model file) are written under: a confirmation trial's deterministic id
    (sweep.confirm: a re-run finds and skips it), else Tune's trial id."""
    return str(meta.get("_trial_id") or tune_id)


def finished_row(experiment: str, flat: dict, trial_id: str) -> dict | None:
    """This trial's trials-table row when it already ended ok or diverged, else None."""
    row = trial_row(experiment, flat.get("arch"), flat.get("method"), trial_id)
    return row if row is not None and row.get("status") in ("ok", "diverged") else None


# -- callbacks -----------------------------------------------------------------------------------------
class EndWriter(tune.Callback):
    """Rows for trials that end without writing their own tables (the trainable writes ok/diverged ones).

    - errored after its retries: a trials row with status ``failed`` and the error;
    - stopped early by the scheduler (ASHA; no final report): a trials row with status ``stopped`` and the
      epochs rows it ran, read from its last checkpoint, so accounting and convergence plots see it.
    """

    def __init__(self, context: TrialContext):
        self.context = context

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = read_error(str(trial.error_file or "error"))
        self._write(trial, "failed", error)
        # a caution on the console (Tune's own traceback goes to the log file unless -v)
        log.warning("trial %s failed after its retries: %s\n  full log: %s", trial.trial_id, last_line(error),
                    trial.error_file or "(none: see the sweep's log file)")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        log.warning("trial %s crashed, retrying from its last checkpoint: %s", trial.trial_id,
                    last_line(read_error(str(trial.error_file or "error"))))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if trial_status(trial.last_result, False) == "stopped":
            self._write(trial, "stopped", "stopped early by the scheduler")

    def _write(self, trial, status: str, error: str) -> None:
        flat, meta = split_config(trial.config)
        trial_id = row_id(meta, trial.trial_id)
        if finished_row(self.context.experiment, flat, trial_id) is not None:
            return  # the trial wrote its own ok/diverged tables: they are the truth
        try:
            cfg = TrialConfig.from_dict(flat)
        except Exception:  # noqa: BLE001 - a row is still wanted; record the raw config
            cfg = None
        epochs = checkpoint_epochs(trial) if status == "stopped" else []
        row = failed_row(trial_id, flat, meta, cfg, self.context, error)
        row.update(status=status, epochs_run=len(epochs),
                   wall_time_s=float((trial.last_result or {}).get("time_total_s", math.nan)))
        where = dict(arch=flat.get("arch", "unknown"), method=flat.get("method", "unknown"), trial_id=trial_id)
        if epochs:
            schema.write_trial_table(self.context.experiment, "epochs",
                                     [dict(r, trial_id=trial_id) for r in epochs], **where)
        schema.write_trial_table(self.context.experiment, "trials", [row], **where)


class MissingCheckpoints(tune.Callback):
    """A trial whose checkpoint is gone restarts (from its newest surviving checkpoint, else from its start)
    instead of failing.

    How it happens: CheckpointConfig(num_to_keep) deletes a trial's older checkpoint as soon as it registers a
    newer one, but Tune saves its experiment state only every so often; a driver killed in between leaves a
    saved state whose trial points at a deleted checkpoint. Ray 2.60's ``Trainable.restore`` then raises
    "Could not recover from checkpoint as it does not exist on storage anymore" on every attempt (the trial
    FAILS after max_failures), and registering the trial's next checkpoint would raise FileNotFoundError
    deleting the missing one. So before Tune restores a pending trial, its missing checkpoints are dropped
    from its checkpoint bookkeeping (Ray's ``_CheckpointManager``: private, checked against the installed
    Ray by tests/test_faults.py). Trials are deterministic (epoch-seeded), so a restart computes the same
    rows; its epochs are simply trained again.
    """

    def __init__(self):
        self._checked: set[tuple[str, str]] = set()  # (trial id, checkpoint path) seen to exist

    def __getstate__(self) -> dict:
        return {"_checked": set()}

    def on_step_begin(self, iteration, trials, **info) -> None:
        for trial in trials:
            if trial.status not in ("PENDING", "PAUSED"):  # only these are restored from a checkpoint
                continue
            latest = trial.latest_checkpoint_result
            if latest is None or (trial.trial_id, latest.checkpoint.path) in self._checked:
                continue
            if _checkpoint_exists(latest.checkpoint):
                self._checked.add((trial.trial_id, latest.checkpoint.path))
                continue
            drop_missing_checkpoints(trial)


def _checkpoint_exists(checkpoint) -> bool:
    import pyarrow.fs as pafs

    return checkpoint.filesystem.get_file_info(checkpoint.path).type != pafs.FileType.NotFound


def drop_missing_checkpoints(trial) -> None:
    """Forget a trial's checkpoints that no longer exist; it restores from the newest one left, if any."""
    manager = trial.run_metadata.checkpoint_manager
    kept = [r for r in manager._checkpoint_results if _checkpoint_exists(r.checkpoint)]
    gone = trial.latest_checkpoint_result.checkpoint.path
    manager._checkpoint_results = kept
    manager._latest_checkpoint_result = kept[-1] if kept else None
    trial.run_metadata.invalidate_cache()
    trial.invalidate_json_state()
    log.warning("trial %s: its checkpoint %s no longer exists; it restarts from %s", trial.trial_id, gone,
                kept[-1].checkpoint.path if kept else "its start (trials are deterministic)")


def checkpoint_epochs(trial) -> list[dict]:
    """The epoch rows saved in a trial's latest checkpoint ([] when it has none or it cannot be read)."""
    from trainables.checkpoint import checkpoint_epochs as saved_epochs

    checkpoint = getattr(trial, "checkpoint", None)
    if checkpoint is None:
        return []
    try:
        with checkpoint.as_directory() as folder:
            return saved_epochs(folder)
    except Exception:  # noqa: BLE001 - the trials row matters more than its epochs
        log.warning("could not read the epochs of stopped trial %s", trial.trial_id, exc_info=True)
        return []


def failed_row(trial_id, flat, meta, cfg, context, error) -> dict:
    hyper = {k: v for k, v in cfg.hyperparameters().items() if k in schema.HYPERPARAMETERS} if cfg else {}
    return {
        "experiment": context.name, "trial_id": trial_id, "study": meta.get("_study", ""),
        "optuna_trial": int(meta.get("_optuna_trial", -1)), "space": context.space,
        "seed": int(flat.get("seed", 0)), "status": "failed", "stage": meta.get("_stage", schema.TUNING),
        "error": read_error(error), **hyper,
        "config_json": schema.dumps(flat),
    }


def last_line(text: str) -> str:
    """The last non-empty line of an error text (a traceback's exception line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text


def read_error(error_file: str) -> str:
    """The tail of Tune's error file, or the text itself when it is not a readable file."""
    try:
        with open(error_file) as f:
            return f.read()[-2000:]
    except OSError:
        return error_file
