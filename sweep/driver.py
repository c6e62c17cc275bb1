"""Running a sweep: start (validated options -> sweep.json -> Tuner), resume, the Tuner's assembly, Ctrl-C, and
the final summary. Public API (stable; the cluster tests call it with Ray already initialised)::

    run_sweep(argv: list[str]) -> str
        argv as on the command line, starting with "run" or "resume" (e.g. ["run", "--space", "admm", ...]);
        returns the experiment folder (absolute path or URI). Raises UsageError (option, message) on bad input
        before Ray trials start. Uses the running Ray instance when ray.is_initialized(); otherwise --local
        starts one here and no --local joins address="auto". Raises Interrupted after a Ctrl-C.

Experiment folder ``<storage>/<name>``: Tune's state, ``optuna.journal`` (one study per (arch, method)),
``results/`` (Parquet), ``dense/`` (shared dense models and dense controls), ``sweep.json`` (the options;
resume reads it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
from typing import Any, Callable

from trainables.config import TrialConfig

from . import console, spaces as sp
from .options import (JOURNAL, OPTIONS_FILE, UsageError, asha_max_t, build_parser, check_data, exists,
                      experiment_path, load_data, parse_set, validate_resume, validate_run, without_params)
from .resources import check_resources, check_storage, check_storage_here, default_gpus, init_ray

log = logging.getLogger(__name__)


def run_sweep(argv: list[str], *, write: Callable[[str], None] | None = None) -> str:
    """Run or resume a sweep (see the module docstring); returns the experiment folder."""
    args = build_parser().parse_args(argv)
    write = write or (lambda s: log.info("%s", s))
    if args.command == "run":
        return start(args, write)
    if args.command == "resume":
        return resume(args, write)
    raise UsageError("command", "run_sweep takes run or resume")


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
    experiment = experiment_path(storage, name)
    options = {**vars(args), "storage": storage, "name": name, "gpus_per_trial": gpus, "archs": archs,
               "base": base, "optuna_storage": JOURNAL}
    from results.storage import write_bytes

    write_bytes(experiment, OPTIONS_FILE, json.dumps(options, indent=1, sort_keys=True).encode())
    return launch(options, space, resume=False, write=write, splits=splits)


def resume(args: argparse.Namespace, write: Callable[[str], None]) -> str:
    from results.storage import read_bytes

    validate_resume(args)
    storage = check_storage_here(args.storage)  # before Ray: an unreachable storage is a usage error at once
    experiment = experiment_path(storage, args.name)
    raw = read_bytes(experiment, OPTIONS_FILE)
    if raw is None:
        raise UsageError("name", f"no sweep {args.name!r} in {storage} (no {OPTIONS_FILE})")
    options = json.loads(raw)
    # what the resume command gives wins; what it does not give is what the sweep ran with
    for key in ("local", "gpus_per_trial", "cpus_per_trial"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    init_ray(bool(options.get("local")))
    check_resources(options["cpus_per_trial"], options["gpus_per_trial"], local=bool(options.get("local")))
    space = without_params(sp.load_space(options["space"]), set(parse_set(options["set"])))
    from .searcher import tune_trial_ids

    if tune_trial_ids(experiment) is None:
        # killed during start-up, before Tune saved any state: start Tune afresh on the same Optuna studies
        log.warning("no Tune state in %s yet: starting its trials afresh (the Optuna studies are kept)", experiment)
        return launch(options, space, resume=False, write=write)
    return launch(options, space, resume=True, write=write)


# How Tune resumes a sweep. Unfinished trials continue from their checkpoints. Errored trials are NOT re-run:
# a trial errors only after its max_failures retries, its failed row is written and Optuna was told FAIL, so a
# re-run that now succeeded would leave the tables (ok, chosen by the report) and Optuna (FAIL) disagreeing.
# One truth: the failure stands (DESIGN rule 15: a failed seed counts against its configuration).
RESUME = {"resume_unfinished": True, "resume_errored": False, "restart_errored": False}


def launch(options: dict, space: sp.Space, *, resume: bool, write: Callable[[str], None], splits=None) -> str:
    """Build the Tuner (or restore it), run it, print the summary; returns the experiment folder."""
    from ray import tune

    from .progress import LiveTable
    from .ray_tune import EndWriter, MissingCheckpoints, TrialContext, start_dense_store, sweep_trainable
    from .searcher import MultiStudySearcher, StudySpec

    console.claim()  # Optuna's and Tune's imports installed their own log handlers

    storage, name = options["storage"], options["name"]
    experiment = experiment_path(storage, name)
    console.attach(experiment, write)  # the quiet console's log file (python -m sweep without -v)
    base = options["base"]
    if splits is None:
        splits = load_data(base, options["archs"][0])  # once per sweep
    actor_name = f"dense-store-{name}"
    # the handle must live as long as the sweep: a non-detached actor dies with its last handle
    dense_store = start_dense_store(actor_name, experiment)  # dense/builds.json: its build counts
    ctx = TrialContext(experiment=experiment, name=name, space=space.name, dense_actor=actor_name)
    trainable = tune.with_resources(tune.with_parameters(sweep_trainable, data=splits, context=ctx),
                                    {"cpu": options["cpus_per_trial"], "gpu": options["gpus_per_trial"]})
    total = len(options["archs"]) * len(space.methods) * (1 if space.grid else options["trials"]) * options["seeds"]
    callbacks = [MissingCheckpoints(), EndWriter(ctx), LiveTable(total=total)]
    if resume:
        tuner = tune.Tuner.restore(experiment, trainable, **RESUME)
    else:
        studies = [StudySpec(f"{arch}-{m}", {**base, "arch": arch, "method": m},
                             functools.partial(sp.suggest, space=space, method=m),
                             ("final_val_acc", "achieved_sparsity") if space.searches_sparsity(m)
                             else ("final_val_acc",), study_attrs(space, arch, m, base))
                   for arch in options["archs"] for m in space.methods]
        trials = 1 if space.grid else options["trials"]
        searcher = MultiStudySearcher(experiment_path(experiment, JOURNAL), studies, trials=trials,
                                      seeds=options["seeds"], sampler=options["sampler"],
                                      max_concurrent=options["max_concurrent"])
        searcher.reconcile(set())  # a new Tune run knows no trial: seeds handed out before (if any) run again
        scheduler = None
        if options["scheduler"] == "asha":
            from .scheduler import ConfigurationASHA

            # rungs per study, a configuration's seeds decided together, on projected_val_acc (DESIGN rule 14);
            # max_t: the reports of one trial (docs/ARCHITECTURE.md), from the resolved trial config
            scheduler = ConfigurationASHA(max_t=asha_max_t(space, options["archs"], base), grace_period=1,
                                          seeds=options["seeds"], experiment=experiment)
        total = len(studies) * trials * options["seeds"]
        tuner = tune.Tuner(
            trainable,
            # reuse_actors: every trial asks for the same resources, and a fresh worker process per trial
            # (torch import, cold start) cost ~5 s per trial here (python -m sweep.bench: 0.65 -> 0.88 of
            # the sweep's wall time inside trials); run_trial reseeds and sets threads on each trial
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=total,
                                        reuse_actors=True,
                                        trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                storage_path=storage, name=name, callbacks=callbacks, verbose=0,
                failure_config=tune.FailureConfig(max_failures=options["max_failures"]),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    with interruptible() as interrupted, console.streams():
        tuner.fit()
    del dense_store
    if interrupted.is_set():
        raise Interrupted(name, storage)
    if options.get("keep_models", "all") == "chosen":
        from .keep import keep_chosen_models

        kept, deleted = keep_chosen_models(experiment)
        write(f"models: kept the chosen configurations' {kept} (--keep-models chosen), deleted {deleted} others")
    write(summarize(experiment))
    return experiment


def study_attrs(space: sp.Space, arch: str, method: str, base: dict[str, Any]) -> dict[str, Any]:
    """What a study is, as Optuna user attributes (optuna-dashboard shows them): the space and its searched
    ranges, arch, method, and the dense recipe every trial of the study starts from."""
    from trainables.config import dense_fields

    cfg = TrialConfig.from_dict({**base, "arch": arch, "method": method})
    flat = cfg.to_dict()
    return {"space": space.name, "space_description": space.description, "arch": arch, "method": method,
            "searched": {k: d.describe() for k, d in space.params_for(method).items()},
            "dense_recipe": {k: flat[k] for k in dense_fields() if k not in ("seed",)},
            "epochs": {"dense": cfg.dense.dense_epochs, "sparsify": cfg.train.sparsify_epochs,
                       "finetune": cfg.train.finetune_epochs}}


class Interrupted(Exception):
    """The sweep was stopped by Ctrl-C after Tune saved its state; ``command`` continues it."""

    def __init__(self, name: str, storage: str):
        default = os.path.abspath("./experiments")
        where = "" if storage == default else f" --storage {storage}"
        self.command = f"python -m sweep resume {name}{where}"
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


def summarize(experiment: str) -> str:
    """Final table: per study, trials by status and the best final val accuracy; where the results are."""
    import pandas as pd

    try:
        from results import schema, storage

        fs, base = storage.resolve(schema.table_dir(experiment, "trials"))
        trials = pd.read_parquet(base, filesystem=fs)
    except (FileNotFoundError, OSError, ValueError):
        return f"no trial results in {experiment}"
    from .outcome import STATUSES

    lines = [f"{'study':32} " + " ".join(f"{s:>8}" for s in STATUSES) + f" {'best final_val_acc':>20}"]
    trials["study"] = trials["study"].fillna("")
    for study, g in trials.groupby("study"):
        best = g.loc[g["status"] == "ok", "final_val_acc"].max()
        n = g["status"].value_counts()
        lines.append(f"{study:32} " + " ".join(f"{n.get(s, 0):8d}" for s in STATUSES)
                     + f" {best if not (isinstance(best, float) and math.isnan(best)) else float('nan'):20.4f}")
    lines.append(f"results: {experiment_path(experiment, 'results')}")
    if "://" in experiment:
        lines.append(f"report:  copy {experiment.partition('?')[0]} to a local folder (aws s3 sync / gsutil rsync), "
                     "then python -m analysis report FOLDER")
    else:
        lines.append(f"report:  python -m analysis report {experiment}")
    return "\n".join(lines)
