"""The options of ``python -m sweep`` and their validation: bad input is a UsageError naming the option,
before Ray starts and before anything is written. No Ray here."""

from __future__ import annotations

import argparse
import os
from typing import Any

from vocabulary.config import (ARCHS, DATA_FOLDERS, DATASETS, METHODS, ConfigError, TrialConfig, field_help,
                               field_owners)
from vocabulary import registry
from vocabulary.registry import DEFAULT_REFERENCE

from . import spaces as sp
from .record import KEEP_MODELS, SAMPLERS, SCHEDULERS, SweepOptions

__all__ = ["UsageError", "build_parser", "add_cluster_options", "parse_set", "validate_run", "validate_resume",
           "check_reference", "check_trial_resources", "check_searched_params_act", "base_config", "probes",
           "option_of", "asha_max_t", "check_data", "load_data", "without_params", "experiment_path", "exists",
           "READ_BY_SETS", "MAX_PROBES", "EPOCH_FIELDS"]

DEFAULTS = SweepOptions()  # the run options' defaults are the record's (sweep/record.py)


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
    add_run_options(run)
    res = sub.add_parser("resume", help="continue an interrupted sweep, the way it ran (local or on the "
                                        "cluster, same resources) unless told otherwise")
    res.add_argument("name", help="the experiment's --name (a folder in --storage)")
    res.add_argument("--trials", type=int, default=None,
                     help="a longer search: this many MORE configurations per (arch, method) study, on the same "
                          "Optuna studies (the sampler sees every earlier trial; nothing finished runs again); "
                          "the new total is kept in sweep.json [default: finish the planned ones]")
    add_cluster_options(res, resume=True)
    con = sub.add_parser("confirm", help="run each method's chosen configuration (on validation, by the tuning "
                                         "stage) on fresh seeds; the report's answer then comes from them")
    con.add_argument("name", help="the experiment's --name (a folder in --storage)")
    con.add_argument("--seeds", type=int, required=True,
                     help="confirmation seeds per chosen configuration: the K seeds after every seed the tuning "
                          "used (recorded in sweep.json; a re-run finishes them, a larger K adds more)")
    add_cluster_options(con, resume=True)
    for command in (run, res, con):  # sweep.console
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show Ray's, Tune's and Optuna's logs here [default: in <experiment>/sweep.log]")
    sub.add_parser("spaces", help="list the built-in spaces and their ranges")
    return p


