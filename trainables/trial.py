"""run_trial: the ONE training loop (dense -> sparsify -> project -> masked fine-tune).

Contract in docs/ARCHITECTURE.md. Methods differ only by the PruningMethod passed to train_epoch.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from results import files, schema
from trainables import model_file, progress
from vocabulary.config import ConfigError, TrialConfig, precision
from trainables.data import Loader, Splits, load_splits
from trainables.methods import (Dense, MaskedFinetune, PruningMethod, check_admm_schedule, check_gradual_schedule,
                                make_method)
from trainables.models import build_model
from trainables.sparsity import (layer_report, make_sparsity_set, prunable_parameters, summarize,
                                 weight_histogram)

log = logging.getLogger(__name__)
_CKPT = "checkpoint.pt"


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


@dataclass
class TrialResult:
    summary: dict
    epochs: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)
    model: bytes | None = None  # the final model file (trainables.model_file) when the trial keeps it

    def write(self, root: str, *, trial_id: str, experiment: str = "", extra: Mapping[str, Any] | None = None
              ) -> dict[str, str]:
        """Write the four tables under ``root`` (partitioned by arch, method); return their paths."""
        summary = dict(self.summary, trial_id=trial_id, experiment=experiment, **(extra or {}))
        tables = {"trials": [summary], "epochs": self.epochs, "layers": self.layers, "weights": self.weights}
        arch, method = summary["arch"], summary["method"]
        out = {}
        for name, rows in tables.items():
            rows = [dict(r, trial_id=trial_id) for r in rows]
            out[name] = schema.write_trial_table(root, name, rows, arch=arch, method=method, trial_id=trial_id)
        if self.model is not None:
            rel = schema.model_path(arch=arch, method=method, trial_id=trial_id)
            files.write_bytes(root, rel, self.model)
            out["model"] = files.join(root, rel)
        return out


# ----------------------------------------------------------------------------------------- helpers

def _device(cfg: TrialConfig) -> torch.device:
    if cfg.run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was requested but no CUDA device is available")
    return torch.device(cfg.run.device)


def _autocast(device: torch.device):
    if precision(device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def _lr_at(base: float, schedule: str, epoch_in_phase: int, epochs: int) -> float:
    """Learning rate for a 0-based epoch of a phase (cosine is stepped per epoch, to 0 at the phase end)."""
    if schedule == "cosine" and epochs > 0:
        return base * 0.5 * (1 + math.cos(math.pi * epoch_in_phase / epochs))
    return base


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean loss) of ``model`` in eval mode over ``loader`` (restores train mode)."""
    was = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    n = 0
    for x, y in loader.batches(0):
        with _autocast(device):
            out = model(x)
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was)
    return (float(correct) / max(n, 1), float(loss) / max(n, 1))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Loader, batches: int, epoch: int = 0) -> None:
    """Re-estimate BatchNorm running stats from ``batches`` TRAINING batches (DESIGN rule 9).

    Resets the stats, uses a cumulative average (momentum=None), forwards under no_grad with ONLY the BN
    layers in train mode (dropout and the rest in eval mode: the statistics are those of the network as it
    is evaluated, and no random number is drawn, so measuring never shifts the dropout stream that training
    uses next), then restores each BN's momentum and the model's mode. Mutates the BN buffers only.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    momenta = [m.momentum for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    device = next(model.parameters()).device
    for i, (x, _) in enumerate(loader.batches(epoch)):
        if i >= batches:
            break
        with _autocast(device):
            model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was)


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


@torch.no_grad()
def evaluate_recalibrated(model: nn.Module, loader: Loader, recal_loader: Loader, batches: int,
                          device: torch.device) -> tuple[float, float]:
    """(accuracy, loss) as after BN recalibration (DESIGN rule 10), leaving the model exactly as it was.

    The BN buffers are saved, recalibrated on ``batches`` training batches, used for the evaluation and put
    back, so measuring never changes what training does next (a run is the same with or without it).
    """
    saved = [b.clone() for b in _bn_buffers(model)]
    try:
        recalibrate_bn(model, recal_loader, batches)
        return evaluate(model, loader, device)
    finally:
        for buf, old in zip(_bn_buffers(model), saved):
            buf.copy_(old)


def train_epoch(model, params, loader: Loader, optimizer, method: PruningMethod, *, epoch: int, step0: int,
                label_smoothing: float, device: torch.device) -> tuple[float, float, int]:
    """One epoch of the ONE loop; returns (mean loss, mean objective, steps). Syncs once, at the end."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for x, y in loader.batches(epoch):
        with _autocast(device):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        method.before_step(params)
        optimizer.step()
        steps += 1
        method.after_step(params, step0 + steps)
        loss_sum += loss.detach()
    n = max(steps, 1)
    # the penalty is evaluated once, at the epoch's end weights, to keep the step free of extra ops
    pen = float(method.penalty(params)) if params else 0.0
    return float(loss_sum) / n, float(loss_sum) / n + pen, steps


