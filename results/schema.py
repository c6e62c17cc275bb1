"""The results schema: table names, columns, types and version, shared by the writer and the reader.

Imports pyarrow, ``results.files`` and the torch-free ``vocabulary`` only (never torch or Ray), so ``analysis`` can read
results with light dependencies. The trials table's hyperparameter columns are generated from TrialConfig
(``config.hyperparameter_fields``): a new config field reaches the results and the analysis grouping by itself;
the epochs table's method columns likewise from the methods' declared metrics (``vocabulary.registry``).

Layout inside an experiment folder (hive partitioning, so ``pandas.read_parquet(folder)`` and pyarrow
datasets read a table whole)::

    results/<table>/arch=<arch>/method=<method>/<trial_id>.parquet

One file per trial per table, written by ``results.files.write_bytes`` under a hidden temporary name
(ignored by pyarrow's dataset discovery) and renamed into place, so a reader never sees half a file and a rewrite of the same trial
replaces its rows instead of duplicating them. ``arch`` and ``method`` live in the path, not in the
file (hive partition columns come back from the path when the dataset is read).

Accuracies are fractions in [0, 1]. Sparsities are fractions of prunable weights that are zero.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from results import files
from vocabulary import registry
from vocabulary.config import all_fields, hyperparameter_fields

# 2: hyperparameter columns generated from TrialConfig, dense control, mask_changes
# 3: dense_distance, pre_prune_distance (how far the weights are from the sparse set before pruning)
# 4: epochs.projected_val_acc (the early-stopping fidelity), trials.empty_layers (prunable layers pruned to zero),
#    trials.model_bytes and dense_bytes (the final model's file), trials.stage (tuning | confirmation)
# 5: trials.latency_* (2:4 semi-structured inference latency of the final model vs its dense twin, where a CUDA
#    GPU with compute capability >= 8.0 ran an N:M trial; elsewhere NaN and the reason in latency_note)
SCHEMA_VERSION = 5
VERSION_KEY = b"prunesweep.schema_version"
RESULTS_DIR = "results"
PARTITION_COLUMNS = ("arch", "method")

SPLITS = ("val", "test")
# A trial's status: ok; diverged (NaN/inf loss or weights, DESIGN rule 8); failed (an exception, after retries);
# stopped (ended early by a scheduler such as ASHA). sweep.outcome.trial_status decides which.
STATUSES = ("ok", "diverged", "failed", "stopped")
# A trial's stage: tuning (a trial of the search: Optuna chose it) or confirmation (a chosen configuration run
# again on seeds the tuning never used, by `python -m sweep confirm`: never told to Optuna, never part of the
# choice). Rows without a stage (schema 2 and 3, trials outside a sweep) are tuning rows.
TUNING, CONFIRMATION = "tuning", "confirmation"
TRIAL_STAGES = (TUNING, CONFIRMATION)

# accuracy stages, in trial order; "control" is the dense control (DESIGN rule 11): the dense checkpoint trained
# as many epochs more as the pruned models, with the dense recipe
ACC_STAGES = ("dense", "pre_prune", "post_prune", "post_prune_stale_bn", "final", "control")
_ARROW_TYPES = {"str": pa.string(), "str | None": pa.string(), "float": pa.float64(), "float | None": pa.float64(),
                "int": pa.int64(), "int | None": pa.int64(), "bool": pa.bool_()}


def _hyperparameter_columns() -> list[tuple[str, pa.DataType]]:
    types = {f.name: f.type for f in all_fields()}
    return [(name, _ARROW_TYPES[types[name]]) for name in HYPERPARAMETERS]


def method_metric_columns() -> list[tuple[str, pa.DataType]]:
    """The epochs table's method columns: every registered method's metrics (vocabulary.registry), in order."""
    return [(m.name, _ARROW_TYPES[m.type]) for m in registry.method_metrics()]


# every TrialConfig hyperparameter except the partition columns, which live in the folder names
HYPERPARAMETERS = tuple(n for n in hyperparameter_fields() if n not in ("arch", "method"))

TRIALS = pa.schema(
    [
        ("experiment", pa.string()),
        ("trial_id", pa.string()),
        ("study", pa.string()),  # Optuna study name, "" outside a sweep
        ("optuna_trial", pa.int64()),  # Optuna trial number, -1 when none
        ("space", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),  # one of STATUSES
        ("stage", pa.string()),  # one of TRIAL_STAGES; null (older files): tuning
        ("error", pa.string()),  # why a trial failed or diverged, "" when ok
    ]
    # the hyperparameters, one column per TrialConfig field (null where the other method's: rho for magnitude)
    + _hyperparameter_columns()
    + [
        # the exact overall fraction of prunable weights the sparsity set zeroes (1 - kept / prunable), from
        # the set itself; below the nominal `sparsity` where the set leaves layers dense (N:M: depthwise)
        ("target_sparsity", pa.float64()),
        ("dense_key", pa.string()),  # identity of the shared dense checkpoint (DESIGN rule 1)
        ("control_key", pa.string()),  # identity of the dense control ("" when not trained)
    ]
    + [(f"{acc}_{split}_acc", pa.float64()) for acc in ACC_STAGES for split in SPLITS]
    + [
        ("achieved_sparsity", pa.float64()),  # measured from the weights, over prunable tensors
        # sum ||W - Proj_S(W)||^2 over the prunable tensors: of the dense model as the sparsify phase starts,
        # and right before the hard projection (what the projection removes: 0 for per-step magnitude; near 0
        # once ADMM has converged; >= dense_distance when ADMM never brought W nearer the sparse set)
        ("dense_distance", pa.float64()),
        ("pre_prune_distance", pa.float64()),
        # prunable tensors with no nonzero weight left (a global set can empty a layer at high sparsity or
        # with ties: the network is then cut in two and its accuracy is chance; the report flags it)
        ("empty_layers", pa.int64()),
        # the final model's file (results/models/..., trainables.model_file: bitmask + kept values) and the same
        # model saved densely; model_bytes is measured even when the sweep keeps no file (--keep-models)
        ("model_bytes", pa.int64()),
        ("dense_bytes", pa.int64()),
        # inference latency of the final model at latency_batch_size images (eval, bf16, channels-last, CUDA
        # events, median): as trained (dense kernels) and with its 2:4 layers as semi-structured sparse tensors
        # (trainables.semistructured.latency_columns). NaN where not measured; latency_note says why
        ("latency_batch_size", pa.int64()),
        ("latency_dense_ms", pa.float64()),
        ("latency_sparse_ms", pa.float64()),
        ("latency_speedup", pa.float64()),  # latency_dense_ms / latency_sparse_ms
        ("latency_sparse_mac_share", pa.float64()),  # share of the dense MACs in layers run as 2:4 sparse
        ("latency_note", pa.string()),  # "" when measured, else why not
        ("total_params", pa.int64()),  # every parameter of the model
        ("nonzero_params", pa.int64()),
        ("prunable_params", pa.int64()),
        ("prunable_nonzero", pa.int64()),
        ("dense_macs", pa.int64()),  # multiply-accumulates per image, dense model
        ("nonzero_macs", pa.int64()),  # ... counting only nonzero weights
        ("epochs_run", pa.int64()),
        ("wall_time_s", pa.float64()),
        ("device", pa.string()),
        ("config_json", pa.string()),  # the full flat TrialConfig
        ("provenance_json", pa.string()),  # code version, package versions, host
    ]
)

EPOCHS = pa.schema(
    [
        ("trial_id", pa.string()),
        ("seed", pa.int64()),
        ("phase", pa.string()),  # dense | sparsify | finetune
        ("epoch", pa.int64()),  # 1-based, counted over all phases
        ("phase_epoch", pa.int64()),  # 1-based within the phase
        ("train_loss", pa.float64()),  # mean cross-entropy over the epoch's batches
        ("objective", pa.float64()),  # train_loss + ADMM penalty (rho/2) sum ||W - Z + U||_F^2
        ("val_acc", pa.float64()),  # of the weights as they are (dense ones during ADMM's sparsify phase)
        # the fidelity every method shares (DESIGN rule 14): val accuracy of a copy of the weights projected
        # onto the trial's target set now, BN recalibrated; equal to val_acc where the weights are in the set
        # already (per-step and one-shot magnitude, fine-tuning); null in the dense phases. ASHA stops on it.
        ("projected_val_acc", pa.float64()),
        ("val_loss", pa.float64()),
        ("lr", pa.float64()),
        ("density", pa.float64()),  # fraction of prunable weights that are nonzero
    ]
    # the methods' own per-epoch values (primal_residual, rho, mask_changes ...), each declared with its type and
    # comment in vocabulary/registry.py; NaN (float) or null (int) in the rows of the other methods
    + method_metric_columns()
    + [
        ("seconds", pa.float64()),
        ("images_per_s", pa.float64()),
    ]
)

LAYERS = pa.schema(
    [
        ("trial_id", pa.string()),
        ("seed", pa.int64()),
        ("layer", pa.string()),  # parameter name, e.g. features.1.conv.0.0.weight
        ("kind", pa.string()),  # conv | depthwise | grouped | pointwise | linear
        ("shape", pa.string()),  # e.g. "32x1x3x3"
        ("prunable", pa.bool_()),
        ("numel", pa.int64()),
        ("nonzero", pa.int64()),
        ("sparsity", pa.float64()),  # measured from the final weights
        ("target_sparsity", pa.float64()),
        ("dense_macs", pa.int64()),
        ("nonzero_macs", pa.int64()),
    ]
)

WEIGHTS = pa.schema(
    [
        ("trial_id", pa.string()),
        ("seed", pa.int64()),
        ("stage", pa.string()),  # dense | pre_prune | post_prune | final
        ("bin_lo", pa.float64()),  # histogram of all prunable weights over fixed bins;
        ("bin_hi", pa.float64()),  # exact zeros are counted in their own row with bin_lo == bin_hi == 0
        ("count", pa.int64()),
    ]
)

TABLES: dict[str, pa.Schema] = {"trials": TRIALS, "epochs": EPOCHS, "layers": LAYERS, "weights": WEIGHTS}

# Fixed histogram bins for the weights table, so every trial and stage is comparable.
HIST_RANGE = (-1.0, 1.0)
HIST_BINS = 200


class SchemaError(ValueError):
    """A results file does not match this schema (wrong version, missing columns)."""


def to_table(name: str, rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a pyarrow Table for ``name`` from row dicts; missing columns become null, extra keys raise."""
    schema = TABLES[name]
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(schema.names) - set(PARTITION_COLUMNS))
    if extra:
        raise SchemaError(f"table {name}: unknown columns {extra}")
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    table = pa.Table.from_pydict(cols, schema=schema)
    return table.replace_schema_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode()})


