"""Our Ray Tune searcher over several Optuna studies (one per (arch, method)), driven by ask/tell.

Why not ``ray.tune.search.optuna.OptunaSearch``: with Ray 2.60 / Optuna 5.0 it tells ASHA-stopped trials as
COMPLETE with their partial value, and after a driver kill its checkpoint is older than the Optuna storage,
so ``Tuner.restore`` dies with UpdateFinishedTrialError (issue 3). Here the Optuna storage is the source of
truth: every Ray trial id is a user attribute of its Optuna trial, :meth:`restore` rebuilds all state from
the storage, a finished Optuna trial is never told again, and unknown Ray trial ids are ignored.

Seeds: each configuration Optuna suggests runs as ``seeds`` Ray trials (seed 0..N-1); the Optuna trial is
told what the shared rule (results.selection, DESIGN rule 15) says of the configuration once every seed has
ended: FAIL when a seed diverged, else PRUNED when one was stopped early, else FAIL when one failed, else
COMPLETE with the mean over all seeds (see :func:`tell`).

One Ray trial's end is stored as its status (sweep.outcome): ok only when its last result carries
``trial_done=True`` and ``status == "ok"``; stopped when it ended without the done marker (ASHA); diverged
or failed otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from results import selection

from .outcome import trial_status
from vocabulary.registry import SAMPLER_STARTUP as STARTUP

__all__ = ["MultiStudySearcher", "StudySpec", "classify", "tell", "make_sampler", "ask_seed", "JournalMirror",
           "trial_row", "tune_trials", "tune_trial_ids", "open_storage", "META_KEYS", "ATTR_RAY", "ATTR_RESULT",
           "OPTUNA_STATES"]

log = logging.getLogger(__name__)

ATTR_RAY = "ray_trial_"  # + seed: the Ray trial id that runs this seed
ATTR_RESULT = "result_"  # + seed: {"state": "ok"|"pruned"|"fail", "values": [...]}
# keys our trainable strips before TrialConfig; _trial_id: the id the trial's rows are written under (a
# confirmation trial's deterministic id, sweep.confirm), else Tune's own; _stage: results.schema.TRIAL_STAGES
META_KEYS = ("_study", "_optuna_trial", "_space", "_trial_id", "_stage")


@dataclass(frozen=True)
class StudySpec:
    """One study: name, the fixed flat config of its trials, and how to ask for the searched ones."""

    name: str
    fixed: dict[str, Any]  # arch, method, epochs, dataset, --set values ...
    ask: Callable[[optuna.Trial], dict[str, Any]]  # suggest the searched parameters (sweep.spaces.suggest)
    objectives: tuple[str, ...]  # result keys, maximised: ("final_val_acc",) or (+ "achieved_sparsity")
    attrs: dict[str, Any] = field(default_factory=dict)  # study user attributes (space, arch, method, recipe)


class MultiStudySearcher(Searcher):
    """Searches ``trials`` configurations per study, each run with ``seeds`` seeds.

    Thread safety: Tune calls a searcher from the driver's event loop only. Mutates the Optuna storage.
    """

    def __init__(self, storage_path: str, studies: list[StudySpec], *, trials: int, seeds: int = 1,
                 sampler: str = "tpe", max_concurrent: int = 0, metric: str = "val_acc", mode: str = "max",
                 tune_dir: str | None = None):
        super().__init__(metric=metric, mode=mode)
        self.storage_path = storage_path  # <experiment>/optuna.journal: a local path or a URI
        # where this Tune run keeps its state: the experiment folder, or a longer search's folder inside it
        self.tune_dir = tune_dir
        self.specs = {s.name: s for s in studies}
        self.trials = trials
        self.seeds = seeds
        self.sampler = sampler
        self.max_concurrent = max_concurrent  # 0: no limit (Tune's resources limit it)
        self._open()

    def _open(self) -> None:
        self.journal = JournalMirror(self.storage_path)
        self.storage = open_storage(self.journal.local)
        self.studies = {name: self._open_study(spec) for name, spec in self.specs.items()}
        self.live: dict[str, tuple[str, int, int]] = {}  # ray id -> (study, optuna trial number, seed)
        self.open_seeds: list[tuple[str, int, int]] = []  # (study, number, seed) not yet handed to Ray
        self.rebuild_from_storage()

    def __getstate__(self) -> dict:
        # Tune pickles the searcher into tuner.pkl: keep only what rebuilds it; the storage is the state.
        return {k: v for k, v in self.__dict__.items() if k not in ("storage", "studies", "live", "open_seeds",
                                                                      "journal")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def _open_study(self, spec: StudySpec) -> optuna.Study:
        study = optuna.create_study(storage=self.storage, study_name=spec.name, load_if_exists=True,
                                    directions=["maximize"] * len(spec.objectives),
                                    sampler=make_sampler(self.sampler, len(spec.objectives)))
        if study.metric_names is None:  # named once: optuna-dashboard labels the objectives with them
            study.set_metric_names(list(spec.objectives))
        for key, value in spec.attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)
        return study

    def seeds_ended(self) -> int:
        """Seeds whose end the storage holds (a longer search: those ended before this Tune run)."""
        return sum(1 for study in self.studies.values() for t in study.get_trials(deepcopy=False)
                   for key in t.user_attrs if key.startswith(ATTR_RESULT))

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    # -- state, always derived from the storage ------------------------------------------------------
    def rebuild_from_storage(self) -> None:
        """Rebuild the live map and the seeds still to run from the Optuna storage (after restore too).

        A RUNNING Optuna trial's seeds with a Ray id stay live (Tune resumes them); seeds with neither a Ray id
        nor a result are handed out again by suggest().
        """
        self.live.clear()
        self.open_seeds.clear()
        for name, study in self.studies.items():
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                for seed in range(self.seeds):
                    ray_id = t.user_attrs.get(f"{ATTR_RAY}{seed}")
                    if f"{ATTR_RESULT}{seed}" in t.user_attrs:
                        continue
                    if ray_id:
                        self.live[ray_id] = (name, t.number, seed)
                    else:
                        self.open_seeds.append((name, t.number, seed))
        self.answer_from_rows()

    def answer_from_rows(self) -> None:
        """Live seeds whose Ray trial already wrote its trials row are told from that row.

        The driver can die after a trial's Parquet rows are written and before Optuna is told; on resume Tune
        may never report that trial again (it saved it finished, or the trainable reports its stored end):
        the row is the trial's outcome, read through the same rule as a live end (``classify``).
        """
        from results.files import parent

        experiment = parent(self.storage_path)
        for ray_id, (name, _number, _seed) in list(self.live.items()):
            fixed = self.specs[name].fixed
            row = trial_row(experiment, fixed.get("arch"), fixed.get("method"), ray_id)
            if row is not None:
                log.info("trial %s ended (%s) before Optuna was told: telling it from its row", ray_id,
                         row.get("status"))
                self._record(ray_id, {**row, "trial_done": row.get("status") in ("ok", "diverged")},
                             row.get("status") == "failed")

    def answer_from_tune(self, trials: dict[str, tuple[str, dict]]) -> None:
        """Live seeds that Tune saved finished (``trials``: id -> (status, last result)) without a row: Tune
        restores them finished and never reports them again, so they are told from Tune's saved end."""
        for ray_id in [r for r in self.live if trials.get(r, ("",))[0] in ("ERROR", "TERMINATED")]:
            status, last = trials[ray_id]
            log.info("trial %s ended (%s) before Optuna was told: telling it from Tune's state", ray_id, status)
            self._record(ray_id, last, status == "ERROR")

    def save(self, checkpoint_path: str) -> None:
        # Nothing to save: the storage holds everything; a marker keeps Tune's restore path happy.
        with open(checkpoint_path, "w") as f:
            json.dump({"source_of_truth": "optuna storage"}, f)

    def restore(self, checkpoint_path: str) -> None:
        """Tune restores a killed sweep: rebuild from the storage, then reconcile with Tune's own state.

        The driver can die after a seed was handed to a new Ray trial (its id already in the storage) but
        before Tune saved that trial in its experiment state: Tune will never run it again, so the seed
        is handed out afresh instead of waiting (and holding a concurrency slot) forever.
        """
        self.rebuild_from_storage()
        from results.files import parent

        trials = tune_trials(getattr(self, "tune_dir", None) or parent(self.storage_path))
        if trials is None:
            log.warning("no Tune experiment state next to %s: cannot reconcile live trials", self.storage_path)
            return
        self.reconcile(set(trials))
        self.answer_from_tune(trials)

    def reconcile(self, known: set[str]) -> None:
        """Seeds handed to Ray trials that Tune does not know (``known``: Tune's trial ids) run again."""
        for ray_id in [r for r in self.live if r not in known]:
            log.info("trial %s was handed out but never saved by Tune: its seed runs again", ray_id)
            self.open_seeds.append(self.live.pop(ray_id))

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric/mode are ours; Tune's param_space only carries constants

    # -- Tune API ------------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        """Next config: a pending seed of a running configuration first, else ask the study with the fewest
        configurations so far. Returns Searcher.FINISHED when every study has ``trials`` configurations."""
        if self.max_concurrent and len(self.live) >= self.max_concurrent:
            return None  # Tune asks again later
        if self.open_seeds:
            name, number, seed = self.open_seeds.pop(0)
            return self._hand_out(trial_id, name, number, seed)
        counts = {n: len(s.get_trials(deepcopy=False)) for n, s in self.studies.items()}
        name = min(counts, key=lambda n: (counts[n], n))
        if counts[name] >= self.trials:
            return Searcher.FINISHED
        study = self.studies[name]
        # reseeded per ask (ask_seed): a resumed sweep continues the search instead of repeating its start
        study.sampler = make_sampler(self.sampler, len(self.specs[name].objectives), ask_seed(name, counts[name]))
        trial = study.ask()
        params = self.specs[name].ask(trial)
        trial.set_user_attr("params_json", json.dumps(params, sort_keys=True, default=str))
        self.open_seeds.extend((name, trial.number, s) for s in range(1, self.seeds))
        return self._hand_out(trial_id, name, trial.number, 0)

    def _hand_out(self, ray_id: str, name: str, number: int, seed: int) -> dict:
        study = self.studies[name]
        frozen = study.get_trials(deepcopy=False)[number]
        self.storage.set_trial_user_attr(frozen._trial_id, f"{ATTR_RAY}{seed}", ray_id)
        self.live[ray_id] = (name, number, seed)
        self.journal.push()
        params = json.loads(frozen.user_attrs["params_json"])
        return {**self.specs[name].fixed, **params, "seed": seed,
                "_study": name, "_optuna_trial": number}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # intermediate values are not told: ASHA, not Optuna, does the early stopping

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Record this seed's end in the storage; tell Optuna once every seed of the configuration ended.

        Unknown ids (e.g. from before a restore, already told) are ignored.
        """
        self._record(trial_id, result, error)

    def _record(self, trial_id: str, result: dict | None, error: bool) -> None:
        key = self.live.pop(trial_id, None)
        if key is None:
            log.debug("ignoring unknown or already finished trial %s", trial_id)
            return
        name, number, seed = key
        study = self.studies[name]
        frozen = study.get_trials(deepcopy=False)[number]
        if frozen.state.is_finished():
            return  # never tell twice
        outcome = classify(result, error, self.specs[name].objectives)
        self.storage.set_trial_user_attr(frozen._trial_id, f"{ATTR_RESULT}{seed}", outcome)
        frozen = study.get_trials(deepcopy=False)[number]
        results = [frozen.user_attrs.get(f"{ATTR_RESULT}{s}") for s in range(self.seeds)]
        if any(r is None for r in results):
            self.journal.push()
            return
        tell(study, number, results)
        self.journal.push()


