"""A trial's checkpoint: the one file (``CHECKPOINT_FILE``) in a checkpoint folder, holding the model,
optimizer, method and fine-tune state, where the trial stands (phase, epoch), what it measured so far and the
RNG states, so a resumed trial continues exactly as an uninterrupted one."""

from __future__ import annotations

import os
import random
import time
from typing import Any

import numpy as np
import torch

from vocabulary.config import ConfigError

__all__ = ["CHECKPOINT_FILE", "checkpoint_epochs", "load_checkpoint", "rng_state", "set_rng_state", "save",
           "restore"]

CHECKPOINT_FILE = "checkpoint.pt"


def _to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (dicts, lists, tuples) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def checkpoint_epochs(folder: str) -> list[dict]:
    """The epoch rows saved in a checkpoint folder written by a trial's ``report`` (what it had run)."""
    path = os.path.join(folder, CHECKPOINT_FILE)
    return list(torch.load(path, map_location="cpu", weights_only=False).get("epochs", []))


def load_checkpoint(path: str, device: torch.device | str) -> dict:
    """A checkpoint read on the CPU, every tensor but the RNG states then moved to ``device``.

    torch.load(map_location=device) would move the saved RNG ByteTensors too, and torch.set_rng_state
    refuses anything but a CPU ByteTensor: every resume on a GPU would die (a checkpoint written on a GPU
    is read the same way on a CPU-only machine).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    # the optimizer's state stays on the CPU too: Optimizer.load_state_dict moves the moments to each
    # parameter's device itself and keeps Adam's step counts on the host (on the GPU they would be read back
    # with .item() every step: a host sync per parameter per step after every resume)
    return {k: (v if k in ("rng", "optimizer") else _to_device(v, torch.device(device))) for k, v in state.items()}


def rng_state() -> dict:
    """The torch, Python, numpy and (where there is one) CUDA random states."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    """Put back the random states of ``rng_state``."""
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save(trial, folder: str) -> None:
    """Write ``trial``'s state (a trainables.trial.Trial) to ``folder``/CHECKPOINT_FILE."""
    state = {"config": trial.cfg.to_dict(), "model": trial.model.state_dict(),
             "optimizer": trial.optimizer.state_dict() if trial.optimizer else None,
             "method": trial.method.state_dict(), "finetune": trial.finetune.state_dict(),
             "phase": trial.phase, "phase_epoch": trial.phase_epoch, "epochs": trial.epochs,
             "accs": trial.accs, "weights": trial.weights, "rng": rng_state(),
             "elapsed": trial.elapsed + time.monotonic() - trial.t0}
    torch.save(state, os.path.join(folder, CHECKPOINT_FILE))


def restore(trial, folder: str) -> None:
    """Put the state ``save`` wrote to ``folder`` back into ``trial`` (built with the same configuration):
    ConfigError naming resume_from when the folder holds no checkpoint or one of another model."""
    path = os.path.join(folder, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise ConfigError("resume_from", f"{folder} holds no {CHECKPOINT_FILE}")
    state = load_checkpoint(path, trial.device)
    try:
        trial.model.load_state_dict(state["model"])
    except RuntimeError as exc:
        old, cfg = state.get("config", {}), trial.cfg
        raise ConfigError("resume_from", f"checkpoint of arch={old.get('arch')} width={old.get('width')} "
                          f"does not fit arch={cfg.model.arch} width={cfg.model.width}: "
                          f"{str(exc).splitlines()[0]}") from None
    trial.method.load_state_dict(state["method"])
    trial.finetune.load_state_dict(state["finetune"])
    trial.phase, trial.phase_epoch = state["phase"], state["phase_epoch"]
    trial.epochs, trial.accs, trial.weights = state["epochs"], state["accs"], state["weights"]
    trial.elapsed = state["elapsed"]
    trial.optimizer = trial.new_optimizer()
    if state["optimizer"] is not None:
        trial.optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
