"""python -m trainables train ...: one trial without Ray.

Flags are generated from the TrialConfig fields (one --<key-with-dashes> per field). Bad input prints
"error: <field>: <message>" on stderr and exits 2 before any training starts; what needs no torch (the
config, the folders it will write) is checked before torch is imported, so a refusal answers at once.
Progress: one line per epoch on stderr (trainables.progress), every phase's; -q silences it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys

from vocabulary import config
from trainables.progress import duration

__all__ = ["main", "build_parser", "option_help", "check_paths", "free_fields", "resumed_config",
           "progress_on_stderr"]


def _parse_optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainables")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run one trial: dense -> sparsify -> project -> fine-tune")
    helps = config.field_help()
    for f in config.all_fields():
        flag = "--" + f.name.replace("_", "-")
        text = option_help(f, helps)
        if f.type == "bool":
            train.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = {"int": int, "float": float, "str": str, "int | None": _parse_optional(int),
                    "str | None": _parse_optional(str), "float | None": _parse_optional(float)}[f.type]
            train.add_argument(flag, dest=f.name, type=kind, default=None, help=text)
    train.add_argument("--json", action="store_true", help="print the trial summary as JSON on stdout")
    train.add_argument("--out", help="write the four Parquet tables under this folder")
    train.add_argument("--checkpoint-dir", help="keep the last checkpoint in this folder (one per epoch "
                                                "except the last, which ends the trial)")
    train.add_argument("--resume", help="resume from a checkpoint folder")
    train.add_argument("--dense-cache", help="a folder of shared dense models (and dense controls): a trial "
                                             "with the same dense recipe reuses the one trained before")
    train.add_argument("--trial-id", default="local", help="the trial's id in the results tables")
    loud = train.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="no progress lines (one per epoch, on stderr)")
    loud.add_argument("-v", "--verbose", action="store_true", help="also log the library's INFO messages")
    return parser


def option_help(f, helps: dict[str, str]) -> str:
    """A field's help: its comment in vocabulary/config.py, the allowed values, its default."""
    text = helps.get(f.name) or f.name.replace("_", " ")
    choices = config.CHOICES.get(f.name)
    if choices:
        text += f" (one of: {', '.join(choices)})"
    return f"{text} [default: {f.default!r}]".replace("%", "%%")


def _flat(args: argparse.Namespace) -> dict:
    owners = config.field_owners()
    flat = {k: v for k, v in vars(args).items() if k in owners and v is not None}
    if flat.get("data_dir") is not None:
        # a given option is never ignored: --data-dir means CIFAR-10 files unless --dataset names another folder
        # dataset (cifar100; a --dataset without one is refused by the config with exit 2), and the folder is
        # made absolute before anything reads it
        flat.setdefault("dataset", "cifar10")
        flat["data_dir"] = os.path.abspath(flat["data_dir"])
    return flat


def _keep_checkpoint(target: str | None):
    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if target and checkpoint_dir:
            tmp = target.rstrip("/") + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return report


def check_paths(args: argparse.Namespace) -> None:
    """The folders the run will write, checked before anything starts (ConfigError naming the option):
    writable, made if missing, and left as they were found."""
    from results.files import check_writable

    checkpoint_parent = os.path.dirname(os.path.abspath(args.checkpoint_dir)) if args.checkpoint_dir else None
    for field, path in (("out", args.out), ("checkpoint_dir", args.checkpoint_dir),
                        ("checkpoint_dir", checkpoint_parent), ("dense_cache", args.dense_cache)):
        if path is None:
            continue
        if field != "out" and "://" in path:
            raise config.ConfigError(field, f"{path}: a local folder is needed here, not a URI")
        try:
            check_writable(path)
        except (OSError, ValueError) as exc:
            raise config.ConfigError(field, f"cannot write to {path}: {exc}") from None
    if args.resume and not os.path.isdir(args.resume):
        raise config.ConfigError("resume_from", f"{args.resume} is not a folder")


def free_fields() -> set[str]:
    """The fields a resumed run may change: how or where it runs (NOT_HP), not what it computes (DENSE)."""
    return {f.name for f in config.all_fields() if not f.metadata.get("hyperparameter", True)
            and not f.metadata.get("dense")}


def resumed_config(folder: str, given: dict) -> config.TrialConfig:
    """--resume: the checkpoint's configuration, with the run options given now. A given option that
    contradicts the checkpoint is refused (the result would be labelled with it and computed without it)."""
    from trainables.checkpoint import CHECKPOINT_FILE, load_checkpoint

    path = os.path.join(folder, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise config.ConfigError("resume_from", f"{folder} holds no {CHECKPOINT_FILE} (a --checkpoint-dir folder is expected)")
    try:
        saved = load_checkpoint(path, "cpu")["config"]
        old = config.TrialConfig.from_dict({k: v for k, v in saved.items() if k in config.field_owners()}).to_dict()
    except Exception as exc:  # noqa: BLE001 - a truncated, foreign or older file: the user's input
        raise config.ConfigError("resume_from", f"cannot read the checkpoint {path}: {exc}") from None
    free = free_fields()
    new = config.TrialConfig.from_dict(given).to_dict()
    clash = [f"--{k.replace('_', '-')} {new[k]!r} (checkpoint: {old[k]!r})" for k in given
             if k not in free and new[k] != old[k]]
    if clash:
        raise config.ConfigError("resume_from", f"the checkpoint in {folder} is of another configuration: "
                            f"{', '.join(clash)}; leave these options out (they are read from the checkpoint); "
                            f"only {', '.join(sorted(free))} may change on resume")
    return config.TrialConfig.from_dict({**{k: v for k, v in old.items() if k not in free}, **given})


@contextlib.contextmanager
def progress_on_stderr(quiet: bool):
    """The per-epoch lines of trainables.progress on stderr (none with -q), for this command only."""
    logger = logging.getLogger("trainables.progress")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    saved = logger.level, logger.propagate
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _error(exc: Exception) -> int:
    field = getattr(exc, "field", "config")
    message = getattr(exc, "message", None) or str(exc)
    print(f"error: {field}: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:  # everything checkable without torch first: a refusal answers at once
        given = _flat(args)
        cfg = config.TrialConfig.from_dict(given)
        check_paths(args)
    except config.ConfigError as exc:
        return _error(exc)
    from trainables.data import DataError, load_splits
    from trainables.trial import run_trial

    with progress_on_stderr(args.quiet) as progress:
        try:
            if args.resume:
                cfg = resumed_config(args.resume, given)
            data = load_splits(cfg.data)
            store = None
            if args.dense_cache:
                from trainables.dense_store import FileDenseStore

                store = FileDenseStore(os.path.abspath(args.dense_cache))
            result = run_trial(cfg, data=data, report=_keep_checkpoint(args.checkpoint_dir),
                               resume_from=args.resume, trial_id=args.trial_id, dense_store=store)
        except (config.ConfigError, DataError) as exc:
            return _error(exc)
        s = result.summary
        progress.info("%s: final_val_acc %.4f  achieved_sparsity %.3f  %s", s["status"], s["final_val_acc"],
                      s["achieved_sparsity"], duration(s["wall_time_s"]))
    if args.out:
        result.write(args.out, trial_id=args.trial_id)
    if args.json:
        print(json.dumps(result.summary, default=str))
    return 0 if result.summary["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