def classify(result: dict | None, error: bool, objectives: tuple[str, ...]) -> dict:
    """What is stored of one Ray trial's end: ok with objective values, pruned (stopped), or fail with why
    (its status: diverged or failed); results.selection.seed_status reads the status back."""
    status = trial_status(result, error)
    if status == "stopped":
        return {"state": "pruned"}
    if status != "ok":
        return {"state": "fail", "why": status}
    values = [result.get(k) for k in objectives]
    if any(v is None for v in values):
        return {"state": "fail", "why": f"status ok without objectives {values}"}
    return {"state": "ok", "values": [float(v) for v in values]}


# what Optuna is told of a configuration in each state of the shared rule (results.selection, DESIGN rule 15)
OPTUNA_STATES = {selection.DIVERGED: TrialState.FAIL, selection.STOPPED: TrialState.PRUNED,
                 selection.INCOMPLETE: TrialState.FAIL}


def tell(study: optuna.Study, number: int, results: list[dict]) -> None:
    """Tell Optuna a configuration's end (``results``: one dict per seed, from :func:`classify`) by the shared
    rule: complete -> COMPLETE with the mean over all its seeds; diverged -> FAIL; stopped -> PRUNED;
    incomplete (a failed seed) -> FAIL."""
    state = selection.config_state((seed, selection.seed_status(r)) for seed, r in enumerate(results))
    if state != selection.COMPLETE:
        study.tell(number, state=OPTUNA_STATES[state])
        return
    n = len(results[0]["values"])
    mean = [sum(r["values"][i] for r in results) / len(results) for i in range(n)]
    study.tell(number, mean if n > 1 else mean[0])


