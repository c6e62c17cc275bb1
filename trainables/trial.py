"""run_trial: the ONE training loop (dense -> sparsify -> project -> masked fine-tune), read top to bottom as
the phases of one trial. Measuring lives in trainables.evaluate, checkpoints in trainables.checkpoint, the shared
dense model and control in trainables.dense_store, the result rows in trainables.result.

Contract in docs/ARCHITECTURE.md. Methods differ only by the PruningMethod passed to train_epoch.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from trainables import checkpoint, progress
from vocabulary.config import ConfigError, TrialConfig
from trainables.data import Loader, Splits, load_splits
from trainables.dense_store import DenseStore, control_payload, dense_payload
from trainables.evaluate import autocast, distance, evaluate, evaluate_recalibrated, projected_accuracy, recalibrate_bn
from trainables.methods import Dense, MaskedFinetune, PruningMethod, check_method, make_method, metric_columns
from trainables.models import build_model
from trainables.result import TrialResult, trial_result
from trainables.sparsity import prunable_parameters, sparsity_set, weight_histogram

__all__ = ["run_trial", "check_trial", "Trial", "Loaders", "Phase", "train_epoch", "make_optimizer",
           "seed_everything"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- helpers

def _device(cfg: TrialConfig) -> torch.device:
    if cfg.run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was requested but no CUDA device is available")
    return torch.device(cfg.run.device)


def make_optimizer(params, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)


def _lr_at(base: float, schedule: str, epoch_in_phase: int, epochs: int) -> float:
    """Learning rate for a 0-based epoch of a phase (cosine is stepped per epoch, to 0 at the phase end)."""
    if schedule == "cosine" and epochs > 0:
        return base * 0.5 * (1 + math.cos(math.pi * epoch_in_phase / epochs))
    return base

def train_epoch(model, params, loader: Loader, optimizer, method: PruningMethod, *, epoch: int, step0: int,
                label_smoothing: float, device: torch.device) -> tuple[float, float, int]:
    """One epoch of the ONE loop; returns (mean loss, mean objective, steps). Syncs once, at the end."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for x, y in loader.batches(epoch):
        with autocast(device):
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


class Loaders:
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


class Trial:
    """State of one trial; run() walks the phases, skipping what a resumed checkpoint already did."""

    def __init__(self, cfg: TrialConfig, data: Splits, report, dense_store, trial_id: str, *,
                 data_given: bool = False, on_result: Callable[[TrialResult], None] | None = None,
                 loaders: Loaders | None = None, runner: Mapping[str, Any] | None = None):
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
        self.loaders = loaders or Loaders(cfg, data, self.device)
        p = cfg.prune
        self.sset = sparsity_set(p)
        self.method = make_method(p, self.sset)
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
    def measure(self, stage: str, *, recal: bool = True) -> None:
        """``stage``'s val (and test) accuracy into self.accs, after BN recalibration unless ``recal`` is False."""
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

    def new_optimizer(self):
        """A fresh optimizer with the current phase's recipe."""
        phase = self._phase(self.phase)
        return make_optimizer(self.model.parameters(), phase.optimizer, phase.lr, phase.weight_decay,
                              self.cfg.train.momentum)

    def start_phase(self, name: str) -> None:
        phase = self._phase(name)
        seed_everything(self.cfg.run.seed, name)
        self.phase, self.phase_epoch = name, 0
        # a fresh optimizer per phase: each phase has its own recipe, and Adam moments of the dense or
        # unconstrained sparsify landscape would mislead the next phase (and revive pruned weights)
        self.optimizer = self.new_optimizer()
        steps = len(self.loaders.train)
        self._method_of(name).on_phase_start(self.params, phase.epochs * steps, steps)

    def run_phase(self, reported: bool) -> bool:
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
                   **metric_columns(self.cfg.prune.method, extra),  # the methods' declared metrics
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

    def _projected_val_acc(self, val_acc: float) -> float:
        """The early-stopping fidelity (DESIGN rule 14): the val accuracy this trial would have if its weights
        were projected onto the target set now, BN recalibrated, training left untouched. ``val_acc`` where the
        weights are in the set already (per-step and one-shot magnitude, fine-tuning: nothing to measure
        twice); NaN in the dense phases, which have no target."""
        if self.phase == "finetune":
            return val_acc  # masked: in S by construction
        if self.phase != "sparsify":
            return math.nan
        return projected_accuracy(self.model, self.params, self.sset, val_acc, self.loaders.val, self.loaders.recal,
                                  self.cfg.train.bn_recal_batches, self.device)

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
        checkpoint.save(self, folder)

    def load(self, folder: str) -> None:
        checkpoint.restore(self, folder)

    # ---- dense model and dense control (shared through the dense store)
    def _dense(self) -> None:
        if self.dense_store is None:
            payload = dense_payload(self)
        else:
            payload = self.dense_store.get_or_build(self.device_key, functools.partial(dense_payload, self))
        state = torch.load(io.BytesIO(payload), map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.epochs, self.accs = list(state["epochs"]), dict(state["accs"])
        self.status, self.error = state["status"], state["error"]
        # the dense histogram is of THIS trial's prunable weights (prune_first_conv is not in the dense key);
        # payloads cached by an older version carry the builder's: dropped
        self.weights = [w for w in state["weights"] if w["stage"] != "dense"]
        self._histogram("dense")

    def _control(self) -> None:
        """The dense control's accuracies into self.accs: built here, or read from the store. Never waits:
        when another trial is building it, this trial's row leaves them empty and analysis takes them from
        any row with the same control_key."""
        if self.dense_store is None:
            payload = control_payload(self)
        else:
            payload = self.dense_store.get_or_build(self.control_key, functools.partial(control_payload, self),
                                                    wait=False)
        if payload is not None:
            self.accs.update(torch.load(io.BytesIO(payload), weights_only=False)["accs"])

    # ---- driver
    def run(self, resumed: bool) -> TrialResult:
        if not resumed:
            self._dense()
            if self.status == "ok" and self.cfg.run.dense_control:
                self._control()
            if self.status == "ok":
                self.accs["dense_distance"] = distance(self.params, self.sset)  # before the method touches W
                self.start_phase("sparsify")
        if self.status == "ok" and self.phase == "sparsify":
            if self.run_phase(reported=True):
                # pre-prune (DESIGN.md): the end of the sparsify phase, right before the hard projection
                self.measure("pre_prune")
                self._histogram("pre_prune")
                self._project()
                self.start_phase("finetune")
        if self.status == "ok" and self.phase == "finetune":
            if self.run_phase(reported=True):
                self.measure("final")
                self._histogram("final")
        return self._finish()

    @torch.no_grad()
    def _project(self) -> None:
        """Hard projection W <- Proj_S(W); accuracy measured with stale and with recalibrated BN."""
        projected = self.sset.project([p.detach() for p in self.params])
        self.accs["pre_prune_distance"] = distance(self.params, self.sset, projected)  # what the projection removes
        torch._foreach_copy_(self.params, projected)
        self.finetune.masks = [(p != 0).to(p.dtype) for p in projected]
        self.measure("post_prune_stale_bn", recal=False)
        self.measure("post_prune")
        self._histogram("post_prune")

    def _finish(self) -> TrialResult:
        result = trial_result(self)
        summary = result.summary
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
    check_method(cfg.prune, cfg.train.sparsify_epochs, steps)  # the method's own check (its Method.check)


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
    trial = Trial(cfg, data, report, dense_store, trial_id, data_given=data_given, on_result=on_result,
                  runner=runner)
    if resume_from is not None:
        trial.load(resume_from)
    return trial.run(resumed=resume_from is not None)
