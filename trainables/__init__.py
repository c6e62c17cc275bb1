"""Training code for one pruning trial: models, data, sparsity sets, methods and the training loop.

Nothing here imports Ray. Import-light: ``import trainables`` imports no torch; the public names below load
their submodule on first attribute access. Other packages (sweep, bench, analysis.export, tests) use these
names, or the ``__all__`` of a submodule; an underscore name is the submodule's own business.

    trial        run_trial, the phases of one trial (Trial, Loaders, Phase, train_epoch)
    evaluate     accuracy, BN recalibration, projected accuracy: measuring that leaves training untouched
    checkpoint   a trial's checkpoint file: save, restore, the epochs it holds
    dense_store  the shared dense model and control (DenseStore, FileDenseStore, payload builders)
    result       TrialResult: the rows a trial hands back, provenance
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "run_trial": "trial", "check_trial": "trial", "Trial": "trial", "Loaders": "trial", "Phase": "trial",
    "train_epoch": "trial", "make_optimizer": "trial", "seed_everything": "trial",
    "recalibrate_bn": "evaluate", "evaluate_recalibrated": "evaluate", "bn_buffers": "evaluate",
    "CHECKPOINT_FILE": "checkpoint", "checkpoint_epochs": "checkpoint", "load_checkpoint": "checkpoint",
    "DenseStore": "dense_store", "FileDenseStore": "dense_store", "dense_payload": "dense_store",
    "control_payload": "dense_store",
    "TrialResult": "result", "provenance": "result",
    "Splits": "data", "Loader": "data", "DataError": "data", "load_splits": "data",
    "build_model": "models",
    "load_model": "model_file", "with_normalization": "model_file",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainables' has no attribute {name!r}")
    return getattr(importlib.import_module(f"trainables.{_EXPORTS[name]}"), name)