def table_dir(root: str, name: str) -> str:
    return files.join(root, RESULTS_DIR, name)


def trial_path(name: str, *, arch: str, method: str, trial_id: str) -> str:
    """One trial's file of table ``name``, relative to the experiment folder (the module docstring's layout)."""
    return posixpath.join(RESULTS_DIR, name, f"arch={arch}", f"method={method}", f"{trial_id}.parquet")


MODELS = "models"  # results/models/arch=<arch>/method=<method>/<trial_id>.pt: each kept final model


def model_path(*, arch: str, method: str, trial_id: str) -> str:
    """One trial's final model file, relative to the experiment folder (beside its tables' files)."""
    return posixpath.join(RESULTS_DIR, MODELS, f"arch={arch}", f"method={method}", f"{trial_id}.pt")


def trial_file(root: str, name: str, *, arch: str, method: str, trial_id: str) -> tuple[pafs.FileSystem, str]:
    """File system and path of one trial's file of table ``name``."""
    fs, base = files.resolve(root)
    return fs, posixpath.join(base, trial_path(name, arch=arch, method=method, trial_id=trial_id))


def write_trial_table(root: str, name: str, rows: Iterable[Mapping[str, Any]], *, arch: str, method: str,
                      trial_id: str) -> str:
    """Write one trial's rows of table ``name`` atomically (storage.write_bytes); return the final path.

    Replaces an earlier file of the same trial (a retried or resumed trial never duplicates rows).
    """
    buf = pa.BufferOutputStream()
    pq.write_table(to_table(name, rows), buf)
    rel = trial_path(name, arch=arch, method=method, trial_id=trial_id)
    files.write_bytes(root, rel, buf.getvalue().to_pybytes())
    return posixpath.join(files.resolve(root)[1], rel)


def file_version(metadata: Mapping[bytes, bytes] | None) -> int | None:
    """The schema version stored in a Parquet file's metadata, or None."""
    if not metadata or VERSION_KEY not in metadata:
        return None
    return int(metadata[VERSION_KEY].decode())


# Older versions that differ from the current one only by columns added since: a file of one of them is read
# with those columns null (no value is reinterpreted). Version 2 lacks dense_distance and pre_prune_distance,
# version 3 lacks projected_val_acc and empty_layers; files written before trials.stage lack it (null: tuning);
# version 4 lacks the latency_* columns.
READABLE_VERSIONS = (2, 3, 4, SCHEMA_VERSION)


def check_version(path: str, metadata: Mapping[bytes, bytes] | None) -> None:
    """Raises SchemaError unless the file's schema version is one of READABLE_VERSIONS."""
    version = file_version(metadata)
    if version not in READABLE_VERSIONS:
        raise SchemaError(f"{path}: schema version {version} is not a supported version "
                          f"({', '.join(map(str, READABLE_VERSIONS))})")


def dumps(obj: Any) -> str:
    """JSON for config/provenance columns: sorted keys, NaN allowed."""
    return json.dumps(obj, sort_keys=True, default=str)
