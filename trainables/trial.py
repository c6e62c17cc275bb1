"""run_trial: the ONE training loop (dense -> sparsify -> project -> masked fine-tune).

Contract in docs/ARCHITECTURE.md. Methods differ only by the PruningMethod passed to train_epoch.
"""

from __future__ import annotations

import contextlib
import fcntl
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

from trainables import schema
from trainables.config import ConfigError, TrialConfig
from trainables.data import Loader, Splits, load_splits
from trainables.methods import ADMM, Dense, Magnitude, MaskedFinetune, PruningMethod
from trainables.models import build_model
from trainables.sparsity import (layer_report, make_sparsity_set, prunable_parameters, summarize,
                                 weight_histogram)

log = logging.getLogger(__name__)
_CKPT = "checkpoint.pt"


class DenseStore(Protocol):
    def get_or_build(self, key: str, build: Callable[[], bytes]) -> bytes: ...


class FileDenseStore:
    """Dense payloads in ``folder``: one fcntl lock per key, build at most once, atomic temp + rename."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def get_or_build(self, key: str, build: Callable[[], bytes]) -> bytes:
        path = os.path.join(self.folder, f"{key}.pt")
        with open(path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # others wait here while one builds, then read
            try:
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        return f.read()
                payload = build()
                fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                os.replace(tmp, path)
                return payload
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class TrialResult:
    summary: dict
    epochs: list[dict] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)

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
        return out


# ----------------------------------------------------------------------------------------- helpers

def _device(cfg: TrialConfig) -> torch.device:
    if cfg.run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was requested but no CUDA device is available")
    return torch.device(cfg.run.device)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
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

    Resets the stats, uses a cumulative average (momentum=None), forwards in train mode under no_grad, then
    restores each BN's momentum and the model's mode. Mutates the BN buffers only.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    momenta = [m.momentum for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    device = next(model.parameters()).device
    for i, (x, _) in enumerate(loader.batches(epoch)):
        if i >= batches:
            break
        with _autocast(device):
            model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was)


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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def provenance(device: torch.device, data_given: bool = False) -> dict:
    """Code version, package versions, host, Ray node, device name, and where the data came from
    ("given": handed in, e.g. by a sweep's driver through the object store; "loaded": read by this trial)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    import torchvision
    return {"git_commit": commit, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version(), "hostname": socket.gethostname(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "ray_node": _ray_node_id(), "data": "given" if data_given else "loaded"}


def _ray_node_id() -> str:
    """The Ray node this runs on, "" outside Ray (imported lazily: trainables do not need Ray)."""
    import sys

    ray = sys.modules.get("ray")
    try:
        return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - provenance must never fail a trial
        return ""


# ----------------------------------------------------------------------------------------- the trial

class _Trial:
    """State of one trial; run() walks the phases, skipping what a resumed checkpoint already did."""

    def __init__(self, cfg: TrialConfig, data: Splits, report, dense_store, trial_id: str, *,
                 data_given: bool = False, on_result: Callable[[TrialResult], None] | None = None):
        self.cfg, self.data, self.report, self.dense_store, self.trial_id = cfg, data, report, dense_store, trial_id
        self.data_given, self.on_result = data_given, on_result
        self.device = _device(cfg)
        if cfg.run.max_threads:
            torch.set_num_threads(cfg.run.max_threads)
        torch.manual_seed(cfg.run.seed)
        random.seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        self.model = build_model(cfg.model.arch, num_classes=cfg.model.num_classes, width=cfg.model.width)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        named = prunable_parameters(self.model, prune_first_conv=cfg.prune.prune_first_conv)
        self.pnames = [n for n, _ in named]
        self.params = [p for _, p in named]
        cl = self.device.type == "cuda"
        d, bs = data, cfg.data.batch_size
        self.train_loader = Loader(d.train_x, d.train_y, batch_size=bs, shuffle=True, augment=cfg.data.augment,
                                   mean=d.mean, std=d.std, device=self.device, seed=cfg.run.seed,
                                   channels_last=cl)
        self.recal_loader = Loader(d.train_x, d.train_y, batch_size=bs, shuffle=True, augment=False, mean=d.mean,
                                   std=d.std, device=self.device, seed=cfg.run.seed + 1, channels_last=cl)
        self.val_loader = Loader(d.val_x, d.val_y, batch_size=max(bs, 256), shuffle=False, augment=False,
                                 mean=d.mean, std=d.std, device=self.device, channels_last=cl)
        self.test_loader = Loader(d.test_x, d.test_y, batch_size=max(bs, 256), shuffle=False, augment=False,
                                  mean=d.mean, std=d.std, device=self.device, channels_last=cl)
        self.sset = make_sparsity_set(cfg.prune.sparsity_set, cfg.prune.sparsity, n=cfg.prune.nm_n,
                                      m=cfg.prune.nm_m)
        self.method = self._make_method()
        self.finetune = MaskedFinetune()
        self.epochs: list[dict] = []
        self.accs: dict[str, float] = {}
        self.weights: list[dict] = []
        self.phase, self.phase_epoch, self.status, self.error = "dense", 0, "ok", ""
        self.elapsed = 0.0
        self.optimizer = None
        self.t0 = time.monotonic()

    def _make_method(self) -> PruningMethod:
        p = self.cfg.prune
        if p.method == "admm":
            return ADMM(self.sset, p.rho, p.rho_growth, p.rho_max, p.admm_interval, p.admm_interval_unit)
        return Magnitude(self.sset, p.schedule, gradual_interval=p.gradual_interval,
                         make_set=lambda s: make_sparsity_set(p.sparsity_set, s, n=p.nm_n, m=p.nm_m))

    # ---- measurements
    def _measure(self, stage: str, *, recal: bool = True) -> None:
        if recal:
            recalibrate_bn(self.model, self.recal_loader, self.cfg.train.bn_recal_batches)
        self.accs[f"{stage}_val_acc"] = evaluate(self.model, self.val_loader, self.device)[0]
        if self.cfg.run.eval_test:
            self.accs[f"{stage}_test_acc"] = evaluate(self.model, self.test_loader, self.device)[0]

    def _histogram(self, stage: str) -> None:
        self.weights += [dict(r, stage=stage, seed=self.cfg.run.seed) for r in weight_histogram(self.params)]

    # ---- phases
    def _phase_settings(self, phase: str):
        c = self.cfg
        if phase == "dense":
            return (c.dense.dense_epochs, c.dense.dense_optimizer, c.dense.dense_lr, c.dense.dense_weight_decay,
                    c.dense.dense_lr_schedule, Dense())
        if phase == "sparsify":
            return (c.train.sparsify_epochs, c.train.optimizer, c.train.lr, c.train.weight_decay,
                    c.train.lr_schedule, self.method)
        return (c.train.finetune_epochs, c.train.optimizer, c.train.lr * c.train.finetune_lr_scale,
                c.train.weight_decay, c.train.lr_schedule, self.finetune)

    def _start_phase(self, phase: str) -> None:
        epochs, opt, lr, wd, _, method = self._phase_settings(phase)
        self.phase, self.phase_epoch = phase, 0
        # a fresh optimizer per phase: each phase has its own recipe, and Adam moments of the dense or
        # unconstrained sparsify landscape would mislead the next phase (and revive pruned weights)
        self.optimizer = make_optimizer(self.model.parameters(), opt, lr, wd, self.cfg.train.momentum)
        method.on_phase_start(self.params, epochs * len(self.train_loader))

    def _run_phase(self, reported: bool) -> bool:
        """Run the remaining epochs of the current phase; False when the trial diverged."""
        epochs, _, lr, _, sched, method = self._phase_settings(self.phase)
        while self.phase_epoch < epochs:
            e = self.phase_epoch
            cur_lr = _lr_at(lr, sched, e, epochs)
            for g in self.optimizer.param_groups:
                g["lr"] = cur_lr
            t = time.monotonic()
            loss, obj, steps = train_epoch(self.model, self.params, self.train_loader, self.optimizer, method,
                                           epoch=len(self.epochs), step0=e * len(self.train_loader),
                                           label_smoothing=self.cfg.train.label_smoothing, device=self.device)
            extra = method.on_epoch_end(self.params, e + 1)
            secs = time.monotonic() - t
            # ADMM's sparsify epochs are evaluated on W as is (not projected): W is only near S until the end
            val_acc, val_loss = evaluate(self.model, self.val_loader, self.device)
            self.phase_epoch += 1
            row = {"seed": self.cfg.run.seed, "phase": self.phase, "epoch": len(self.epochs) + 1,
                   "phase_epoch": self.phase_epoch, "train_loss": loss, "objective": obj, "val_acc": val_acc,
                   "val_loss": val_loss, "lr": cur_lr, "density": _density(self.params),
                   "primal_residual": extra.get("primal_residual", math.nan),
                   "dual_residual": extra.get("dual_residual", math.nan), "rho": extra.get("rho", math.nan),
                   "seconds": secs, "images_per_s": steps * self.cfg.data.batch_size / max(secs, 1e-9)}
            self.epochs.append(row)
            log.info("%s epoch %d loss %.4f val_acc %.4f density %.3f rho %s imgs/s %.0f", self.phase,
                     self.phase_epoch, loss, val_acc, row["density"], row["rho"], row["images_per_s"])
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
        state = torch.load(path, map_location=self.device, weights_only=False)
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
        epochs, opt, lr, wd, _, _ = self._phase_settings(self.phase)
        self.optimizer = make_optimizer(self.model.parameters(), opt, lr, wd, self.cfg.train.momentum)
        if state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])

    # ---- dense model
    def _dense_payload(self) -> bytes:
        self._start_phase("dense")
        self._run_phase(reported=False)
        recalibrate_bn(self.model, self.recal_loader, self.cfg.train.bn_recal_batches)
        self._measure("dense", recal=False)
        self._histogram("dense")
        buf = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "epochs": self.epochs, "accs": self.accs,
                    "weights": self.weights, "status": self.status, "error": self.error}, buf)
        return buf.getvalue()

    def _dense(self) -> None:
        if self.dense_store is None:
            payload = self._dense_payload()
        else:
            payload = self.dense_store.get_or_build(self.cfg.dense_key(), self._dense_payload)
        state = torch.load(io.BytesIO(payload), map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.epochs, self.accs, self.weights = list(state["epochs"]), dict(state["accs"]), list(state["weights"])
        self.status, self.error = state["status"], state["error"]

    # ---- driver
    def run(self, resumed: bool) -> TrialResult:
        if not resumed:
            self._dense()
            if self.status == "ok":
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
    def _project(self) -> None:
        """Hard projection W <- Proj_S(W); accuracy measured with stale and with recalibrated BN."""
        projected = self.sset.project([p.detach() for p in self.params])
        torch._foreach_copy_(self.params, projected)
        self.finetune.masks = [(p != 0).to(p.dtype) for p in projected]
        self._measure("post_prune_stale_bn", recal=False)
        self._measure("post_prune")
        self._histogram("post_prune")

    def _finish(self) -> TrialResult:
        cfg = self.cfg
        targets = dict(zip(self.pnames, self.sset.target_sparsities([p.detach() for p in self.params])))
        layers = [dict(r, seed=cfg.run.seed) for r in layer_report(self.model, self.pnames, target_sparsity=targets)]
        sizes = summarize(layers, self.model)
        if self.status == "ok":
            want = sum(t * p.numel() for t, p in zip(targets.values(), self.params))
            want_nnz = sum(p.numel() for p in self.params) - round(want)
            # nonzero <= kept: a kept weight may itself be exactly zero, never the other way round
            if sizes["prunable_nonzero"] > want_nnz:
                raise RuntimeError(f"achieved sparsity {sizes['achieved_sparsity']} below the target "
                                   f"{cfg.prune.target_sparsity}: {sizes['prunable_nonzero']} > {want_nnz} nonzeros")
        p = cfg.prune
        summary = {
            "arch": cfg.model.arch, "method": p.method, "seed": cfg.run.seed, "status": self.status,
            "error": self.error, "study": "", "optuna_trial": -1, "space": "",
            "sparsity_set": p.sparsity_set, "schedule": p.schedule if p.method == "magnitude" else "",
            "target_sparsity": p.target_sparsity, "lr": cfg.train.lr,
            "rho": p.rho if p.method == "admm" else math.nan, "rho_growth": p.rho_growth,
            "admm_interval": p.admm_interval, "optimizer": cfg.train.optimizer,
            "dense_epochs": cfg.dense.dense_epochs, "sparsify_epochs": cfg.train.sparsify_epochs,
            "finetune_epochs": cfg.train.finetune_epochs, "dense_key": cfg.dense_key(),
            **{k: self.accs.get(k, math.nan) for k in schema.TRIALS.names if k.endswith("_acc")},
            **sizes, "epochs_run": len(self.epochs),
            "wall_time_s": self.elapsed + time.monotonic() - self.t0, "device": str(self.device),
            "config_json": schema.dumps(cfg.to_dict()),
            "provenance_json": schema.dumps(provenance(self.device, self.data_given)),
        }
        weights = [dict(r, seed=cfg.run.seed) for r in self.weights]
        epochs = [dict(r) for r in self.epochs]
        result = TrialResult(summary, epochs, layers, weights)
        if self.on_result is not None:
            self.on_result(result)  # e.g. the sweep writes its Parquet tables before Tune may stop the trial
        if self.report is not None:
            final = dict(self.epochs[-1]) if self.epochs else {}
            metrics = dict(final, **summary, val_acc=summary["final_val_acc"], phase=self.phase,
                           epoch=len(self.epochs), done=True)
            metrics["trial_id"] = self.trial_id
            self.report(metrics, None)
        return result


def run_trial(config: TrialConfig | Mapping[str, Any], *, data: Splits | None = None,
              report: Callable[[dict, str | None], None] | None = None, resume_from: str | None = None,
              dense_store: DenseStore | None = None, trial_id: str = "local",
              on_result: Callable[[TrialResult], None] | None = None) -> TrialResult:
    """Run one trial (contract: docs/ARCHITECTURE.md). Raises ConfigError/DataError before any training."""
    cfg = config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config)
    cfg.validate()
    data_given = data is not None
    if data is None:
        data = load_splits(cfg.data)
    trial = _Trial(cfg, data, report, dense_store, trial_id, data_given=data_given, on_result=on_result)
    if resume_from is not None:
        trial.load(resume_from)
    return trial.run(resumed=resume_from is not None)
