"""``python -m sweep run|resume|spaces`` and the same as a Python API.

Public API (stable; the cluster tests call it with Ray already initialised)::

    run_sweep(argv: list[str]) -> str
        argv as on the command line, starting with "run" or "resume" (e.g. ["run", "--space", "admm", ...]);
        returns the experiment folder (absolute path or URI). Raises UsageError (option, message) on bad input
        before Ray trials start. Uses the running Ray instance when ray.is_initialized(); otherwise --local
        starts one here and no --local joins address="auto".

Experiment folder ``<storage>/<name>``: Tune's state, ``optuna.journal`` (one study per (arch, method)),
``results/`` (Parquet), ``dense/`` (shared dense models), ``sweep.json`` (the options; resume reads it).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import sys
from typing import Any, Callable

from trainables.config import ARCHS, DATASETS, ConfigError, TrialConfig, field_help, field_owners

from . import spaces as sp

log = logging.getLogger(__name__)

JOURNAL = "optuna.journal"
OPTIONS_FILE = "sweep.json"
SCHEDULERS = ("none", "asha")


class UsageError(ValueError):
    """Bad command-line input: ``option`` names the option, the message says what is allowed."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors become UsageError too (exit 2 via main)
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m sweep", description="Ray Tune sweeps of ADMM vs magnitude pruning, "
                                                     "searched by Optuna.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="start a sweep")
    run.add_argument("--space", default="admm", help="admm | baseline | compare | seed | a .toml/.yaml file")
    run.add_argument("--arch", default="mobilenet_v2", help=f"comma-separated, from {', '.join(ARCHS)}")
    run.add_argument("--dataset", default=None,
                     help=f"{' | '.join(DATASETS)}; default digits, or cifar10 when --data-dir is given")
    run.add_argument("--data-dir", default=None,
                     help="a folder in CIFAR-10's python layout (no download); implies --dataset cifar10")
    run.add_argument("--trials", type=int, default=8, help="Optuna configurations per (arch, method) study")
    run.add_argument("--seeds", type=int, default=1, help="seeds per configuration (mean told to Optuna)")
    helps = field_help()  # the trial options' help is their field's comment in trainables/config.py
    run.add_argument("--width", type=float, default=0.5, help=f"{helps['width']} [default: 0.5]")
    run.add_argument("--dense-epochs", type=int, default=4, help=f"{helps['dense_epochs']}: trained once per "
                     "(arch, seed, recipe) and shared by every trial that starts from it [default: 4]")
    run.add_argument("--sparsify-epochs", type=int, default=2, help=f"{helps['sparsify_epochs']} [default: 2]")
    run.add_argument("--finetune-epochs", type=int, default=2, help=f"{helps['finetune_epochs']} [default: 2]")
    from .searcher import SAMPLERS

    run.add_argument("--sampler", default="tpe", help=f"Optuna sampler, one of: {', '.join(SAMPLERS)} [default: tpe]")
    run.add_argument("--scheduler", default="none", help=f"trial scheduler, one of: {', '.join(SCHEDULERS)} "
                     "(asha: single-objective spaces with fixed epoch counts only) [default: none]")
    run.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from checkpoint")
    run.add_argument("--max-concurrent", type=int, default=0, help="0: as many as resources allow")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="fix any TrialConfig field, e.g. --set batch_size=64")
    add_cluster_options(run)
    run.add_argument("--name", default=None, help="experiment name (default: <space>-<timestamp>)")
    res = sub.add_parser("resume", help="continue an interrupted sweep, the way it ran (local or on the "
                                        "cluster, same resources) unless told otherwise")
    res.add_argument("name", help="the experiment's --name (a folder in --storage)")
    add_cluster_options(res, resume=True)
    sub.add_parser("spaces", help="list the built-in spaces and their ranges")
    return p


def add_cluster_options(p: argparse.ArgumentParser, resume: bool = False) -> None:
    """Where trials run. On resume every default is None: what is not given is what the sweep ran with."""
    was = " [default: as the sweep ran]" if resume else ""
    p.add_argument("--local", action="store_true", default=None if resume else False,
                   help="start Ray on this machine (else join the running cluster)" + was)
    if resume:
        p.add_argument("--cluster", dest="local", action="store_false", default=None,
                       help="join the running Ray cluster, also for a sweep that ran with --local")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="GPUs per trial, fractions allowed (0.25: four trials share a GPU)"
                   + (was if resume else " [default: 0.25 where there are GPUs, else 0]"))
    p.add_argument("--cpus-per-trial", type=float, default=None if resume else 1.0,
                   help="CPUs Ray reserves per trial" + (was if resume else " [default: 1]"))
    p.add_argument("--storage", default="./experiments", help="a path (made absolute) or s3:// gs:// URI")


