"""Shared test setup: one intra-op thread per process (CI has 2 cores), quiet Ray, and the fixtures several
test files share (the data of TINY, its dense store, one local Ray for the whole session).

Helpers that are not fixtures live in tests/helpers.py (TINY, its CLI form) and tests/result_rows.py
(synthetic result rows); a test file never imports from another test file.
"""

import logging
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import pytest  # noqa: E402

from helpers import SHARED_RAY_CPUS, TINY  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="session")
def tiny_splits():
    """The data splits of TINY (synthetic, 256 + 64 images), loaded once; tests must not modify them."""
    from vocabulary.config import TrialConfig
    from trainables.data import load_splits

    return load_splits(TrialConfig.from_dict(TINY).data)


@pytest.fixture(scope="session")
def tiny_dense_store(tmp_path_factory):
    """One FileDenseStore for the session. Safe to share: a payload's key covers every field the dense phase
    reads (tests/test_trustworthy.py checks that), so trials that differ only after the dense phase reuse one
    dense model, as the trials of a sweep do. Tests that count builds or need a first build make their own."""
    from trainables.dense_store import FileDenseStore

    return FileDenseStore(str(tmp_path_factory.mktemp("dense")))


@pytest.fixture
def ray_session():
    """One local Ray (2 CPUs, no GPU, no dashboard) for every test that only needs *a* Ray: started by the
    first test that asks, kept for the session. A test that needs its own cluster shuts it down first
    (``ray.shutdown()``); the next test that asks starts it again."""
    import ray

    if not ray.is_initialized():
        # workers import test modules to unpickle function trainables: they need tests/ on their path
        path = TESTS + os.pathsep + os.environ.get("PYTHONPATH", "")
        ray.init(address="local", num_cpus=SHARED_RAY_CPUS, num_gpus=0, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_the_end():
    yield
    import sys

    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()


@pytest.fixture
def sweep_main(monkeypatch):
    """``python -m sweep`` in this process: returns (exit code, stdout, stderr). Never joins a cluster named
    by RAY_ADDRESS, and restores the 'sweep.progress' logger that sweep.cli.main configures."""
    return _cli(monkeypatch, "sweep.cli")


@pytest.fixture
def trainables_main(monkeypatch):
    """``python -m trainables`` in this process: returns (exit code, stdout, stderr)."""
    return _cli(monkeypatch, "trainables.__main__")


def _cli(monkeypatch, module: str):
    import contextlib
    import importlib
    import io

    main = importlib.import_module(module).main
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = _logging_state()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(argv))
        except SystemExit as exc:  # argparse: --help (0) and its own usage errors (2)
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            _restore_logging(saved)
        return code, out.getvalue(), err.getvalue()

    return run


def _logging_state() -> dict:
    """Handlers, level, propagate and disabled of every logger: a CLI's main configures logging for a process
    of its own (sweep.progress to stdout, Ray's and Optuna's loggers quietened), which must not outlive it here."""
    loggers = [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]
    return {lg: (list(lg.handlers), lg.level, lg.propagate, lg.disabled) for lg in loggers}


def _restore_logging(saved: dict) -> None:
    for lg in [logging.getLogger()] + [v for v in logging.Logger.manager.loggerDict.values()
                                       if isinstance(v, logging.Logger)]:
        if lg in saved:
            handlers, lg.level, lg.propagate, lg.disabled = saved[lg]
            lg.handlers[:] = handlers
        else:  # created by the command: leave it, minus any handler bound to the captured streams
            lg.handlers[:] = []
            lg.propagate = True
    logging.Logger.manager._clear_cache()


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist with ``--dist loadgroup``, the tests on the shared Ray run in one worker (one Ray)."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
