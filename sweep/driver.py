"""Running a sweep: start (validated options -> sweep.json -> Tuner), resume, the Tuner's assembly, Ctrl-C, and
the final summary. Public API (stable; the cluster tests call it with Ray already initialised)::

    run_sweep(argv: list[str]) -> str
        argv as on the command line, starting with "run", "resume" or "confirm" (e.g. ["run", "--space", ...]);
        returns the experiment folder (absolute path or URI). Raises UsageError (option, message) on bad input
        before Ray trials start. Uses the running Ray instance when ray.is_initialized(); otherwise --local
        starts one here and no --local joins address="auto". Raises Interrupted after a Ctrl-C.

Experiment folder ``<storage>/<name>``: Tune's state, ``optuna.journal`` (one study per (arch, method)),
``results/`` (Parquet), ``dense/`` (shared dense models and dense controls), ``sweep.json`` (the options, a
:class:`sweep.record.SweepOptions`; resume and confirm read it). ``resume --trials N`` (a longer search) runs a
fresh Tuner whose state lives in ``extend-<k>/`` (sweep.json ``tune_dir``: where a later plain resume restores
Tune from); ``confirm`` runs in ``confirm/`` (sweep.confirm).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import math
import os
from typing import Any, Callable, Mapping

from vocabulary.config import TrialConfig
from vocabulary.registry import SAMPLER_STARTUP

from . import console, record, spaces as sp
from .options import (UsageError, asha_max_t, build_parser, check_data, check_reference, exists, experiment_path,
                      load_data, parse_set, validate_resume, validate_run, without_params)
from .record import JOURNAL, OPTIONS_FILE, SweepOptions, SweepOptionsError
from .resources import check_resources, check_storage, check_storage_here, default_gpus, init_ray

__all__ = ["run_sweep", "start", "resume", "read_options", "write_options", "with_overrides", "extended",
           "study_name", "configurations_ended", "finishes_longer_search", "tune_folder", "RESUME", "Run", "prepare",
           "run_config", "fit", "launch", "new_tuner", "finish",
           "study_attrs", "Interrupted", "interruptible", "trial_dirname", "summarize"]

log = logging.getLogger(__name__)


def run_sweep(argv: list[str], *, write: Callable[[str], None] | None = None) -> str:
    """Run or resume a sweep (see the module docstring); returns the experiment folder."""
    args = build_parser().parse_args(argv)
    write = write or (lambda s: log.info("%s", s))
    if args.command == "run":
        return start(args, write)
    if args.command == "resume":
        return resume(args, write)
    if args.command == "confirm":
        from .confirm import confirm

        return confirm(args, write)
    raise UsageError("command", "run_sweep takes run, resume or confirm")


def start(args: argparse.Namespace, write: Callable[[str], None]) -> str:
    import time

    space, archs, base = validate_run(args)
    storage = check_storage_here(args.storage)  # before Ray, data or anything written: a usage error at once
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if exists(experiment_path(storage, name)):
        raise UsageError("--name", f"experiment {name!r} already exists in {storage}: use "
                                   f"`python -m sweep resume {name}` or another --name (nothing overwritten)")
    splits = load_data(base, archs[0])  # once per sweep, before Ray: a bad folder or size is a usage error
    check_data(space, archs, base, set(parse_set(args.set)), splits)
    init_ray(args.local)
    gpus = args.gpus_per_trial if args.gpus_per_trial is not None else default_gpus(args.local)
    check_resources(args.cpus_per_trial, gpus, local=args.local)
    storage = check_storage(storage)
    options = SweepOptions.from_dict({
        "name": name, "storage": storage, "space": args.space, "archs": archs, "base": base, "set": args.set,
        "trials": args.trials, "seeds": args.seeds, "sampler": args.sampler, "scheduler": args.scheduler,
        "keep_models": args.keep_models, "max_failures": args.max_failures, "max_concurrent": args.max_concurrent,
        "local": args.local, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": gpus,
        "optuna_storage": JOURNAL, "reference": check_reference(args.reference, space),
        "grid": space.grid, "sampler_startup_trials": SAMPLER_STARTUP[args.sampler]})
    write_options(experiment_path(storage, name), options)
    return launch(options, space, resume=False, write=write, splits=splits)


def read_options(args: argparse.Namespace) -> tuple[str, SweepOptions]:
    """(experiment folder, its sweep.json) of the sweep ``args.name`` in ``args.storage``; UsageError naming
    NAME when there is none or it cannot be read. Before Ray: an unreachable storage is a usage error at once."""
    storage = check_storage_here(args.storage)
    experiment = experiment_path(storage, args.name)
    try:
        options = record.read(experiment)
    except SweepOptionsError as e:
        raise UsageError("NAME", f"{args.name!r}'s {OPTIONS_FILE} cannot be read: {e}") from None
    if options is None:
        raise UsageError("NAME", f"no sweep {args.name!r} in {storage} (no {OPTIONS_FILE})")
    return experiment, options


def write_options(experiment: str, options: SweepOptions) -> None:
    """sweep.json, atomically (sweep.record.write)."""
    record.write(experiment, options)


def with_overrides(options: SweepOptions, args: argparse.Namespace) -> SweepOptions:
    """What the command gives wins; what it does not give is what the sweep ran with (not written back)."""
    given = {key: getattr(args, key) for key in ("local", "gpus_per_trial", "cpus_per_trial")}
    return dataclasses.replace(options, **{key: value for key, value in given.items() if value is not None})


def extended(options: SweepOptions, space: sp.Space, more: int) -> SweepOptions:
    """The options of a longer search: ``more`` configurations per study on top of the planned total, run by a
    fresh Tuner in its own folder (``tune_dir``: extend-1, extend-2, ...). UsageError for a grid space."""
    if space.grid:
        raise UsageError("--trials", f"space {space.name!r} is a grid (one configuration per study): there is "
                                     "nothing more to search")
    k = int((options.tune_dir or "extend-0").rpartition("-")[2]) + 1
    return dataclasses.replace(options, trials=options.trials + more, tune_dir=f"extend-{k}", extend_trials=more)


def study_name(arch: str, method: str) -> str:
    """The Optuna study of one (arch, method) of a sweep."""
    return f"{arch}-{method}"


def configurations_ended(experiment: str, options: SweepOptions, space: sp.Space) -> dict[str, int]:
    """study -> how many of its configurations ended (every seed told: COMPLETE, FAIL or PRUNED), read from
    the Optuna journal, the searcher's truth; 0 for a study (or a journal) not created yet. Writes nothing."""
    import optuna

    from .searcher import JournalMirror, open_storage

    names = [study_name(arch, m) for arch in options.archs for m in space.methods]
    path = experiment_path(experiment, options.optuna_storage)
    if not exists(path):
        return dict.fromkeys(names, 0)
    storage = open_storage(JournalMirror(path).local)
    known = set(optuna.get_all_study_names(storage))
    return {name: sum(t.state.is_finished() for t in optuna.load_study(study_name=name, storage=storage)
                      .get_trials(deepcopy=False)) if name in known else 0 for name in names}


