"""Schema-valid rows of synthetic trials, written through the real writer (results.schema.write_trial_table).

Shared by the analysis and report tests: ``trial_rows`` gives the four tables' rows of one trial, whose
accuracies depend on its config and seed; ``write_trial`` writes them as one trial's Parquet files.
"""

from __future__ import annotations

import math

import numpy as np

from results import schema
from vocabulary.config import TrialConfig

ARCH = "mobilenet_v2"


def _hyperparameters(method, sparsity, lr, **over):
    """Every hyperparameter column, from a real TrialConfig (the other method's fields null)."""
    cfg = TrialConfig.from_dict({"method": method, "sparsity": sparsity, "lr": lr, "dense_epochs": 1,
                                 "sparsify_epochs": 2, "finetune_epochs": 1, "admm_interval": 1, **over})
    return {k: v for k, v in cfg.hyperparameters().items() if k in schema.HYPERPARAMETERS}


def trial_rows(tid, method, seed, sparsity, lr, status="ok", rng=None, arch=ARCH, target=None, control=None,
                dense=None, **over):
    """Rows of the four tables for one synthetic trial; accuracies depend on config and seed.

    ``target``: the set's exact target sparsity (default: the nominal ``sparsity``); ``control``: the dense
    control's accuracy in this row (default NaN: another trial of the (arch, seed) carries it); ``dense``:
    the dense-start accuracy (default: from the config); ``over``: other hyperparameters."""
    rng = rng or np.random.default_rng(hash((tid,)) % 2**32)
    base = 0.6 + 0.1 * (method == "admm") - 0.2 * sparsity + 0.05 * math.log10(lr / 1e-4) + 0.01 * seed
    accs = {}
    for i, stage in enumerate(("dense", "pre_prune", "post_prune", "post_prune_stale_bn", "final")):
        for split in ("val", "test"):
            accs[f"{stage}_{split}_acc"] = float(np.clip(base - 0.02 * i + rng.normal(0, 0.01), 0, 1))
    for split in ("val", "test"):
        accs[f"control_{split}_acc"] = math.nan if control is None else control
        if dense is not None:
            accs[f"dense_{split}_acc"] = dense
    if status != "ok":
        accs = {k: (math.nan if "final" in k else v) for k, v in accs.items()}
    target = sparsity if target is None else target
    summary = dict(experiment="exp", trial_id=tid, study=f"{arch}-{method}", optuna_trial=0, space="compare",
                   seed=seed, status=status, error="" if status == "ok" else "loss became nan",
                   **_hyperparameters(method, sparsity, lr, **over), target_sparsity=target,
                   dense_key=f"{arch}-s{seed}", control_key=f"control-{arch}-s{seed}", achieved_sparsity=target,
                   total_params=1000, nonzero_params=int(1000 - 900 * target), prunable_params=900,
                   prunable_nonzero=int(900 * (1 - target)), dense_macs=5000,
                   nonzero_macs=int(5000 * (1 - target)), epochs_run=4, wall_time_s=10.0 + seed,
                   device="cpu", config_json="{}", provenance_json="{}", **accs)
    epochs = []
    for e, phase in enumerate(("dense", "sparsify", "sparsify", "finetune"), start=1):
        epochs.append(dict(trial_id=tid, seed=seed, phase=phase, epoch=e, phase_epoch=1, train_loss=2.0 / e,
                           objective=2.5 / e, val_acc=0.2 * e, val_loss=1.0 / e, lr=lr, density=1.0,
                           primal_residual=1.0 / e if method == "admm" and phase == "sparsify" else math.nan,
                           dual_residual=math.nan, rho=0.01 * e if method == "admm" else math.nan,
                           seconds=1.0, images_per_s=100.0))
    edges = np.linspace(*schema.HIST_RANGE, schema.HIST_BINS + 1)
    weights = []
    for stage in ("dense", "pre_prune", "post_prune", "final"):
        counts = rng.integers(0, 50, size=schema.HIST_BINS)
        weights += [dict(trial_id=tid, seed=seed, stage=stage, bin_lo=float(lo), bin_hi=float(hi), count=int(c))
                    for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
        weights.append(dict(trial_id=tid, seed=seed, stage=stage, bin_lo=0.0, bin_hi=0.0,
                            count=0 if stage in ("dense", "pre_prune") else 450))
    layers = [dict(trial_id=tid, seed=seed, layer="features.0.0.weight", kind="conv", shape="8x3x3x3",
                   prunable=True, numel=216, nonzero=int(216 * (1 - sparsity)), sparsity=sparsity,
                   target_sparsity=sparsity, dense_macs=5000, nonzero_macs=2500)]
    return {"trials": [summary], "epochs": epochs, "layers": layers, "weights": weights}


def write_trial(root, tid, method, seed, sparsity, lr, status="ok", arch=ARCH, **kw):
    for name, rows in trial_rows(tid, method, seed, sparsity, lr, status, arch=arch, **kw).items():
        schema.write_trial_table(str(root), name, rows, arch=arch, method=method, trial_id=tid)
