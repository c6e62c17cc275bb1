"""Tidy loaders: an experiment folder's Parquet results as pandas DataFrames, read file by file.

Reading file by file (not one ``pyarrow.dataset`` scan) is deliberate: a sweep that is still running, or a
node that died mid-copy, can leave one unreadable file, and one bad file must cost one trial, not the report.
Nothing here writes; the experiment folder is only ever read.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.parquet as pq

from trainables import schema

log = logging.getLogger(__name__)


class ExperimentError(ValueError):
    """A folder is not an experiment, or its results cannot be used (message names the path and problem)."""


@dataclass
class Tables:
    """The four results tables of one or several experiments, plus what could not be read.

    Every frame has the schema's columns plus ``arch``, ``method`` (from the hive path) and ``experiment_dir``.
    ``skipped`` lists ``(path, reason)`` for each file left out.
    """

    trials: pd.DataFrame
    epochs: pd.DataFrame
    layers: pd.DataFrame
    weights: pd.DataFrame
    experiments: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def check_experiment(path: str) -> str:
    """Return ``path`` made absolute if it is an experiment folder (has ``results/trials``); else raise.

    Raises ExperimentError naming the folder and what is missing.
    """
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise ExperimentError(f"{path}: no such folder")
    trials_dir = os.path.join(path, schema.RESULTS_DIR, "trials")
    if not os.path.isdir(trials_dir):
        raise ExperimentError(
            f"{path}: not an experiment folder (expected {schema.RESULTS_DIR}/trials/arch=*/method=*/*.parquet "
            "written by `python -m sweep run`)")
    return path


def _partition(path: str) -> dict[str, str]:
    """arch and method from a hive path ``.../arch=A/method=M/<trial>.parquet``."""
    parts = dict(p.split("=", 1) for p in path.split(os.sep) if "=" in p)
    return {k: parts.get(k, "") for k in schema.PARTITION_COLUMNS}


def _read_file(path: str) -> pd.DataFrame:
    """One results file as a DataFrame with partition columns; raises SchemaError or an Arrow error."""
    table = pq.read_table(path)
    schema.check_version(path, table.schema.metadata)
    frame = table.to_pandas()
    for key, value in _partition(path).items():
        frame[key] = value
    return frame


def _table_files(exp: str, name: str) -> list[str]:
    # Hidden temporary files (".tmp-*") are half-written by design and never read.
    pattern = os.path.join(schema.table_dir(exp, name), "arch=*", "method=*", "*.parquet")
    return sorted(p for p in glob.glob(pattern) if not os.path.basename(p).startswith("."))


def _empty(name: str) -> pd.DataFrame:
    frame = schema.TABLES[name].empty_table().to_pandas()
    for key in (*schema.PARTITION_COLUMNS, "experiment_dir"):
        frame[key] = pd.Series(dtype=object)
    return frame


def _load_table(exps: list[str], name: str, strict: bool, skipped: list[tuple[str, str]]) -> pd.DataFrame:
    frames = []
    for exp in exps:
        for path in _table_files(exp, name):
            try:
                frame = _read_file(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
                reason = f"{type(exc).__name__}: {exc}"
                if strict:
                    raise ExperimentError(f"{path}: {reason}") from exc
                log.warning("skipping %s: %s", path, reason)
                skipped.append((path, reason))
                continue
            frame["experiment_dir"] = exp
            frames.append(frame)
    if not frames:
        return _empty(name)
    return pd.concat(frames, ignore_index=True)


def load_tables(dirs: str | list[str], strict: bool = False) -> Tables:
    """Read the trials, epochs, layers and weights tables of one or several experiment folders.

    Corrupt files, files with an unknown schema version and partial files are skipped with a warning and
    listed in ``Tables.skipped``; with ``strict=True`` the first one raises ExperimentError instead.
    Raises ExperimentError if a folder is not an experiment. Mutates nothing on disk.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    exps = [check_experiment(str(d)) for d in dirs]
    skipped: list[tuple[str, str]] = []
    frames = {name: _load_table(exps, name, strict, skipped) for name in schema.TABLES}
    return Tables(**frames, experiments=exps, skipped=skipped)


def require_finished(tables: Tables) -> None:
    """Raise ExperimentError if no trial finished with status ok (nothing to compare)."""
    trials = tables.trials
    if trials.empty or not (trials["status"] == "ok").any():
        n = len(trials)
        raise ExperimentError(
            f"{', '.join(tables.experiments)}: no finished trial (status ok) among {n} trial rows; "
            "wait for the sweep to finish a trial")


def find_optuna_storage(exp: str) -> str | None:
    """The Optuna storage of an experiment folder as a path, or None.

    Looks at sweep.json's ``storage`` entry first, then ``optuna.db`` (SQLite), then ``*.log`` /
    ``*.journal`` journal files; tolerant because the sweep's choice may change.
    """
    meta = os.path.join(exp, "sweep.json")
    stored = None
    if os.path.isfile(meta):
        try:
            with open(meta) as fh:
                options = json.load(fh)
            stored = options.get("optuna_storage") or options.get("storage")
        except (OSError, ValueError, AttributeError):
            log.warning("%s: unreadable; looking for the Optuna storage by file name", meta)
    if isinstance(stored, str) and stored:
        if stored.startswith("sqlite:///"):
            stored = stored[len("sqlite:///"):]
        candidate = stored if os.path.isabs(stored) or "://" in stored else os.path.join(exp, stored)
        if "://" in candidate or os.path.isfile(candidate):
            return candidate
    for name in ("optuna.db", "optuna.sqlite", "optuna.sqlite3"):
        if os.path.isfile(os.path.join(exp, name)):
            return os.path.join(exp, name)
    journals = sorted(glob.glob(os.path.join(exp, "*.log")) + glob.glob(os.path.join(exp, "*.journal"))
                      + glob.glob(os.path.join(exp, "optuna", "*")))
    return journals[0] if journals else None
