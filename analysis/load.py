"""Tidy loaders: an experiment folder's Parquet results as pandas DataFrames, read file by file.

Reading file by file (not one ``pyarrow.dataset`` scan) is deliberate: a sweep that is still running, or a
node that died mid-copy, can leave one unreadable file, and one bad file must cost one trial, not the report.
Nothing here writes; the experiment folder is only ever read.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from results import files, schema

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


def _is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def display_name(exp: str) -> str:
    """An experiment as a reader sees it: a local path, or a URI without its ``?query`` options (endpoints)."""
    return exp.partition("?")[0] if _is_uri(exp) else exp


def check_experiment(path: str) -> str:
    """Return ``path`` (made absolute if local; a URI such as ``s3://bucket/exp?endpoint_override=...`` as
    given, trailing slash dropped) if it is an experiment folder (has ``results/trials``); else raise.

    Raises ExperimentError naming the folder and what is missing (or why the store could not be read).
    """
    path = path.removeprefix("file://")
    if _is_uri(path):
        base, sep, query = path.partition("?")
        path = base.rstrip("/") + sep + query
    else:
        path = os.path.abspath(path)
    try:
        fs, base = files.resolve(path)
        kind = fs.get_file_info(base).type
        trials_kind = fs.get_file_info(posixpath.join(base, schema.RESULTS_DIR, "trials")).type
    except (OSError, ValueError) as exc:  # unreachable endpoint, unknown bucket, bad URI
        raise ExperimentError(f"{display_name(path)}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if kind == pafs.FileType.NotFound:
        raise ExperimentError(f"{display_name(path)}: no such folder")
    if trials_kind != pafs.FileType.Directory:
        raise ExperimentError(
            f"{display_name(path)}: not an experiment folder (expected {schema.RESULTS_DIR}/trials/arch=*/"
            "method=*/*.parquet written by `python -m sweep run`)")
    return path


def _partition(path: str) -> dict[str, str]:
    """arch and method from a hive path ``.../arch=A/method=M/<trial>.parquet`` (local or object store)."""
    parts = dict(p.split("=", 1) for p in path.replace(os.sep, "/").split("/") if "=" in p)
    return {k: parts.get(k, "") for k in schema.PARTITION_COLUMNS}


def _read_file(fs: pafs.FileSystem, path: str, name: str) -> pd.DataFrame:
    """One results file as a DataFrame with partition columns; raises SchemaError or an Arrow error."""
    table = pq.read_table(path, filesystem=fs)
    schema.check_version(path, table.schema.metadata)
    frame = table.to_pandas()
    for column in schema.TABLES[name]:  # an older readable version: the columns added since are null
        if column.name not in frame.columns:
            frame[column.name] = pd.Series([None] * len(frame), dtype=column.type.to_pandas_dtype())
    for key, value in _partition(path).items():
        frame[key] = value
    return frame


def _table_files(fs: pafs.FileSystem, base: str, name: str) -> list[str]:
    """``results/<name>/arch=*/method=*/*.parquet`` under ``base``, sorted. Hidden temporary files (".tmp-*")
    are half-written by design and never read."""
    folder = posixpath.join(base, schema.RESULTS_DIR, name)
    infos = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    paths = []
    for info in infos:
        rel = posixpath.relpath(info.path, folder).split("/")
        if (info.type == pafs.FileType.File and len(rel) == 3 and rel[0].startswith("arch=")
                and rel[1].startswith("method=") and rel[2].endswith(".parquet") and not rel[2].startswith(".")):
            paths.append(info.path)
    return sorted(paths)


def _empty(name: str) -> pd.DataFrame:
    frame = schema.TABLES[name].empty_table().to_pandas()
    for key in (*schema.PARTITION_COLUMNS, "experiment_dir"):
        frame[key] = pd.Series(dtype=object)
    return frame


def _load_table(exps: list[str], name: str, strict: bool, skipped: list[tuple[str, str]]) -> pd.DataFrame:
    frames = []
    for exp in exps:
        fs, base = files.resolve(exp)
        for path in _table_files(fs, base, name):
            shown = path if not _is_uri(exp) else f"{display_name(exp)}/{posixpath.relpath(path, base)}"
            try:
                frame = _read_file(fs, path, name)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
                reason = f"{type(exc).__name__}: {exc}"
                if strict:
                    raise ExperimentError(f"{shown}: {reason}") from exc
                log.warning("skipping %s: %s", shown, reason)
                skipped.append((shown, reason))
                continue
            frame["experiment_dir"] = display_name(exp)
            frames.append(frame)
    if not frames:
        return _empty(name)
    return pd.concat(frames, ignore_index=True)


def load_tables(dirs: str | list[str], strict: bool = False) -> Tables:
    """Read the trials, epochs, layers and weights tables of one or several experiments: local folders or
    object-store URIs (``s3://bucket/path``, read with pyarrow's file systems, nothing copied first).

    Corrupt files, files with an unknown schema version and partial files are skipped with a warning and
    listed in ``Tables.skipped``; with ``strict=True`` the first one raises ExperimentError instead.
    Raises ExperimentError if one is not an experiment. Mutates nothing.
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
            f"{', '.join(map(display_name, tables.experiments))}: no finished trial (status ok) among {n} trial rows; "
            "wait for the sweep to finish a trial")


SWEEP_OPTIONS = "sweep.json"  # the options a sweep ran with (sweep/cli.py writes it next to results/)


def sweep_trials(experiment: str) -> pd.DataFrame:
    """One experiment's trials with its sweep.json applied (tables.with_sweep_options: the seeds each
    configuration must have), which is what the chosen configurations are computed from. Raises
    ExperimentError when it is not an experiment."""
    from .tables import with_sweep_options

    return with_sweep_options(load_tables([experiment]).trials,
                              {display_name(experiment): read_sweep_options(experiment)})


def read_sweep_options(exp: str) -> dict:
    """The options an experiment's sweep ran with (``sweep.json``: sampler, trials, seeds, space, ...), or {}
    when there is none (trials run outside a sweep) or it cannot be parsed (logged)."""
    raw = files.read_bytes(exp, SWEEP_OPTIONS)
    if raw is None:
        return {}
    try:
        options = json.loads(raw)
    except ValueError:
        log.warning("%s: unreadable %s; the report says less about how the sweep searched", display_name(exp),
                    SWEEP_OPTIONS)
        return {}
    return options if isinstance(options, dict) else {}


def _is_file(path: str) -> bool:
    """Whether ``path`` (local, or a URI with its query options) is a file; False when it cannot be read."""
    try:
        fs, base = files.resolve(path)
        return fs.get_file_info(base).type == pafs.FileType.File
    except (OSError, ValueError):
        return False


def find_optuna_storage(exp: str) -> str | None:
    """The Optuna storage of an experiment as a local path or a URI (object store), or None.

    Looks at sweep.json's ``optuna_storage`` / ``storage`` entry first (a file, relative to the experiment or
    absolute), then ``optuna.db`` (SQLite), then ``*.log`` / ``*.journal`` journal files; tolerant because
    the sweep's choice may change.
    """
    options = read_sweep_options(exp)
    for stored in (options.get("optuna_storage"), options.get("storage")):
        if isinstance(stored, str) and stored:
            stored = stored.removeprefix("sqlite:///")
            candidate = stored if "://" in stored or os.path.isabs(stored) else files.join(exp, stored)
            if _is_file(candidate):
                return candidate
    for name in ("optuna.db", "optuna.sqlite", "optuna.sqlite3"):
        if _is_file(files.join(exp, name)):
            return files.join(exp, name)
    fs, base = files.resolve(exp)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    journals = sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File
                      and i.path.endswith((".log", ".journal")))
    return files.join(exp, journals[0]) if journals else None