def _density(params) -> float:
    with torch.no_grad():
        nnz = sum(int(torch.count_nonzero(p)) for p in params)
        return nnz / max(sum(p.numel() for p in params), 1)


def seed_everything(seed: int, phase: str) -> None:
    """Seed torch, numpy and random from (trial seed, phase), so each phase starts from the same RNG state
    whether the phases before it ran here or came from a cache (DESIGN rule 1: a trial's result never
    depends on which trial built the shared dense model)."""
    derived = int.from_bytes(hashlib.sha256(f"{seed}/{phase}".encode()).digest()[:4], "little")
    torch.manual_seed(derived)
    random.seed(derived)
    np.random.seed(derived)


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
    return list(torch.load(os.path.join(folder, _CKPT), map_location="cpu", weights_only=False).get("epochs", []))


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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def provenance(device: torch.device, data_given: bool = False, runner: Mapping[str, Any] | None = None) -> dict:
    """Code version, package versions, host, device name, where the data came from ("given": handed in, e.g.
    by a sweep's driver through the object store; "loaded": read by this trial), and what the caller that
    runs the trial says of itself (``runner``: a sweep gives its Ray node id)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import torchvision
    return {"git_commit": commit, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "hostname": socket.gethostname(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "ray_node": "", "data": "given" if data_given else "loaded", **(runner or {})}


# ----------------------------------------------------------------------------------------- the trial

@dataclass(frozen=True)
class Phase:
    """One training phase's recipe. ``epoch0`` is the data epoch of its first epoch: data order and
    augmentation depend on (seed, data epoch) only, so the dense control sees the same batches as the
    sparsify and fine-tune phases of every pruned trial of its seed."""

    name: str  # dense | control | sparsify | finetune
    epochs: int
    optimizer: str
    lr: float  # base learning rate of the phase (the schedule runs from it)
    weight_decay: float
    lr_schedule: str
    epoch0: int


class _Loaders:
    """The four loaders of a trial (the data moves to the device once, here)."""

    def __init__(self, cfg: TrialConfig, d: Splits, device: torch.device):
        cl = device.type == "cuda"
        bs = cfg.data.batch_size
        common = dict(mean=d.mean, std=d.std, device=device, channels_last=cl)
        self.train = Loader(d.train_x, d.train_y, batch_size=bs, shuffle=True, augment=cfg.data.augment,
                            seed=cfg.run.seed, **common)
        # BN recalibration: training images, no augmentation, its own order (DESIGN rule 9)
        self.recal = Loader(d.train_x, d.train_y, batch_size=bs, shuffle=True, augment=False,
                            seed=cfg.run.seed + 1, **common)
        self.val = Loader(d.val_x, d.val_y, batch_size=max(bs, 256), shuffle=False, augment=False, **common)
        self.test = Loader(d.test_x, d.test_y, batch_size=max(bs, 256), shuffle=False, augment=False, **common)


class _Trial:
    """State of one trial; run() walks the phases, skipping what a resumed checkpoint already did."""

    def __init__(self, cfg: TrialConfig, data: Splits, report, dense_store, trial_id: str, *,
                 data_given: bool = False, on_result: Callable[[TrialResult], None] | None = None,
                 loaders: _Loaders | None = None, runner: Mapping[str, Any] | None = None):
        self.cfg, self.data, self.report, self.dense_store, self.trial_id = cfg, data, report, dense_store, trial_id
        self.data_given, self.on_result, self.runner = data_given, on_result, runner
        self.device = _device(cfg)
        if cfg.run.max_threads:
            torch.set_num_threads(cfg.run.max_threads)
        seed_everything(cfg.run.seed, "init")
        self.model = build_model(cfg.model.arch, num_classes=cfg.model.num_classes, width=cfg.model.width)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        named = prunable_parameters(self.model, prune_first_conv=cfg.prune.prune_first_conv)
        self.pnames = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.loaders = loaders or _Loaders(cfg, data, self.device)
        p = cfg.prune
        self.sset = make_sparsity_set(p.sparsity_set, p.sparsity, n=p.nm_n, m=p.nm_m)
        self.method = make_method(p, self.sset, lambda s: make_sparsity_set(p.sparsity_set, s, n=p.nm_n, m=p.nm_m))
        self.finetune = MaskedFinetune()
        self.epochs: list[dict] = []
        self.accs: dict[str, float] = {}
        self.weights: list[dict] = []
        self.phase, self.phase_epoch, self.status, self.error = "dense", 0, "ok", ""
        self.elapsed = 0.0
        self.optimizer = None
        self.t0 = time.monotonic()

    @property
    def device_key(self) -> str:
        return self.cfg.dense_key(self.device.type)

    @property
    def control_key(self) -> str:
        return self.cfg.control_key(self.device.type)

    # ---- measurements
    def _measure(self, stage: str, *, recal: bool = True) -> None:
        if recal:
            recalibrate_bn(self.model, self.loaders.recal, self.cfg.train.bn_recal_batches)
        self.accs[f"{stage}_val_acc"] = evaluate(self.model, self.loaders.val, self.device)[0]
        if self.cfg.run.eval_test:
            self.accs[f"{stage}_test_acc"] = evaluate(self.model, self.loaders.test, self.device)[0]

    def _histogram(self, stage: str) -> None:
        self.weights += [dict(r, stage=stage, seed=self.cfg.run.seed) for r in weight_histogram(self.params)]

    # ---- phases
    def _phase(self, name: str) -> Phase:
        c, d, t = self.cfg, self.cfg.dense, self.cfg.train
        if name in ("dense", "control"):
            # the control continues the dense checkpoint with the dense recipe, restarted like every phase
            epochs, epoch0 = (d.dense_epochs, 0) if name == "dense" else (c.control_epochs, d.dense_epochs)
            return Phase(name, epochs, d.dense_optimizer, d.dense_lr, d.dense_weight_decay, d.dense_lr_schedule,
                         epoch0)
        if name == "sparsify":
            return Phase(name, t.sparsify_epochs, t.optimizer, t.lr, t.weight_decay, t.lr_schedule, d.dense_epochs)
        return Phase(name, t.finetune_epochs, t.optimizer, t.lr * t.finetune_lr_scale, t.weight_decay,
                     t.lr_schedule, d.dense_epochs + t.sparsify_epochs)

    def _method_of(self, name: str) -> PruningMethod:
        return {"sparsify": self.method, "finetune": self.finetune}.get(name) or Dense()

    def _new_optimizer(self, phase: Phase):
        return make_optimizer(self.model.parameters(), phase.optimizer, phase.lr, phase.weight_decay,
                              self.cfg.train.momentum)

    def _start_phase(self, name: str) -> None:
        phase = self._phase(name)
        seed_everything(self.cfg.run.seed, name)
        self.phase, self.phase_epoch = name, 0
        # a fresh optimizer per phase: each phase has its own recipe, and Adam moments of the dense or
        # unconstrained sparsify landscape would mislead the next phase (and revive pruned weights)
        self.optimizer = self._new_optimizer(phase)
        steps = len(self.loaders.train)
        self._method_of(name).on_phase_start(self.params, phase.epochs * steps, steps)

    def _run_phase(self, reported: bool) -> bool:
        """Run the remaining epochs of the current phase; False when the trial diverged."""
        phase, method = self._phase(self.phase), self._method_of(self.phase)
        while self.phase_epoch < phase.epochs:
            e = self.phase_epoch
            cur_lr = _lr_at(phase.lr, phase.lr_schedule, e, phase.epochs)
            for g in self.optimizer.param_groups:
                g["lr"] = cur_lr
            t = time.monotonic()
            loss, obj, steps = train_epoch(self.model, self.params, self.loaders.train, self.optimizer, method,
                                           epoch=phase.epoch0 + e, step0=e * len(self.loaders.train),
                                           label_smoothing=self.cfg.train.label_smoothing, device=self.device)
            extra = method.on_epoch_end(self.params, e + 1)
            secs = time.monotonic() - t
            # every shown accuracy as after BN recalibration (DESIGN rule 10), training left untouched;
            # ADMM's sparsify epochs are evaluated on W as is (not projected): W is only near S until the end
            val_acc, val_loss = evaluate_recalibrated(self.model, self.loaders.val, self.loaders.recal,
                                                      self.cfg.train.bn_recal_batches, self.device)
            projected_acc = self._projected_val_acc(val_acc) if math.isfinite(loss) else math.nan
            self.phase_epoch += 1
            row = {"seed": self.cfg.run.seed, "phase": self.phase, "epoch": len(self.epochs) + 1,
                   "phase_epoch": self.phase_epoch, "train_loss": loss, "objective": obj, "val_acc": val_acc,
                   "projected_val_acc": projected_acc, "val_loss": val_loss, "lr": cur_lr, "density": _density(self.params),
                   "primal_residual": extra.get("primal_residual", math.nan),
                   "dual_residual": extra.get("dual_residual", math.nan), "rho": extra.get("rho", math.nan),
                   "mask_changes": extra.get("mask_changes"),
                   "seconds": secs, "images_per_s": steps * self.cfg.data.batch_size / max(secs, 1e-9)}
            self.epochs.append(row)
            progress.epoch_done(self.cfg, row, phase_epochs=phase.epochs, wall_s=time.monotonic() - t)
            # the epoch's last step can turn the weights non-finite after a finite loss: check both, once
            finite_w = bool(torch.stack(torch._foreach_norm(list(self.model.parameters()))).isfinite().all())
            if not (math.isfinite(loss) and finite_w):
                self.status = "diverged"
                self.error = f"non-finite train loss or weights in {self.phase} epoch {self.phase_epoch}"
                log.warning(self.error)
                return False
            if reported and not self._is_last_epoch():
                self._report(row)  # the trial's last epoch rides with the final report (see _finish)
        return True

    @torch.no_grad()
    def _projected_val_acc(self, val_acc: float) -> float:
        """The early-stopping fidelity (DESIGN rule 14): the val accuracy this trial would have if its weights
        were projected onto the target set now, BN recalibrated, training left untouched. ``val_acc`` where the
        weights are in the set already (per-step and one-shot magnitude, fine-tuning: nothing to measure
        twice); NaN in the dense phases, which have no target."""
        if self.phase == "finetune":
            return val_acc  # masked: in S by construction
        if self.phase != "sparsify":
            return math.nan
        weights = [p.detach() for p in self.params]
        projected = self.sset.project(weights)
        if self._distance(projected) == 0.0:
            return val_acc
        saved = [w.clone() for w in weights]
        torch._foreach_copy_(self.params, projected)
        try:
            return evaluate_recalibrated(self.model, self.loaders.val, self.loaders.recal,
                                         self.cfg.train.bn_recal_batches, self.device)[0]
        finally:
            torch._foreach_copy_(self.params, saved)

    def _is_last_epoch(self) -> bool:
        """True after the trial's last training epoch: nothing remains of sparsify and fine-tune."""
        c = self.cfg.train
        done = self.phase_epoch if self.phase == "sparsify" else c.sparsify_epochs + self.phase_epoch
        return self.phase in ("sparsify", "finetune") and done == c.sparsify_epochs + c.finetune_epochs

    def _report(self, row: dict, done: bool = False) -> None:
        if self.report is None:
            return
        metrics = dict(row, status=self.status, done=done, trial_id=self.trial_id)
        folder = tempfile.mkdtemp(prefix="ckpt-")
        try:
            self.save(folder)
            self.report(metrics, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # ---- checkpoint
    def save(self, folder: str) -> None:
        state = {"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                 "method": self.method.state_dict(), "finetune": self.finetune.state_dict(),
                 "phase": self.phase, "phase_epoch": self.phase_epoch, "epochs": self.epochs,
                 "accs": self.accs, "weights": self.weights, "rng": _rng_state(),
                 "elapsed": self.elapsed + time.monotonic() - self.t0}
        torch.save(state, os.path.join(folder, _CKPT))

    def load(self, folder: str) -> None:
        path = os.path.join(folder, _CKPT)
        if not os.path.isfile(path):
            raise ConfigError("resume_from", f"{folder} holds no {_CKPT}")
        state = load_checkpoint(path, self.device)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            old = state.get("config", {})
            raise ConfigError("resume_from", f"checkpoint of arch={old.get('arch')} width={old.get('width')} "
                              f"does not fit arch={self.cfg.model.arch} width={self.cfg.model.width}: "
                              f"{str(exc).splitlines()[0]}") from None
        self.method.load_state_dict(state["method"])
        self.finetune.load_state_dict(state["finetune"])
        self.phase, self.phase_epoch = state["phase"], state["phase_epoch"]
        self.epochs, self.accs, self.weights = state["epochs"], state["accs"], state["weights"]
        self.elapsed = state["elapsed"]
        self.optimizer = self._new_optimizer(self._phase(self.phase))
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])

    # ---- dense model and dense control (shared through the dense store)
    def _dense_payload(self) -> bytes:
        self._start_phase("dense")
        self._run_phase(reported=False)
        recalibrate_bn(self.model, self.loaders.recal, self.cfg.train.bn_recal_batches)
        self._measure("dense", recal=False)
        buf = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "epochs": self.epochs, "accs": self.accs,
                    "weights": self.weights, "status": self.status, "error": self.error}, buf)
        return buf.getvalue()

    def _dense(self) -> None:
        if self.dense_store is None:
            payload = self._dense_payload()
        else:
            payload = self.dense_store.get_or_build(self.device_key, self._dense_payload)
        state = torch.load(io.BytesIO(payload), map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.epochs, self.accs = list(state["epochs"]), dict(state["accs"])
        self.status, self.error = state["status"], state["error"]
        # the dense histogram is of THIS trial's prunable weights (prune_first_conv is not in the dense key);
        # payloads cached by an older version carry the builder's: dropped
        self.weights = [w for w in state["weights"] if w["stage"] != "dense"]
        self._histogram("dense")

    def _control_payload(self) -> bytes:
        """Train a copy of the dense model control_epochs more with the dense recipe (DESIGN rule 11)."""
        sub = _Trial(self.cfg, self.data, None, None, self.trial_id, loaders=self.loaders)
        sub.model.load_state_dict(self.model.state_dict())
        sub._start_phase("control")
        sub._run_phase(reported=False)
        if sub.status == "ok":
            sub._measure("control")
        accs = {k: v for k, v in sub.accs.items() if k.startswith("control_")}
        buf = io.BytesIO()
        torch.save({"accs": accs, "status": sub.status, "epochs": sub.epochs}, buf)
        return buf.getvalue()

    def _control(self) -> None:
        """The dense control's accuracies into self.accs: built here, or read from the store. Never waits:
        when another trial is building it, this trial's row leaves them empty and analysis takes them from
        any row with the same control_key."""
        if self.dense_store is None:
            payload = self._control_payload()
        else:
            payload = self.dense_store.get_or_build(self.control_key, self._control_payload, wait=False)
        if payload is not None:
            self.accs.update(torch.load(io.BytesIO(payload), weights_only=False)["accs"])

    # ---- driver
    def run(self, resumed: bool) -> TrialResult:
        if not resumed:
            self._dense()
            if self.status == "ok" and self.cfg.run.dense_control:
                self._control()
            if self.status == "ok":
                self.accs["dense_distance"] = self._distance()  # before the method touches W
                self._start_phase("sparsify")
        if self.status == "ok" and self.phase == "sparsify":
            if self._run_phase(reported=True):
                # pre-prune (DESIGN.md): the end of the sparsify phase, right before the hard projection
                self._measure("pre_prune")
                self._histogram("pre_prune")
                self._project()
                self._start_phase("finetune")
        if self.status == "ok" and self.phase == "finetune":
            if self._run_phase(reported=True):
                self._measure("final")
                self._histogram("final")
        return self._finish()

    @torch.no_grad()
    def _distance(self, projected: list[torch.Tensor] | None = None) -> float:
        """sum ||W - Proj_S(W)||^2 over the prunable tensors: how far W is from the sparse set (``projected``:
        Proj_S(W) when the caller has it already). One host sync."""
        if projected is None:
            projected = self.sset.project([p.detach() for p in self.params])
        diff = torch._foreach_sub([p.detach() for p in self.params], projected)
        return float(torch.stack(torch._foreach_norm(diff)).square().sum())

    @torch.no_grad()
    def _project(self) -> None:
        """Hard projection W <- Proj_S(W); accuracy measured with stale and with recalibrated BN."""
        projected = self.sset.project([p.detach() for p in self.params])
        self.accs["pre_prune_distance"] = self._distance(projected)  # what the projection removes
        torch._foreach_copy_(self.params, projected)
        self.finetune.masks = [(p != 0).to(p.dtype) for p in projected]
        self._measure("post_prune_stale_bn", recal=False)
        self._measure("post_prune")
        self._histogram("post_prune")

    def _finish(self) -> TrialResult:
        cfg = self.cfg
        weights = [p.detach() for p in self.params]
        targets = dict(zip(self.pnames, self.sset.target_sparsities(weights)))
        layers = [dict(r, seed=cfg.run.seed) for r in layer_report(self.model, self.pnames, target_sparsity=targets)]
        sizes = summarize(layers, self.model)
        kept = self.sset.kept_count(weights)  # the set's own count: never recomputed from a fraction
        if self.status == "ok" and sizes["prunable_nonzero"] > kept:
            # nonzero <= kept: a kept weight may itself be exactly zero, never the other way round
            raise RuntimeError(f"{sizes['prunable_nonzero']} nonzero prunable weights, but the "
                               f"{cfg.prune.sparsity_set} set keeps {kept}: the pruned model is not in S")
        summary = {
            "arch": cfg.model.arch, "method": cfg.prune.method, "seed": cfg.run.seed, "status": self.status,
            "error": self.error, "study": "", "optuna_trial": -1, "space": "",
            **cfg.hyperparameters(),
            "target_sparsity": self.sset.sparsity(weights), "dense_key": self.device_key,
            "control_key": self.control_key if cfg.run.dense_control else "",
            **{k: self.accs.get(k, math.nan) for k in schema.TRIALS.names if k.endswith(("_acc", "_distance"))},
            **sizes, "epochs_run": len(self.epochs),
            "wall_time_s": self.elapsed + time.monotonic() - self.t0, "device": str(self.device),
            "config_json": schema.dumps(cfg.to_dict()),
            "provenance_json": schema.dumps(provenance(self.device, self.data_given, self.runner)),
        }
        model = None
        if self.status == "ok":
            model = model_file.encode(self.model, prunable=self.pnames, config=cfg.to_dict(),
                                      trial_id=self.trial_id, mean=self.data.mean, std=self.data.std)
            summary.update(model_bytes=len(model), dense_bytes=model_file.dense_nbytes(self.model))
        weights_rows = [dict(r, seed=cfg.run.seed) for r in self.weights]
        epochs = [dict(r) for r in self.epochs]
        result = TrialResult(summary, epochs, layers, weights_rows, model if cfg.run.keep_model else None)
        if self.on_result is not None:
            self.on_result(result)  # e.g. the sweep writes its Parquet tables before Tune may stop the trial
        if self.report is not None:
            final = dict(self.epochs[-1]) if self.epochs else {}
            # the final report's accuracies are the final ones (sparse weights: both metrics agree)
            metrics = dict(final, **summary, val_acc=summary["final_val_acc"],
                           projected_val_acc=summary["final_val_acc"], phase=self.phase,
                           epoch=len(self.epochs), done=True)
            metrics["trial_id"] = self.trial_id
            self.report(metrics, None)
        return result


def check_trial(cfg: TrialConfig, data: Splits) -> None:
    """Checks that need the data's size, before any training: raises ConfigError naming the field."""
    steps = -(-len(data.train_x) // cfg.data.batch_size)
    check_admm_schedule(cfg.prune, cfg.train.sparsify_epochs, steps)
    check_gradual_schedule(cfg.prune, cfg.train.sparsify_epochs, steps)


def run_trial(config: TrialConfig | Mapping[str, Any], *, data: Splits | None = None,
              report: Callable[[dict, str | None], None] | None = None, resume_from: str | None = None,
              dense_store: DenseStore | None = None, trial_id: str = "local",
              on_result: Callable[[TrialResult], None] | None = None,
              runner: Mapping[str, Any] | None = None) -> TrialResult:
    """Run one trial (contract: docs/ARCHITECTURE.md). Raises ConfigError/DataError before any training."""
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    cfg.validate()
    data_given = data is not None
    if data is None:
        data = load_splits(cfg.data)
    check_trial(cfg, data)
    trial = _Trial(cfg, data, report, dense_store, trial_id, data_given=data_given, on_result=on_result,
                   runner=runner)
    if resume_from is not None:
        trial.load(resume_from)
    return trial.run(resumed=resume_from is not None)