def add_run_options(run: argparse.ArgumentParser) -> None:
    """The options of ``python -m sweep run`` (the defaults of those sweep.json keeps are the record's)."""
    run.add_argument("--space", default=DEFAULTS.space, help="admm | baseline | compare | seed | a .toml/.yaml file")
    run.add_argument("--arch", default=None, help=f"comma-separated, from {', '.join(ARCHS)} [default: "
                     "mobilenet_v2; the seed space: all three]")
    run.add_argument("--dataset", default=None,
                     help=f"{' | '.join(DATASETS)}; default digits, or cifar10 when --data-dir is given")
    run.add_argument("--data-dir", default=None,
                     help=f"a folder in the dataset's python layout ({' or '.join(DATA_FOLDERS.values())} inside "
                          "it), read without a download; implies --dataset cifar10 unless --dataset is "
                          f"{' or '.join(DATA_FOLDERS)}")
    run.add_argument("--trials", type=int, default=DEFAULTS.trials, help="Optuna configurations per (arch, method) "
                     "study")
    run.add_argument("--seeds", type=int, default=DEFAULTS.seeds, help="seeds per configuration (mean told to Optuna)")
    helps = field_help()  # the trial options' help is their field's comment in vocabulary/config.py
    run.add_argument("--width", type=float, default=0.5, help=f"{helps['width']} [default: 0.5]")
    run.add_argument("--dense-epochs", type=int, default=4, help=f"{helps['dense_epochs']}: trained once per "
                     "(arch, seed, recipe) and shared by every trial that starts from it [default: 4]")
    run.add_argument("--sparsify-epochs", type=int, default=2, help=f"{helps['sparsify_epochs']} [default: 2]")
    run.add_argument("--finetune-epochs", type=int, default=2, help=f"{helps['finetune_epochs']} [default: 2]")
    run.add_argument("--sampler", default=DEFAULTS.sampler,
                     help=f"Optuna sampler, one of: {', '.join(SAMPLERS)} [default: {DEFAULTS.sampler}]")
    run.add_argument("--scheduler", default=DEFAULTS.scheduler, help=f"trial scheduler, one of: "
                     f"{', '.join(SCHEDULERS)} (asha: single-objective spaces with fixed epoch counts only) "
                     f"[default: {DEFAULTS.scheduler}]")
    run.add_argument("--keep-models", default=DEFAULTS.keep_models, help=f"final models kept, one of: "
                     f"{', '.join(KEEP_MODELS)} (chosen: each chosen configuration's seeds, the rest deleted when "
                     "the sweep ends; all: every ok trial's, about 15-20%% of a dense model's bytes each at "
                     f"sparsity 0.9) [default: {DEFAULTS.keep_models}]")
    run.add_argument("--reference", default=None, metavar="METHOD",
                     help=f"the method the report compares every other method against, one of: "
                          f"{', '.join(METHODS)}; given, it must be one of the space's methods (kept in sweep.json) "
                          f"[default: {DEFAULT_REFERENCE}]")
    run.add_argument("--max-failures", type=int, default=DEFAULTS.max_failures,
                     help="retries of a crashed trial from checkpoint")
    run.add_argument("--max-concurrent", type=int, default=DEFAULTS.max_concurrent,
                     help="0: as many as resources allow")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="fix any TrialConfig field, e.g. --set batch_size=64")
    add_cluster_options(run)
    run.add_argument("--name", default=None, help="experiment name (default: <space>-<timestamp>)")


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
    p.add_argument("--cpus-per-trial", type=float, default=None if resume else DEFAULTS.cpus_per_trial,
                   help="CPUs Ray reserves per trial" + (was if resume else f" [default: {DEFAULTS.cpus_per_trial:g}]"))
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
    if args.arch is None:  # a given --arch is never ignored, also not by a space that names its archs
        archs = list(space.archs) if space.grid and space.archs else ["mobilenet_v2"]
    else:
        archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        raise UsageError("--arch", f"{','.join(bad) or args.arch!r} is not among {', '.join(ARCHS)}")
    for opt, value, lo in (("--trials", args.trials, 1), ("--seeds", args.seeds, 1),
                           ("--max-failures", args.max_failures, 0), ("--max-concurrent", args.max_concurrent, 0)):
        if value < lo:
            raise UsageError(opt, f"{value} must be >= {lo}")
    if args.sampler not in SAMPLERS:
        raise UsageError("--sampler", f"{args.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if args.scheduler not in SCHEDULERS:
        raise UsageError("--scheduler", f"{args.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if args.keep_models not in KEEP_MODELS:
        raise UsageError("--keep-models", f"{args.keep_models!r} is not one of {', '.join(KEEP_MODELS)}")
    check_reference(args.reference, space)
    base = base_config(args)
    base["keep_model"] = args.keep_models != "none"
    fixed_by_set = parse_set(args.set)
    base.update(fixed_by_set)
    space = without_params(space, set(fixed_by_set))  # --set wins over the space: that key is not searched
    check_searched_params_act(space, base, fixed_by_set)
    if args.scheduler == "asha" and any(space.searches_sparsity(m) for m in space.methods):
        raise UsageError("--scheduler", "asha needs a single-objective space (sparsity fixed); this space "
                                        "searches sparsity (multi-objective)")
    for arch in archs:
        for method in space.methods:
            for probe in probes(space, method, base, arch):
                try:
                    TrialConfig.from_dict(probe)
                except ConfigError as e:
                    raise UsageError(option_of(e.field, space, method, fixed_by_set), str(e)) from None
    if args.scheduler == "asha":
        asha_max_t(space, archs, base)  # raises UsageError when the space searches an epoch count
    check_trial_resources(args.cpus_per_trial, args.gpus_per_trial)
    return space, archs, base


def check_reference(given: str | None, space: sp.Space) -> str:
    """The sweep's reference method: --reference, which must be a registered method and one of the space's
    methods (UsageError naming it), or DEFAULT_REFERENCE when not given (also for a space without it: the
    report may merge this sweep with one that ran the reference)."""
    if given is None:
        return DEFAULT_REFERENCE
    if given not in METHODS:
        raise UsageError("--reference", f"{given!r} is not a registered method (one of: {', '.join(METHODS)})")
    if given not in space.methods:
        raise UsageError("--reference", f"{given!r} is not among space {space.name!r}'s methods "
                                        f"({', '.join(space.methods)}): nothing to compare against")
    return given


def check_trial_resources(cpus: float | None, gpus: float | None) -> None:
    """--cpus-per-trial > 0 and --gpus-per-trial >= 0, where given (None: the default, or as the sweep ran)."""
    import math

    if cpus is not None and not (math.isfinite(cpus) and cpus > 0):
        raise UsageError("--cpus-per-trial", f"{cpus:g} must be a number > 0")
    if gpus is not None and not (math.isfinite(gpus) and gpus >= 0):
        raise UsageError("--gpus-per-trial", f"{gpus:g} must be a number >= 0")


def validate_resume(args: argparse.Namespace) -> None:
    """Check the resume and confirm options that need no Ray and no storage. Raises UsageError."""
    for opt, value in (("--trials", getattr(args, "trials", None)), ("--seeds", getattr(args, "seeds", None))):
        if value is not None and value < 1:
            raise UsageError(opt, f"{value} must be >= 1")
    check_trial_resources(args.cpus_per_trial, args.gpus_per_trial)


# The sparsity sets that read each field: searching a field that the set of a trial ignores draws values with
# no effect (duplicate configurations under different labels, and for sparsity a fake second objective).
READ_BY_SETS = {f: tuple(name for name, spec in registry.SETS.items() if f in spec.fields)
                for f in dict.fromkeys(f for spec in registry.SETS.values() for f in spec.fields)}


def check_searched_params_act(space: sp.Space, base: dict[str, Any], fixed_by_set: dict[str, Any]) -> None:
    """UsageError when the space searches a field that a sparsity set it can draw ignores (N:M and sparsity)."""
    default_set = TrialConfig().prune.sparsity_set
    for method in space.methods:
        params = space.params_for(method)
        dist = params.get("sparsity_set")
        sets = set(sp.sample_values(dist)) if dist else {base.get("sparsity_set", default_set)}
        for name, readers in READ_BY_SETS.items():
            d = params.get(name)
            ignoring = sorted(sets - set(readers))
            if d is None or d.kind == "fixed" or not ignoring:
                continue
            where = "--set" if "sparsity_set" in fixed_by_set else "the space" if dist else "the default"
            raise UsageError("--space", f"{name}: searched, but sparsity_set {ignoring[0]} (from {where}) ignores "
                                        f"it: every value draws the same trial; fix {name} or search "
                                        f"sparsity_set {' or '.join(readers)} only (one space per set)")


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The flat config every trial of the sweep shares, from the run options (before --set)."""
    base = {"dataset": args.dataset or ("cifar10" if args.data_dir else "digits"), "width": args.width,
            "dense_epochs": args.dense_epochs, "sparsify_epochs": args.sparsify_epochs,
            "finetune_epochs": args.finetune_epochs}
    if args.data_dir:
        if base["dataset"] not in DATA_FOLDERS:
            raise UsageError("--data-dir", f"a data folder was given with --dataset {args.dataset}: drop one "
                                           f"(--data-dir goes with --dataset {' or '.join(DATA_FOLDERS)})")
        if not os.path.isdir(args.data_dir):
            raise UsageError("--data-dir", f"{args.data_dir} is not a folder (expected {base['dataset']}'s python "
                                           f"layout, {DATA_FOLDERS[base['dataset']]} inside it)")
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
    from results.files import join

    return join(storage, name)


def exists(path: str) -> bool:
    import pyarrow.fs as pafs

    from results import files

    fs, p = files.resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound
