"""Hyperparameter importance per Optuna study (PED-ANOVA, first objective, the study's own direction), or in
words why there is none. Reads the experiment's Optuna storage (a local file, or one on an object store)
through a temporary copy, so the experiment is never written to."""

from __future__ import annotations

import logging
import math
import os
import posixpath
import shutil
import tempfile
from dataclasses import dataclass, field

from results.files import resolve

from .load import display_name, find_optuna_storage

log = logging.getLogger(__name__)

MIN_IMPORTANCE_TRIALS = 10  # COMPLETE trials a study needs before its importances are shown at all
IMPORTANCE_TOP_TRIALS = 5  # trials in PED-ANOVA's top quantile at least (Optuna's advice for stable results)
IMPORTANCE_QUANTILE = 0.1  # PED-ANOVA's target quantile on large studies (Optuna's default)
SWEEP_OBJECTIVE = "final_val_acc"  # the sweep's first objective (sweep/searcher.py), when a study names none


@dataclass
class StudyImportance:
    """One study's parameter importances (normalised to sum 1) and how they were computed."""

    study: str
    importances: dict[str, float]
    objective: str  # the first objective, the one importances are computed for
    direction: str  # "maximize" | "minimize": which end of the objective counts as good
    n_complete: int  # COMPLETE trials with a finite first objective
    n_top: int  # trials in the top quantile whose parameter distribution is compared with all trials
    evaluator: str = "PED-ANOVA"

    @property
    def label(self) -> str:
        end = "highest" if self.direction == "maximize" else "lowest"
        return (f"{self.evaluator} importance for the {end} {self.objective} "
                f"(top {self.n_top} of {self.n_complete} complete trials)")


@dataclass
class Importances:
    """What :func:`importance_data` found: importances of the studies with enough trials, and a note (in
    words) for every study or storage without them."""

    studies: dict[str, StudyImportance] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def importance_data(experiments: list[str]) -> Importances:
    """Parameter importances per Optuna study of each experiment (PED-ANOVA, first objective, its direction).

    A study needs MIN_IMPORTANCE_TRIALS complete trials; with fewer it gets a note instead of numbers. The
    storage (local, or on an object store) is copied to a temporary folder first, because opening it (SQLite
    WAL files, journal locks, schema migrations) can write next to it, and the experiment must stay untouched.
    """
    out = Importances()
    for exp in experiments:
        storage = find_optuna_storage(exp)
        if storage is None:
            out.notes.append(f"{display_name(exp)}: no Optuna storage found, so no importance")
            continue
        try:
            found, notes = _importances_from(storage)
        except Exception as exc:  # noqa: BLE001 - importance is optional; the tables still stand
            log.warning("no hyperparameter importance from %s: %s", display_name(storage), exc)
            out.notes.append(f"{display_name(storage)}: importance could not be computed ({type(exc).__name__}: "
                             f"{exc})")
            continue
        for name, imp in found.items():
            out.studies[name if name not in out.studies else f"{os.path.basename(exp)}/{name}"] = imp
        out.notes += notes
    return out


def _copy_storage(storage: str, tmp: str) -> str:
    """Copy ``storage`` (a local file with its SQLite side files, or an object-store URI) into ``tmp``."""
    if "://" in storage and not storage.startswith("file://"):
        name = posixpath.basename(storage.partition("?")[0])
        fs, path = resolve(storage)
        copy = os.path.join(tmp, name)
        with fs.open_input_stream(path) as src, open(copy, "wb") as dst:
            shutil.copyfileobj(src, dst)
        return copy
    storage = storage.removeprefix("file://")
    copy = os.path.join(tmp, os.path.basename(storage))
    # SQLite in WAL mode keeps recent commits in side files; copy them too so nothing is lost.
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(storage + suffix):
            shutil.copy2(storage + suffix, copy + suffix)
    return copy


def _open_copy(storage_path: str, tmp: str):
    import optuna

    copy = _copy_storage(storage_path, tmp)
    if copy.endswith((".db", ".sqlite", ".sqlite3")):
        return optuna.storages.RDBStorage(f"sqlite:///{copy}")
    from optuna.storages.journal import JournalFileBackend
    return optuna.storages.JournalStorage(JournalFileBackend(copy))


def _importances_from(storage_path: str) -> tuple[dict[str, StudyImportance], list[str]]:
    import optuna  # lazy: importing optuna costs a second; reports without a storage do not need it

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # for this read only: restored below
    try:
        return _read_importances(optuna, storage_path)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _read_importances(optuna, storage_path: str) -> tuple[dict[str, StudyImportance], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        storage = _open_copy(storage_path, tmp)
        found, notes = {}, []
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            result = study_importance(study)
            if isinstance(result, str):
                notes.append(f"{summary.study_name}: {result}")
            else:
                found[summary.study_name] = result
        if hasattr(storage, "remove_session"):
            storage.remove_session()
        return found, notes


def study_importance(study) -> StudyImportance | str:
    """PED-ANOVA importances of ``study`` for its FIRST objective in its own direction, or the reason (in
    words) why there are none: fewer than MIN_IMPORTANCE_TRIALS complete trials.

    PED-ANOVA ranks parameters by how differently they are distributed among the top-quantile trials than
    among all trials (evaluate_on_local: the trials the sampler actually ran); it treats LOW target values
    as the top, so a maximised objective is negated here. The top quantile holds at least
    IMPORTANCE_TOP_TRIALS trials."""
    import warnings

    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.values and math.isfinite(t.values[0])]
    n = len(complete)
    if n < MIN_IMPORTANCE_TRIALS:
        return (f"{n} complete trials, fewer than the {MIN_IMPORTANCE_TRIALS} needed for hyperparameter "
                "importance, so none is shown")
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    sign = -1.0 if maximize else 1.0
    quantile = max(IMPORTANCE_QUANTILE, IMPORTANCE_TOP_TRIALS / n)
    names = getattr(study, "metric_names", None)
    with warnings.catch_warnings():  # the "computes importances for low target values" warning: handled
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(target_quantile=quantile, evaluate_on_local=True),
            target=lambda t: sign * t.values[0])
    return StudyImportance(study.study_name, dict(values), names[0] if names else SWEEP_OBJECTIVE,
                           "maximize" if maximize else "minimize", n, math.ceil(quantile * n))


