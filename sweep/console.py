"""The sweep's console (issue 16): by default ``python -m sweep run|resume`` prints our lines only: what starts,
the live table, cautions (our WARNING records, trial errors with the path to their full log), the final summary
and where the results and the report are. Ray's, Tune's and Optuna's logs, Python warnings, Tune's own prints
(its configuration box, the TensorBoard hint) and the trials' forwarded output go to a log file:
``<experiment>/sweep.log``, or ``<tmp>/prunesweep-logs/<name>.log`` when the experiment is remote.
``-v`` leaves all of them on the console, as Ray prints them.

How: the third-party loggers (``THIRD_PARTY``) get one handler, a :class:`LogSink` that keeps lines in memory
until the experiment folder is known (``attach``), then appends to the file; while Tune runs, ``streams()``
sends ``sys.stdout``/``sys.stderr`` (Tune's prints, Ray's printer of worker output) to the same sink. Our own
console handlers were made before that and keep the real streams.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from typing import Callable, Iterator

__all__ = ["quiet", "claim", "attach", "streams", "log_path", "LogSink", "LOG_FILE", "THIRD_PARTY"]

LOG_FILE = "sweep.log"
# loggers whose records are Ray's, Tune's, Optuna's or Python's warnings, never our console lines
THIRD_PARTY = ("ray", "optuna", "py.warnings", "filelock", "urllib3", "botocore", "fsspec", "asyncio")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_active: LogSink | None = None
_saved: dict[str, tuple[list, bool]] = {}  # the third-party loggers' own handlers, put back when quiet() ends


class LogSink(logging.Handler):
    """A logging handler (and, through ``stream()``, a text stream) that buffers until ``attach(path)``."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(_FORMAT))
        self.buffer: list[str] = []
        self.file: io.TextIOBase | None = None
        self.path: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)

    def write(self, text: str) -> None:
        self.acquire()
        try:
            if self.file is None:
                self.buffer.append(text)
            else:
                self.file.write(text)
                self.file.flush()
        finally:
            self.release()

    def attach(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.acquire()
        try:
            if self.file is not None:
                self.file.close()
            self.file, self.path = open(path, "a", encoding="utf-8"), path
            self.file.write("".join(self.buffer))
            self.file.flush()
            self.buffer.clear()
        finally:
            self.release()

    def stream(self) -> io.TextIOBase:
        return _SinkStream(self)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


class _SinkStream(io.TextIOBase):
    def __init__(self, sink: LogSink):
        self.sink = sink

    def write(self, text: str) -> int:
        self.sink.write(text)
        return len(text)

    def isatty(self) -> bool:
        return False


def log_path(experiment: str) -> str:
    """Where a sweep's third-party logs go: in the experiment folder, or the local temp for a remote one."""
    if "://" in experiment and not experiment.startswith("file://"):
        name = experiment.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]
        return os.path.join(tempfile.gettempdir(), "prunesweep-logs", f"{name}.log")
    return os.path.join(experiment.removeprefix("file://"), LOG_FILE)


@contextlib.contextmanager
def quiet(verbose: bool) -> Iterator[LogSink | None]:
    """Route the third-party logs to a LogSink for the duration (nothing changes with ``verbose``); the
    loggers and warning settings are restored on exit (``python -m sweep`` may run in-process in tests)."""
    global _active
    if verbose:
        yield None
        return
    # Ray and Optuna are NOT imported here (a refused run must answer without them, issue 16); both install
    # their own handlers when imported later: claim() points their loggers back at the sink then
    sink = LogSink()
    _saved.clear()
    _saved.update({name: _swap(logging.getLogger(name), [sink], False) for name in THIRD_PARTY})
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        logging.captureWarnings(True)
        _active = sink
        try:
            yield sink
        finally:
            _active = None
            _forward_worker_output(None)
            logging.captureWarnings(False)
            for name, state in _saved.items():
                _swap(logging.getLogger(name), *state)
            sink.close()


def claim() -> None:
    """Call right after importing Ray or Optuna: their loggers go to the active sink again (each installs its
    own handler on import). Does nothing without a quiet console (-v, or outside ``python -m sweep``)."""
    if _active is None:
        return
    for name in THIRD_PARTY:
        logger = logging.getLogger(name)
        if logger.handlers != [_active]:  # installed since quiet() began: these are the ones to put back
            handlers, _ = _swap(logger, [_active], False)
            _saved[name] = ([h for h in handlers if not isinstance(h, LogSink)], _saved[name][1])


def _swap(logger: logging.Logger, handlers: list, propagate: bool) -> tuple[list, bool]:
    old = (list(logger.handlers), logger.propagate)
    logger.handlers[:] = handlers
    logger.propagate = propagate
    return old


def attach(experiment: str, write: Callable[[str], None]) -> str | None:
    """Once the experiment folder is known: the quiet console's log file starts there (None when -v)."""
    if _active is None:
        return None
    path = log_path(experiment)
    if _active.path != path:
        _active.attach(path)
        write(f"logs of Ray, Tune and Optuna: {path} (-v shows them here)")
    _forward_worker_output(_active)
    return path


_WORKER_HANDLER = "prunesweep_log"  # our handler of the trials' forwarded output


def _forward_worker_output(sink: LogSink | None) -> None:
    """The trials' stdout/stderr, which Ray forwards to the driver and prints there (``log_to_driver``), go
    to ``sink`` instead of the console (None: Ray's printer again). Ray's dispatcher of worker output is
    private API (ray 2.60: ``ray._private.ray_logging.global_worker_stdstream_dispatcher``); where it is
    missing this does nothing and ``streams()`` still catches what is printed while Tune runs."""
    if "ray" not in sys.modules:
        return  # Ray never started here (a refused run): nothing forwards, and importing it would cost ~1 s
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        from ray._private.worker import print_to_stdstream, print_worker_logs
    except ImportError:
        return
    names = [name for name, _ in dispatcher.handlers]
    if sink is None:
        if _WORKER_HANDLER in names:
            dispatcher.remove_handler(_WORKER_HANDLER)
            dispatcher.add_handler("ray_print_logs", lambda data: print_to_stdstream(data, ignore_prefix=False))
        return
    if _WORKER_HANDLER in names or "ray_print_logs" not in names:
        return  # already ours, or Ray forwards nothing (log_to_driver=False)
    stream = sink.stream()
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler(_WORKER_HANDLER, lambda data: print_worker_logs(data, stream))


@contextlib.contextmanager
def streams() -> Iterator[None]:
    """While Tune runs: its prints and the trials' forwarded output go to the log file (quiet console only)."""
    if _active is None:
        yield
        return
    stream = _active.stream()
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield

