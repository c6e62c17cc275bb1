"""python -m trainables train ...: one trial without Ray.

Flags are generated from the TrialConfig fields (one --<key-with-dashes> per field). Bad input prints
"error: <field>: <message>" on stderr and exits 2 before any training starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys

from trainables import config as C


def _parse_optional(kind):
    def parse(text: str):
        return None if text.lower() in ("none", "") else kind(text)
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainables")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run one trial: dense -> sparsify -> project -> fine-tune")
    helps = C.field_help()
    for f in C.all_fields():
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
    train.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    return parser


def option_help(f, helps: dict[str, str]) -> str:
    """A field's help: its comment in trainables/config.py, the allowed values, its default."""
    text = helps.get(f.name) or f.name.replace("_", " ")
    choices = C.CHOICES.get(f.name)
    if choices:
        text += f" (one of: {', '.join(choices)})"
    return f"{text} [default: {f.default!r}]".replace("%", "%%")


def _flat(args: argparse.Namespace) -> dict:
    owners = C.field_owners()
    flat = {k: v for k, v in vars(args).items() if k in owners and v is not None}
    if flat.get("data_dir") is not None:
        # a given option is never ignored: --data-dir means CIFAR-10 files (a conflicting --dataset is refused
        # by the config with exit 2), and the folder is made absolute before anything reads it
        flat.setdefault("dataset", "cifar10")
        flat["data_dir"] = os.path.abspath(flat["data_dir"])
    return flat


def _keep_checkpoint(target: str | None):
    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        print(f"{metrics.get('phase')} epoch {metrics.get('epoch')} val_acc {metrics.get('val_acc', math.nan):.4f} "
              f"done={metrics.get('done')}", file=sys.stderr)
        if target and checkpoint_dir:
            tmp = target.rstrip("/") + ".tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    # imported late so `--help` does not pay for torch
    from trainables.data import DataError, load_splits
    from trainables.trial import run_trial
    try:
        cfg = C.TrialConfig.from_dict(_flat(args))
        if args.resume and not os.path.isdir(args.resume):
            raise C.ConfigError("resume_from", f"{args.resume} is not a folder")
        data = load_splits(cfg.data)
        store = None
        if args.dense_cache:
            from trainables.trial import FileDenseStore

            store = FileDenseStore(os.path.abspath(args.dense_cache))
        result = run_trial(cfg, data=data, report=_keep_checkpoint(args.checkpoint_dir),
                           resume_from=args.resume, trial_id=args.trial_id, dense_store=store)
    except (C.ConfigError, DataError) as exc:
        field = getattr(exc, "field", "config")
        message = getattr(exc, "message", None) or str(exc)
        print(f"error: {field}: {message}", file=sys.stderr)
        return 2
    if args.out:
        result.write(args.out, trial_id=args.trial_id)
    if args.json:
        print(json.dumps(result.summary, default=str))
    return 0 if result.summary["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
