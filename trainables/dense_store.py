"""The dense model and the dense control, shared between trials: the DenseStore protocol (sweep's
RayDenseStore is the other implementation), FileDenseStore (one machine) and the payload builders a trial
hands a store (DESIGN rules 1 and 11: trials that share a key share one dense model and one control)."""

from __future__ import annotations

import fcntl
import io
import os
from typing import Callable, Protocol

import torch

from results import files
from trainables.evaluate import recalibrate_bn

__all__ = ["DenseStore", "FileDenseStore", "dense_payload", "control_payload"]


class DenseStore(Protocol):
    def get_or_build(self, key: str, build: Callable[[], bytes], wait: bool = True) -> bytes | None:
        """The payload of ``key``, built by calling ``build`` at most once per key across all callers.

        While another caller builds it: wait and return its payload, or with ``wait=False`` return None."""


class FileDenseStore:
    """Dense payloads in ``folder``: one fcntl lock per key, build at most once, atomic temp + rename."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def get_or_build(self, key: str, build: Callable[[], bytes], wait: bool = True) -> bytes | None:
        path = os.path.join(self.folder, f"{key}.pt")
        finished = self._read(path)  # written by rename: a payload that exists is whole, no lock needed
        if finished is not None:
            return finished
        with open(path + ".lock", "a") as lock:
            try:
                # others wait here while one builds, then read (or, not waiting, go on without it)
                fcntl.flock(lock, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # the holder may be a waiter reading a payload finished since the check above: only an
                # unfinished build leaves the caller without it
                return self._read(path)
            try:
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        return f.read()
                payload = build()
                files.write_bytes(self.folder, f"{key}.pt", payload)
                return payload
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _read(path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None


def dense_payload(trial) -> bytes:
    """Train ``trial``'s (a trainables.trial.Trial) dense phase and return the dense model, its epoch rows,
    accuracies, histograms and status as the store's payload."""
    trial.start_phase("dense")
    trial.run_phase(reported=False)
    recalibrate_bn(trial.model, trial.loaders.recal, trial.cfg.train.bn_recal_batches)
    trial.measure("dense", recal=False)
    buf = io.BytesIO()
    torch.save({"model": trial.model.state_dict(), "epochs": trial.epochs, "accs": trial.accs,
                "weights": trial.weights, "status": trial.status, "error": trial.error}, buf)
    return buf.getvalue()


def control_payload(trial) -> bytes:
    """Train a copy of ``trial``'s dense model control_epochs more with the dense recipe (DESIGN rule 11);
    the payload holds the control's accuracies, status and epoch rows."""
    sub = type(trial)(trial.cfg, trial.data, None, None, trial.trial_id, loaders=trial.loaders)
    sub.model.load_state_dict(trial.model.state_dict())
    sub.start_phase("control")
    sub.run_phase(reported=False)
    if sub.status == "ok":
        sub.measure("control")
    accs = {k: v for k, v in sub.accs.items() if k.startswith("control_")}
    buf = io.BytesIO()
    torch.save({"accs": accs, "status": sub.status, "epochs": sub.epochs}, buf)
    return buf.getvalue()