# -- validation (no Ray) -------------------------------------------------------------------------------
def parse_set(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs, values parsed as YAML scalars (numbers, true/false, null, strings)."""
    import yaml

    owners = field_owners()
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq:
            raise UsageError("--set", f"{item!r} is not KEY=VALUE")
        if key not in owners:
            raise UsageError("--set", f"{key!r} is not a TrialConfig field (known: {', '.join(sorted(owners))})")
        out[key] = yaml.safe_load(raw)
    return out


def validate_run(args: argparse.Namespace) -> tuple[sp.Space, list[str], dict[str, Any]]:
    """Check every run option; return (space, archs, base flat config). Raises UsageError."""
    try:
        space = sp.load_space(args.space)
    except sp.SpaceError as e:
        raise UsageError("--space", str(e)) from None
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        raise UsageError("--arch", f"{','.join(bad) or args.arch!r} is not among {', '.join(ARCHS)}")
    if space.grid and space.archs:
        archs = list(space.archs)
    for opt, value, lo in (("--trials", args.trials, 1), ("--seeds", args.seeds, 1),
                           ("--max-failures", args.max_failures, 0), ("--max-concurrent", args.max_concurrent, 0)):
        if value < lo:
            raise UsageError(opt, f"{value} must be >= {lo}")
    from .searcher import SAMPLERS

    if args.sampler not in SAMPLERS:
        raise UsageError("--sampler", f"{args.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if args.scheduler not in SCHEDULERS:
        raise UsageError("--scheduler", f"{args.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if args.scheduler == "asha" and any(space.searches_sparsity(m) for m in space.methods):
        raise UsageError("--scheduler", "asha needs a single-objective space (sparsity fixed); this space "
                                        "searches sparsity (multi-objective)")
    base = base_config(args)
    fixed_by_set = parse_set(args.set)
    base.update(fixed_by_set)
    space = without_params(space, set(fixed_by_set))  # --set wins over the space: that key is not searched
    for arch in archs:
        for method in space.methods:
            for probe in probes(space, method, base, arch):
                try:
                    TrialConfig.from_dict(probe)
                except ConfigError as e:
                    raise UsageError(option_of(e.field, space, method, fixed_by_set), str(e)) from None
    if args.scheduler == "asha":
        asha_max_t(space, archs, base)  # raises UsageError when the space searches an epoch count
    if args.cpus_per_trial <= 0:
        raise UsageError("--cpus-per-trial", f"{args.cpus_per_trial} must be > 0")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UsageError("--gpus-per-trial", f"{args.gpus_per_trial} must be >= 0")
    return space, archs, base


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The flat config every trial of the sweep shares, from the run options (before --set)."""
    base = {"dataset": args.dataset or ("cifar10" if args.data_dir else "digits"), "width": args.width,
            "dense_epochs": args.dense_epochs, "sparsify_epochs": args.sparsify_epochs,
            "finetune_epochs": args.finetune_epochs}
    if args.data_dir:
        if args.dataset not in (None, "cifar10"):
            raise UsageError("--data-dir", f"a CIFAR-10 folder was given with --dataset {args.dataset}: drop one "
                                           "(--data-dir implies --dataset cifar10)")
        if not os.path.isdir(args.data_dir):
            raise UsageError("--data-dir", f"{args.data_dir} is not a folder (expected CIFAR-10's python layout, "
                                           "cifar-10-batches-py)")
        base["data_dir"] = os.path.abspath(args.data_dir)
    return base


MAX_PROBES = 4096


def probes(space: sp.Space, method: str, base: dict[str, Any], arch: str) -> list[dict[str, Any]]:
    """Every combination of the space's checkable values (range ends, choices, fixed values) over ``base``.

    Checking the combinations, not each value alone, catches values that are valid apart and invalid
    together (an ADMM interval too long for the phase's length). Capped at MAX_PROBES combinations.
    """
    import itertools

    params = space.params_for(method)
    names = list(params)
    out = []
    for values in itertools.product(*(sp.sample_values(params[n]) for n in names)):
        out.append({**dict(zip(names, values)), **base, "arch": arch, "method": method})
        if len(out) >= MAX_PROBES:
            break
    return out


def option_of(field: str, space: sp.Space, method: str, fixed_by_set: dict[str, Any]) -> str:
    """The command-line option a bad config field came from."""
    if field in fixed_by_set:
        return "--set"
    if field in space.params_for(method):
        return "--space"
    return f"--{field.replace('_', '-')}"


EPOCH_FIELDS = ("dense_epochs", "sparsify_epochs", "finetune_epochs")


def asha_max_t(space: sp.Space, archs: list[str], base: dict[str, Any]) -> int:
    """ASHA's max_t: the reports of one trial (sparsify + fine-tune epochs) from the RESOLVED config (base,
    --set and the space's fixed values); UsageError when the space searches an epoch count (trials would
    differ in length and ASHA would stop the long ones as if they lagged)."""
    lengths = set()
    for method in space.methods:
        params = space.params_for(method)
        searched = [k for k in EPOCH_FIELDS if k in params and params[k].kind != "fixed"]
        if searched:
            raise UsageError("--scheduler", f"asha needs trials of one length; the space searches {searched[0]}: "
                                            "fix it (--set) or use --scheduler none")
        probe = {**{k: d.value for k, d in params.items() if d.kind == "fixed"}, **base, "arch": archs[0],
                 "method": method}
        lengths.add(TrialConfig.from_dict(probe).control_epochs)
    if len(lengths) > 1:
        raise UsageError("--scheduler", f"asha needs trials of one length; the methods' trials run {sorted(lengths)} "
                                        "epochs")
    return max(lengths.pop(), 1)


def check_data(space: sp.Space, archs: list[str], base: dict[str, Any], fixed: set[str], splits) -> None:
    """Checks that need the data's size (the ADMM update count per phase), for every probe; UsageError."""
    from trainables.trial import check_trial

    for arch in archs:
        for method in space.methods:
            for probe in probes(space, method, base, arch):
                try:
                    check_trial(TrialConfig.from_dict(probe), splits)
                except ConfigError as e:
                    raise UsageError(option_of(e.field, space, method, dict.fromkeys(fixed)), str(e)) from None


def load_data(base: dict[str, Any], arch: str):
    """The sweep's dataset, loaded once in the driver; a DataError becomes a UsageError naming the option."""
    from trainables.data import DataError, load_splits

    try:
        return load_splits(TrialConfig.from_dict({**base, "arch": arch}).data)
    except DataError as e:
        raise UsageError(f"--{e.field.replace('_', '-')}", e.message) from None


def without_params(space: sp.Space, keys: set[str]) -> sp.Space:
    """The space minus parameters fixed elsewhere (--set)."""
    import dataclasses

    return dataclasses.replace(
        space, params={k: v for k, v in space.params.items() if k not in keys},
        method_params={m: {k: v for k, v in p.items() if k not in keys} for m, p in space.method_params.items()})


def experiment_path(storage: str, name: str) -> str:
    from trainables.schema import join

    return join(storage, name)


def exists(path: str) -> bool:
    import pyarrow.fs as pafs

    from trainables import schema

    fs, p = schema.resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


# -- Ray ---------------------------------------------------------------------------------------------
def init_ray(local: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    if local:
        # address="local": always a new instance here; plain ray.init() may join another Ray on this machine
        ray.init(address="local")
        return
    try:
        ray.init(address="auto")
    except ConnectionError:
        raise UsageError("--local", "no running Ray cluster to join: pass --local to start Ray on this "
                                    "machine, or start a cluster (ray up cluster.yaml / ray start --head)") from None


AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"  # where Ray's cluster launcher leaves it on the head


def check_resources(cpus: float, gpus: float, *, local: bool = True,
                    autoscaler_config: str = AUTOSCALER_CONFIG) -> None:
    """Impossible per-trial resources -> UsageError.

    Possible means: an alive node has them, or (on a cluster, not --local) a node type the autoscaler may
    start declares them. An autoscaling cluster at rest is a head with 0 CPUs and no workers, so alive
    nodes alone would reject every sweep. A node type without declared resources (Ray detects them when the
    node starts) is given the benefit of the doubt, with a warning.
    """
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    types = {} if local else autoscaler_node_types(os.path.expanduser(autoscaler_config))
    undeclared = [name for name, r in types.items() if r is None]
    if any(r is not None and r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in types.values()):
        log.warning("no node has %g CPU / %g GPU now: trials wait for the autoscaler to start one", cpus, gpus)
        return
    if undeclared:
        log.warning("no alive node has %g CPU / %g GPU; trusting the autoscaler's node types %s (resources "
                    "detected at start)", cpus, gpus, ", ".join(undeclared))
        return
    sizes = [*nodes, *(r for r in types.values() if r)]
    max_cpu = max((r.get("CPU", 0) for r in sizes), default=0)
    max_gpu = max((r.get("GPU", 0) for r in sizes), default=0)
    where = "the biggest node" + (" (alive or autoscalable)" if types else "")
    if cpus > max_cpu:
        raise UsageError("--cpus-per-trial", f"{cpus:g} CPUs per trial but {where} has {max_cpu:g}")
    raise UsageError("--gpus-per-trial", f"{gpus:g} GPUs per trial but {where} has {max_gpu:g}"
                     + (" (CPU only: pass --gpus-per-trial 0)" if max_gpu == 0 else ""))


def autoscaler_node_types(path: str) -> dict[str, dict | None]:
    """Node types the autoscaler may start (max_workers > 0): name -> declared resources, or None when the
    type declares none (detected at start). Empty when this is not a launcher-started head."""
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except OSError:
        return {}
    out: dict[str, dict | None] = {}
    for name, spec in (config.get("available_node_types") or {}).items():
        max_workers = int(spec.get("max_workers", config.get("max_workers", 0)) or 0)
        if name == config.get("head_node_type") or max_workers <= 0:
            continue
        out[name] = dict(spec["resources"]) if spec.get("resources") else None
    return out


GPU_SHARE = 0.25  # a CIFAR MobileNet trial uses a fraction of a modern GPU: pack 4 per GPU by default


def default_gpus(local: bool, autoscaler_config: str = AUTOSCALER_CONFIG) -> float:
    """--gpus-per-trial when not given: a quarter GPU where GPUs exist (alive, or an autoscalable GPU type
    on a launcher-started cluster), else 0 (CPU trials)."""
    import ray

    if ray.cluster_resources().get("GPU", 0) > 0:
        return GPU_SHARE
    if not local and any((r or {}).get("GPU", 0) > 0
                         for r in autoscaler_node_types(os.path.expanduser(autoscaler_config)).values()):
        return GPU_SHARE
    return 0.0


def check_storage(storage: str) -> str:
    try:
        from .storage import StorageError, check_storage as check
    except ImportError:  # the cluster engineer's module not there yet
        return storage if "://" in storage else os.path.abspath(storage)
    try:
        return check(storage)
    except StorageError as e:
        raise UsageError("--storage", str(e)) from None


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
    storage = args.storage if "://" in args.storage else os.path.abspath(args.storage)
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
    from trainables.schema import write_bytes

    write_bytes(experiment, OPTIONS_FILE, json.dumps(options, indent=1, sort_keys=True).encode())
    return launch(options, space, resume=False, write=write, splits=splits)


def resume(args: argparse.Namespace, write: Callable[[str], None]) -> str:
    from trainables.schema import read_bytes

    storage = args.storage if "://" in args.storage else os.path.abspath(args.storage)
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


def launch(options: dict, space: sp.Space, *, resume: bool, write: Callable[[str], None], splits=None) -> str:
    """Build the Tuner (or restore it), run it, print the summary; returns the experiment folder."""
    from ray import tune

    from .progress import LiveTable
    from .ray_tune import EndWriter, TrialContext, start_dense_store, sweep_trainable
    from .searcher import MultiStudySearcher, StudySpec

    storage, name = options["storage"], options["name"]
    experiment = experiment_path(storage, name)
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
    callbacks = [EndWriter(ctx), LiveTable(total=total)]
    if resume:
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True, resume_errored=True)
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
            from ray.tune.schedulers import ASHAScheduler

            # max_t: the reports of one trial (docs/ARCHITECTURE.md), from the resolved trial config
            scheduler = ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration",
                                      max_t=asha_max_t(space, options["archs"], base), grace_period=1)
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
    with interruptible() as interrupted:
        tuner.fit()
    del dense_store
    if interrupted.is_set():
        raise Interrupted(name, storage)
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
        from trainables import schema

        fs, base = schema.resolve(schema.table_dir(experiment, "trials"))
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    progress = logging.getLogger("sweep.progress")
    progress.setLevel(logging.INFO)
    progress.addHandler(logging.StreamHandler(sys.stdout))
    progress.propagate = False
    try:
        args = build_parser().parse_args(argv)  # --help exits here
        if args.command == "spaces":
            print(sp.describe_spaces())
            return 0
        run_sweep(argv, write=print)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as e:
        command = e.command if isinstance(e, Interrupted) else "python -m sweep resume NAME"
        print(f"\ninterrupted: the sweep stopped; finished trials are kept. Continue it with:\n  {command}",
              file=sys.stderr)
        return 130
    return 0