def make_sampler(name: str, n_objectives: int, seed: int = 0) -> optuna.samplers.BaseSampler:
    """TPE (default), GP or NSGA-II, seeded so a sweep's suggestions are reproducible; each draws
    STARTUP[name] configurations at random before it models the space (sweep.json records the number)."""
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=STARTUP["gp"])
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=STARTUP["nsga2"])
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=STARTUP["tpe"])


def ask_seed(study_name: str, n_trials: int) -> int:
    """The sampler's seed for a study's next configuration: from the study and how many it has, not from the
    process. A sampler seeded once per process restarted its random stream at every resume and suggested
    the first configurations again (measured: after a kill, trials 1 and 2 repeated trial 0's lr and rho)."""
    return int.from_bytes(hashlib.sha256(f"{study_name}/{n_trials}".encode()).digest()[:4], "little")


class JournalMirror:
    """Where the journal file lives while the driver writes it.

    A local experiment folder: the journal itself. A URI (s3://, gs://): a local copy on the driver,
    downloaded when opened and uploaded whole after every write (the journal is a few KB per trial and only
    the driver writes it), so ``<experiment>/optuna.journal`` is complete in the bucket for a resume from
    another head node and for ``python -m analysis report`` on a downloaded copy.
    """

    def __init__(self, path: str):
        self.path = path
        self.remote = "://" in path and not path.startswith("file://")
        if not self.remote:
            self.local = path.removeprefix("file://")
            os.makedirs(os.path.dirname(os.path.abspath(self.local)), exist_ok=True)
            return
        from results.files import parent, read_bytes

        digest = hashlib.sha1(path.encode()).hexdigest()[:16]
        folder = os.path.join(tempfile.gettempdir(), "prunesweep-journals", digest)
        os.makedirs(folder, exist_ok=True)
        self.local = os.path.join(folder, "optuna.journal")
        self.folder, self.name = parent(path), posixpath.basename(path.partition("?")[0])
        # a new sweep has none: the bucket is the truth, so no stale local copy either
        data = read_bytes(self.folder, self.name) or b""
        with open(self.local, "wb") as f:
            f.write(data)

    def push(self) -> None:
        if not self.remote:
            return
        from results.files import write_bytes

        with open(self.local, "rb") as f:
            write_bytes(self.folder, self.name, f.read())