def finishes_longer_search(experiment: str, options: SweepOptions, space: sp.Space, more: int, name: str) -> bool:
    """Whether ``resume NAME --trials more`` finishes an interrupted longer search instead of starting one.

    The sweep's last run is unfinished when a study has fewer ended configurations than sweep.json's total.
    If that run is the longer search of this same command (``resume NAME --trials more``, killed), re-running
    the command finishes it (True; its trials continue from their checkpoints) rather than adding ``more`` on
    top. Any other unfinished run is a UsageError naming --trials (run a plain resume first); none: False."""
    planned = 1 if space.grid else options.trials
    short = [(study, ended) for study, ended in configurations_ended(experiment, options, space).items()
             if ended < planned]
    if not short:
        return False
    if options.tune_dir and options.extend_trials == more:
        return True
    what = (f"the longer search of an earlier `resume {name} --trials {options.extend_trials}`"
            if options.tune_dir and options.extend_trials else "the sweep's last run")
    study, ended = short[0]
    raise UsageError("--trials", f"{what} is unfinished ({study}: {ended} of {planned} configurations ended): "
                                 f"run `python -m sweep resume {name}` first to finish it (its trials continue "
                                 f"from their checkpoints), then `resume {name} --trials {more}` for more")


def tune_folder(experiment: str, options: SweepOptions) -> str:
    """Where Tune's state of the sweep's current run lives: the experiment folder, or its longer search's."""
    return experiment_path(experiment, options.tune_dir) if options.tune_dir else experiment


