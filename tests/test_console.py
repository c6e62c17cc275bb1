"""The quiet console (issue 16): a sweep prints our lines only; Ray's, Tune's and Optuna's logs go to the
experiment's sweep.log, and -v shows them."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings

import pytest

from sweep import console

# what Ray, Tune and Optuna print when left alone (seen on the console before issue 16)
RAY_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR)\s"  # Ray's log format
    r"|\(\w+ pid=\d+\)"  # a trial's output forwarded by Ray
    r"|^\[[DIWE] \d{4}-"  # Optuna's log format
    r"|Checkpoint successfully created|Configuration for experiment|tensorboard|ExperimentalWarning"
    r"|Token authentication|deduplicates logs|View detailed results|Experiment state snapshotting",
    re.M | re.I)


def test_quiet_console_sends_ray_optuna_and_warnings_to_the_log_file(tmp_path, capsys):
    import optuna

    shown = []
    with console.quiet(verbose=False):
        import ray  # noqa: F401  (as init_ray does: imported once the run is valid, then claimed)

        console.claim()
        logging.getLogger("ray.tune").warning("Experiment state snapshotting may become a bottleneck")
        logging.getLogger("optuna").info("A new study created in Journal")
        warnings.warn("set_metric_names is experimental", optuna.exceptions.ExperimentalWarning)
        logging.getLogger("sweep.driver").warning("a caution of ours")  # ours: stays on the console
        path = console.attach(str(tmp_path), shown.append)  # the experiment folder is known from here
        logging.getLogger("ray").info("Checkpoint successfully created at: x")
        with console.streams():
            print("Configuration for experiment")  # Tune prints while it runs
    out, err = capsys.readouterr()
    assert path == os.path.join(tmp_path, console.LOG_FILE) and shown == [
        f"logs of Ray, Tune and Optuna: {path} (-v shows them here)"]
    assert not RAY_LINE.search(out + err), out + err
    log = open(path).read()
    for line in ("snapshotting", "A new study", "ExperimentalWarning", "Checkpoint successfully", "Configuration"):
        assert line in log
    assert "a caution of ours" not in log
    # restored afterwards: Ray's own handler is back
    assert logging.getLogger("ray").handlers and not any(isinstance(h, console.LogSink)
                                                         for h in logging.getLogger("ray").handlers)


def test_verbose_console_changes_nothing(tmp_path):
    before = list(logging.getLogger("ray").handlers)
    with console.quiet(verbose=True):
        assert logging.getLogger("ray").handlers == before
        assert console.attach(str(tmp_path), lambda s: pytest.fail(s)) is None
    assert not os.path.exists(tmp_path / console.LOG_FILE)


def test_a_remote_experiments_log_goes_to_the_local_temp():
    path = console.log_path("s3://bucket/sweeps/exp1?endpoint_override=localhost:9000")
    assert path.endswith(os.path.join("prunesweep-logs", "exp1.log")) and "://" not in path


TINY_CLI = ["--dataset", "synthetic", "--width", "0.1", "--dense-epochs", "1", "--sparsify-epochs", "1",
            "--finetune-epochs", "1", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
            "--set", "synthetic_train=256", "--set", "synthetic_test=64", "--set", "batch_size=64",
            "--set", "bn_recal_batches=2", "--set", "max_threads=1"]


@pytest.mark.slow
def test_a_small_sweeps_console_shows_our_lines_only(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    for key in ("RAY_DEDUP_LOGS", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"):  # as a user runs it, not as tests do
        env.pop(key, None)
    r = subprocess.run([sys.executable, "-m", "sweep", "run", "--space", "baseline", "--local", "--trials", "1",
                        "--storage", str(tmp_path), "--name", "q", *TINY_CLI], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    console_text = r.stdout + r.stderr
    leaked = [ln for ln in console_text.splitlines() if RAY_LINE.search(ln)]
    assert leaked == [], leaked
    log = (tmp_path / "q" / console.LOG_FILE).read_text()
    assert "Started a local Ray instance" in log and "Checkpoint successfully created" in log
    exp = tmp_path / "q"
    for ours in ("sweep: ", "best final_val_acc per study:", f"results: {exp / 'results'}",
                 f"report:  python -m analysis report {exp}", f"logs of Ray, Tune and Optuna: {exp / 'sweep.log'}"):
        assert ours in r.stdout, r.stdout
