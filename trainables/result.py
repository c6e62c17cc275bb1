"""What a finished trial hands back: its rows for the four tables (``TrialResult``: trials, epochs, layers,
weights; results.schema says their columns), the model file when kept, and where it ran (``provenance``)."""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from results import files, schema
from trainables import model_file
from trainables.semistructured import trial_latency
from trainables.sparsity import layer_report, summarize

__all__ = ["TrialResult", "provenance", "trial_result"]


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


def trial_result(trial) -> TrialResult:
    """The rows of a trial (a trainables.trial.Trial) as it stands at its end. Raises RuntimeError when an
    ``ok`` trial's model is not in its sparse set (more nonzero prunable weights than the set keeps)."""
    cfg = trial.cfg
    weights = [p.detach() for p in trial.params]
    targets = dict(zip(trial.pnames, trial.sset.target_sparsities(weights)))
    layers = [dict(r, seed=cfg.run.seed) for r in layer_report(trial.model, trial.pnames, target_sparsity=targets)]
    sizes = summarize(layers, trial.model)
    kept = trial.sset.kept_count(weights)  # the set's own count: never recomputed from a fraction
    if trial.status == "ok" and sizes["prunable_nonzero"] > kept:
        # nonzero <= kept: a kept weight may itself be exactly zero, never the other way round
        raise RuntimeError(f"{sizes['prunable_nonzero']} nonzero prunable weights, but the "
                           f"{cfg.prune.sparsity_set} set keeps {kept}: the pruned model is not in S")
    summary = {
        "arch": cfg.model.arch, "method": cfg.prune.method, "seed": cfg.run.seed, "status": trial.status,
        "error": trial.error, "study": "", "optuna_trial": -1, "space": "",
        **cfg.hyperparameters(),
        "target_sparsity": trial.sset.sparsity(weights), "dense_key": trial.device_key,
        "control_key": trial.control_key if cfg.run.dense_control else "",
        **{k: trial.accs.get(k, math.nan) for k in schema.TRIALS.names if k.endswith(("_acc", "_distance"))},
        **sizes, "epochs_run": len(trial.epochs),
        "wall_time_s": trial.elapsed + time.monotonic() - trial.t0, "device": str(trial.device),
        "config_json": schema.dumps(cfg.to_dict()),
        "provenance_json": schema.dumps(provenance(trial.device, trial.data_given, trial.runner)),
    }
    model = None
    if trial.status == "ok":
        model = model_file.encode(trial.model, prunable=trial.pnames, config=cfg.to_dict(),
                                  trial_id=trial.trial_id, mean=trial.data.mean, std=trial.data.std)
        summary.update(model_bytes=len(model), dense_bytes=model_file.dense_nbytes(trial.model))
    # 2:4 inference latency where a capable GPU ran an N:M trial; elsewhere NaN and why (latency_note)
    summary.update(trial_latency(trial.model, cfg.model.arch, cfg.prune.sparsity_set, trial.status, trial.device))
    weights_rows = [dict(r, seed=cfg.run.seed) for r in trial.weights]
    epochs = [dict(r) for r in trial.epochs]
    return TrialResult(summary, epochs, layers, weights_rows, model if cfg.run.keep_model else None)