def resume(args: argparse.Namespace, write: Callable[[str], None]) -> str:
    validate_resume(args)
    experiment, options = read_options(args)
    space = without_params(sp.load_space(options.space), set(parse_set(list(options.set))))
    longer = None
    if args.trials is not None:
        longer = extended(options, space, args.trials)  # UsageError for a grid
        if finishes_longer_search(experiment, options, space, args.trials, args.name):
            write(f"finishing the interrupted longer search of `resume {args.name} --trials {args.trials}` "
                  f"({options.trials} configurations per study, Tune state in {options.tune_dir}/): its trials "
                  f"continue from their checkpoints and no more are added; give --trials {args.trials} again "
                  "afterwards for more")
            longer = None
    run_options = with_overrides(longer or options, args)
    init_ray(run_options.local)
    check_resources(run_options.cpus_per_trial, run_options.gpus_per_trial, local=run_options.local)
    if longer is not None:
        # persisted before any trial: a killed longer search continues with a plain resume (or the same
        # command), to the new total
        write_options(experiment, longer)
        write(f"a longer search: {longer.trials} configurations per study (Tune state in {longer.tune_dir}/)")
        return launch(run_options, space, resume=False, write=write)
    options = run_options
    from .searcher import tune_trial_ids

    if tune_trial_ids(tune_folder(experiment, options)) is None:
        # killed during start-up, before Tune saved any state: start Tune afresh on the same Optuna studies
        log.warning("no Tune state in %s yet: starting its trials afresh (the Optuna studies are kept)", experiment)
        return launch(options, space, resume=False, write=write)
    return launch(options, space, resume=True, write=write)


# How Tune resumes a sweep. Unfinished trials continue from their checkpoints. Errored trials are NOT re-run:
# a trial errors only after its max_failures retries, its failed row is written and Optuna was told FAIL, so a
# re-run that now succeeded would leave the tables (ok, chosen by the report) and Optuna (FAIL) disagreeing.
# One truth: the failure stands (DESIGN rule 15: a failed seed counts against its configuration).
RESUME = {"resume_unfinished": True, "resume_errored": False, "restart_errored": False}


@dataclasses.dataclass
class Run:
    """What every Tune run of a sweep shares (its trials, a longer search's, a confirmation's)."""

    experiment: str
    trainable: Any  # the sweep trainable with its data, context and resources
    context: Any  # sweep.ray_tune.TrialContext
    dense_store: Any  # the DenseStoreActor's handle: it must live as long as the run