def trial_row(experiment: str, arch: str | None, method: str | None, trial_id: str) -> dict | None:
    """One Ray trial's trials-table row in ``experiment`` (any status), or None when it has none."""
    import pyarrow.parquet as pq

    from results import schema

    fs, path = schema.trial_file(experiment, "trials", arch=str(arch), method=str(method), trial_id=trial_id)
    try:
        rows = pq.read_table(path, filesystem=fs).to_pylist()
    except (FileNotFoundError, OSError):
        return None
    return rows[0] if rows else None


def tune_trials(experiment: str) -> dict[str, tuple[str, dict]] | None:
    """Tune's newest saved experiment state in ``experiment``: trial id -> (status, last result); None when
    there is none."""
    state = _tune_state(experiment)
    if state is None:
        return None
    out = {}
    for trial, metadata in state["trial_data"]:
        t, m = json.loads(trial), json.loads(metadata)
        last = m.get("last_result")
        out[t["trial_id"]] = (t.get("status", ""), last if isinstance(last, dict) else {})
    return out


def tune_trial_ids(experiment: str) -> set[str] | None:
    """Trial ids in Tune's newest experiment state file in ``experiment`` (None when there is none)."""
    trials = tune_trials(experiment)
    return None if trials is None else set(trials)


def _tune_state(experiment: str) -> dict | None:
    """The newest ``experiment_state-*.json`` Tune saved in ``experiment``, parsed, or None."""
    import pyarrow.fs as pafs

    from results.files import resolve

    fs, base = resolve(experiment)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    states = sorted(i.path for i in infos if posixpath.basename(i.path).startswith("experiment_state-")
                    and i.path.endswith(".json"))
    if not states:
        return None
    with fs.open_input_stream(states[-1]) as f:
        return json.loads(f.read())


def open_storage(path: str) -> optuna.storages.BaseStorage:
    """The experiment's Optuna storage: a journal file.

    Journal, not SQLite: it is append-only with a file lock that works across processes and on NFS-like
    shared folders without a database server, and optuna-dashboard opens it
    (``optuna-dashboard <experiment>/optuna.journal``).
    """
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
