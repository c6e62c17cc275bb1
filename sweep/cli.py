"""``python -m sweep run|resume|spaces``: the command line over sweep.driver (exit 2 on bad input, 130 on
Ctrl-C). The options live in sweep.options, Ray and resources in sweep.resources."""

from __future__ import annotations

import contextlib
import logging
import sys

from . import spaces as sp
from .driver import Interrupted, run_sweep
from .options import UsageError, build_parser

__all__ = ["main", "run_sweep", "UsageError", "build_parser"]


def main(argv: list[str] | None = None) -> int:
    """The exit code (2: bad input, 130: Ctrl-C); ``--help`` raises SystemExit(0). Callable in-process."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with progress_on_stdout():
        return _main(argv)


@contextlib.contextmanager
def progress_on_stdout():
    """sweep.progress (the live table) on the current stdout, for this command only."""
    progress = logging.getLogger("sweep.progress")
    handler = logging.StreamHandler(sys.stdout)
    saved = progress.level, progress.propagate
    progress.setLevel(logging.INFO)
    progress.propagate = False
    progress.addHandler(handler)
    try:
        yield
    finally:
        progress.removeHandler(handler)
        progress.setLevel(saved[0])
        progress.propagate = saved[1]


def _main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)  # --help exits here
        if args.command == "spaces":
            print(sp.describe_spaces())
            return 0
        from . import console

        with console.quiet(args.verbose):  # Ray's, Tune's and Optuna's logs to a file unless -v
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