def prepare(options: SweepOptions, space: sp.Space, write: Callable[[str], None], splits=None) -> Run:
    """The log file, the data (once), the dense store and the trainable of a sweep's Tune run."""
    from ray import tune

    from .ray_tune import TrialContext, start_dense_store, sweep_trainable

    console.claim()  # Optuna's and Tune's imports installed their own log handlers
    name = options.name
    experiment = experiment_path(options.storage, name)
    console.attach(experiment, write)  # the quiet console's log file (python -m sweep without -v)
    if splits is None:
        splits = load_data(options.base, options.archs[0])  # once per sweep
    actor_name = f"dense-store-{name}"
    # the handle must live as long as the sweep: a non-detached actor dies with its last handle
    dense_store = start_dense_store(actor_name, experiment)  # dense/builds.json: its build counts
    ctx = TrialContext(experiment=experiment, name=name, space=space.name, dense_actor=actor_name)
    trainable = tune.with_resources(tune.with_parameters(sweep_trainable, data=splits, context=ctx),
                                    {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
    return Run(experiment, trainable, ctx, dense_store)


def run_config(options: SweepOptions, run: Run, callbacks: list, *, storage_path: str, name: str):
    """Tune's RunConfig of a sweep's run (its folder: storage_path/name)."""
    from ray import tune

    return tune.RunConfig(storage_path=storage_path, name=name, callbacks=callbacks, verbose=0,
                          failure_config=tune.FailureConfig(max_failures=options.max_failures),
                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1))


def fit(tuner, options: SweepOptions, again: str = "") -> None:
    """Run the Tuner; Interrupted after a Ctrl-C (``again``: the command that continues it, default resume)."""
    with interruptible() as interrupted, console.streams():
        tuner.fit()
    if interrupted.is_set():
        raise Interrupted(options.name, options.storage, again)


def launch(options: SweepOptions, space: sp.Space, *, resume: bool, write: Callable[[str], None], splits=None) -> str:
    """Build the Tuner (or restore it), run it, print the summary; returns the experiment folder."""
    from ray import tune

    run = prepare(options, space, write, splits)
    total = len(options.archs) * len(space.methods) * (1 if space.grid else options.trials) * options.seeds
    folder = tune_folder(run.experiment, options)
    if resume:  # Tune restores its callbacks (tuner.pkl) and our searcher (from the Optuna storage)
        tuner = tune.Tuner.restore(folder, run.trainable, **RESUME)
    else:
        tuner = new_tuner(options, space, run, folder, total)
    fit(tuner, options)
    del run
    finish(experiment_path(options.storage, options.name), options, write)
    return experiment_path(options.storage, options.name)


def new_tuner(options: SweepOptions, space: sp.Space, run: Run, folder: str, total: int):
    """A fresh Tuner over the sweep's Optuna studies (a new sweep, a longer search, or a resume of a run
    killed before Tune saved its state), with its Tune state in ``folder``."""
    from ray import tune

    from .progress import LiveTable
    from .ray_tune import EndWriter, MissingCheckpoints
    from .searcher import MultiStudySearcher, StudySpec

    base, experiment = options.base, run.experiment
    studies = [StudySpec(study_name(arch, m), {**base, "arch": arch, "method": m},
                         functools.partial(sp.suggest, space=space, method=m),
                         ("final_val_acc", "achieved_sparsity") if space.searches_sparsity(m)
                         else ("final_val_acc",), study_attrs(space, arch, m, base))
               for arch in options.archs for m in space.methods]
    trials = 1 if space.grid else options.trials
    searcher = MultiStudySearcher(experiment_path(experiment, JOURNAL), studies, trials=trials,
                                  seeds=options.seeds, sampler=options.sampler,
                                  max_concurrent=options.max_concurrent, tune_dir=folder)
    searcher.reconcile(set())  # a new Tune run knows no trial: seeds handed out before (if any) run again
    # a longer search: the seeds that ended before are not this Tune run's (the live table's ETA)
    callbacks = [MissingCheckpoints(), EndWriter(run.context), LiveTable(total=max(total - searcher.seeds_ended(), 0))]
    scheduler = None
    if options.scheduler == "asha":
        from .scheduler import ConfigurationASHA

        # rungs per study, a configuration's seeds decided together, on projected_val_acc (DESIGN rule 14);
        # max_t: the reports of one trial (docs/ARCHITECTURE.md), from the resolved trial config
        scheduler = ConfigurationASHA(max_t=asha_max_t(space, list(options.archs), base), grace_period=1,
                                      seeds=options.seeds, experiment=experiment)
    # the sweep's first run in the experiment folder, a longer search's in its tune_dir inside it
    where = ({"storage_path": experiment, "name": options.tune_dir} if options.tune_dir
             else {"storage_path": options.storage, "name": options.name})
    return tune.Tuner(
        run.trainable,
        # reuse_actors: every trial asks for the same resources, and a fresh worker process per trial
        # (torch import, cold start) cost ~5 s per trial here (python -m bench.sweep: 0.65 -> 0.88 of
        # the sweep's wall time inside trials); run_trial reseeds and sets threads on each trial
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=len(studies) * trials * options.seeds, reuse_actors=True,
                                    trial_dirname_creator=trial_dirname),
        run_config=run_config(options, run, callbacks, **where))


def finish(experiment: str, options: SweepOptions, write: Callable[[str], None]) -> None:
    """After a sweep or a confirmation: keep the chosen models (--keep-models chosen), print the summary."""
    if options.keep_models == "chosen":
        from .keep import keep_chosen_models

        kept, deleted = keep_chosen_models(experiment)
        write(f"models: kept the chosen configurations' {kept} (--keep-models chosen), deleted {deleted} others")
    write(summarize(experiment))


def study_attrs(space: sp.Space, arch: str, method: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """What a study is, as Optuna user attributes (optuna-dashboard shows them): the space and its searched
    ranges, arch, method, and the dense recipe every trial of the study starts from."""
    from vocabulary.config import dense_fields

    cfg = TrialConfig.from_dict({**base, "arch": arch, "method": method})
    flat = cfg.to_dict()
    return {"space": space.name, "space_description": space.description, "arch": arch, "method": method,
            "searched": {k: d.describe() for k, d in space.params_for(method).items()},
            "dense_recipe": {k: flat[k] for k in dense_fields() if k not in ("seed",)},
            "epochs": {"dense": cfg.dense.dense_epochs, "sparsify": cfg.train.sparsify_epochs,
                       "finetune": cfg.train.finetune_epochs}}


class Interrupted(Exception):
    """The sweep was stopped by Ctrl-C after Tune saved its state; ``command`` continues it."""

    def __init__(self, name: str, storage: str, again: str = ""):
        default = os.path.abspath("./experiments")
        where = "" if storage == default else f" --storage {storage}"
        self.command = f"python -m sweep {again or f'resume {name}'}{where}"
        super().__init__(self.command)


class _HideTuneRestoreHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()  # ours is `python -m sweep resume NAME`


@contextlib.contextmanager
def interruptible():
    """Ctrl-C stops the sweep cleanly: the first one asks Tune to stop and save its state (through Tune's
    SIGUSR1 handler), a second one interrupts at once. Yields an Event that is set when it was interrupted.
    Only in the main thread (signals cannot be handled elsewhere)."""
    import signal
    import threading

    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def on_sigint(sig, frame):
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's own graceful stop: checkpoint, then fit() returns

    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT is ours; Tune keeps SIGUSR1
    previous = signal.signal(signal.SIGINT, on_sigint)
    hint = _HideTuneRestoreHint()
    logging.getLogger("ray.tune.tune").addFilter(hint)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)
        logging.getLogger("ray.tune.tune").removeFilter(hint)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env


def trial_dirname(trial) -> str:
    """Short trial folder names (Tune's default packs every config key into the name)."""
    c = trial.config
    return f"{c.get('_study', 'trial')}-{c.get('_optuna_trial', 0)}-s{c.get('seed', 0)}-{trial.trial_id}"


def _chosen_per_study(experiment: str) -> dict[str, tuple[int, float]]:
    """study -> (complete configurations, the best one's mean final_val_acc over its seeds): the shared rule
    (results.selection, DESIGN rule 15), which is also what Optuna was told; tuning rows only."""
    from analysis.load import ExperimentError, sweep_trials
    from analysis.tables import config_summary

    try:
        summary = config_summary(sweep_trials(experiment))
    except (ExperimentError, OSError):
        return {}
    out = {}
    for (arch, method), g in summary.groupby(["arch", "method"]):
        complete = g[g["state"] == "complete"]
        out[study_name(arch, method)] = (len(complete), float(complete["final_val_acc_mean"].max())
                                   if len(complete) else math.nan)
    return out


def summarize(experiment: str) -> str:
    """Final table: per study, trials by status and the best final val accuracy; where the results are."""
    import pandas as pd

    try:
        from results import files, schema

        fs, base = files.resolve(schema.table_dir(experiment, "trials"))
        trials = pd.read_parquet(base, filesystem=fs)
    except (FileNotFoundError, OSError, ValueError):
        return f"no trial results in {experiment}"
    from .outcome import STATUSES

    trials["study"] = trials["study"].fillna("").astype(str)
    # confirmation trials (python -m sweep confirm) in their own line per study: they are not the search's
    confirm = trials.reindex(columns=["stage"])["stage"].eq(schema.CONFIRMATION)
    trials.loc[confirm, "study"] = trials.loc[confirm, "study"] + " (confirmation)"
    width = max([32, *(len(s) for s in trials["study"])])
    chosen = _chosen_per_study(experiment)
    lines = [f"{'study':{width}} " + " ".join(f"{s:>8}" for s in STATUSES)
             + f" {'complete configs':>16} {'chosen final_val_acc':>20}"]
    for study, g in trials.groupby("study"):
        n = g["status"].value_counts()
        complete, best = chosen.get(study, (0, math.nan))
        lines.append(f"{study:{width}} " + " ".join(f"{n.get(s, 0):8d}" for s in STATUSES)
                     + (f" {complete:16d} {best:20.4f}" if study in chosen else f" {'-':>16} {'-':>20}"))
    lines.append("chosen: the best configuration whose every seed finished ok, by its mean over its seeds "
                 "(results/selection.py)")
    lines.append(f"results: {experiment_path(experiment, 'results')}")
    if "://" in experiment:
        lines.append(f"report:  copy {experiment.partition('?')[0]} to a local folder (aws s3 sync / gsutil rsync), "
                     "then python -m analysis report FOLDER")
    else:
        lines.append(f"report:  python -m analysis report {experiment}")
    return "\n".join(lines)
