"""Faults and resumes: Optuna, the tables and Tune must tell the same story after a driver dies (issue 15).

Real parts only: a real Optuna journal, real Parquet rows, real Tune experiments (a tiny function trainable,
or the real sweep through its CLI for the slow tests), a real flock held by another open file.
"""

from __future__ import annotations

import fcntl
import os

import pytest

from trainables.dense_store import FileDenseStore


# -- FileDenseStore: only an unfinished build returns None (item 4) -----------------------------------------
def test_dense_store_without_waiting_reads_a_finished_payload_while_another_holds_the_lock(tmp_path):
    store = FileDenseStore(str(tmp_path))
    assert store.get_or_build("k", lambda: b"control") == b"control"
    with open(os.path.join(tmp_path, "k.pt.lock"), "a") as other:  # another process reading the payload
        fcntl.flock(other, fcntl.LOCK_EX)
        got = store.get_or_build("k", lambda: pytest.fail("built twice"), wait=False)
    assert got == b"control"


def test_dense_store_without_waiting_returns_none_only_while_the_build_is_unfinished(tmp_path):
    store = FileDenseStore(str(tmp_path))
    with open(os.path.join(tmp_path, "k.pt.lock"), "a") as builder:  # another process building "k"
        fcntl.flock(builder, fcntl.LOCK_EX)
        assert store.get_or_build("k", lambda: pytest.fail("built while another builds"), wait=False) is None
    assert store.get_or_build("k", lambda: b"built", wait=False) == b"built"


# -- the searcher answers seeds whose end it missed (item 2) ---------------------------------------------------
def make_searcher(experiment, *, trials=2, seeds=1):
    import functools

    from sweep import spaces as sp
    from sweep.searcher import MultiStudySearcher, StudySpec

    space = sp.Space("t", "test", ("admm",), {"lr": sp.Dist("float", 1e-3, 1e-2, True)})
    spec = StudySpec("mobilenet_v2-admm", {"arch": "mobilenet_v2", "method": "admm"},
                     functools.partial(sp.suggest, space=space, method="admm"), ("final_val_acc",))
    return MultiStudySearcher(str(experiment / "optuna.journal"), [spec], trials=trials, seeds=seeds)


def study_of(experiment):
    import optuna

    from sweep.searcher import open_storage

    return optuna.load_study(study_name="mobilenet_v2-admm", storage=open_storage(str(experiment / "optuna.journal")))


def write_row(experiment, trial_id, **row):
    from results import schema

    schema.write_trial_table(str(experiment), "trials", [{"trial_id": trial_id, **row}], arch="mobilenet_v2",
                             method="admm", trial_id=trial_id)


def test_rows_written_before_optuna_was_told_answer_the_trial_on_resume(tmp_path):
    """Killed after the trial wrote its rows, before Optuna was told: the resumed searcher tells it from them."""
    from optuna.trial import TrialState

    s1 = make_searcher(tmp_path, seeds=2)
    s1.suggest("ray-a")
    s1.suggest("ray-b")  # seed 1 of the same configuration
    write_row(tmp_path, "ray-a", status="ok", final_val_acc=0.7)
    write_row(tmp_path, "ray-b", status="ok", final_val_acc=0.5)  # ... the driver dies here
    s2 = make_searcher(tmp_path, seeds=2)
    assert s2.live == {} and s2.open_seeds == []
    trial = study_of(tmp_path).trials[0]
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.6)
    s2.on_trial_complete("ray-a", {"status": "ok", "trial_done": True, "final_val_acc": 0.1})  # never twice
    assert study_of(tmp_path).trials[0].value == pytest.approx(0.6)


def test_rows_of_stopped_and_failed_seeds_answer_with_the_shared_rule(tmp_path):
    from optuna.trial import TrialState

    s1 = make_searcher(tmp_path, trials=2)
    s1.suggest("ray-a")
    write_row(tmp_path, "ray-a", status="stopped")
    make_searcher(tmp_path, trials=2).suggest("ray-b")
    write_row(tmp_path, "ray-b", status="failed", error="boom")
    make_searcher(tmp_path, trials=2)
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.PRUNED, TrialState.FAIL]


# -- a trainable for real Tune runs: counts to 4, checkpointing every step, fails once where told ------------
STEPS = 4


def counting_trainable(config):
    import json
    import tempfile

    from ray import tune

    runs = config["runs_file"]
    with open(runs, "a") as f:
        f.write("run\n")
    n = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            n = json.load(open(os.path.join(d, "n.json")))
    while n < STEPS:
        n += 1
        if n == config.get("fail_at") and len(open(runs).read().split()) == 1:
            raise RuntimeError("first run fails here")
        metrics = {"n": n, "val_acc": n * config["lr"], "status": "ok", "trial_done": n == STEPS}
        if n == STEPS:
            tune.report({**metrics, "final_val_acc": n * config["lr"]})
            return
        with tempfile.TemporaryDirectory() as d:
            json.dump(n, open(os.path.join(d, "n.json"), "w"))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def tuner(tmp_path, *, callbacks=(), searcher=None, config=None):
    from ray import tune

    return tune.Tuner(counting_trainable, param_space=config or {},
                      tune_config=tune.TuneConfig(search_alg=searcher, num_samples=1),
                      run_config=tune.RunConfig(storage_path=str(tmp_path), name="exp", verbose=0,
                                                callbacks=list(callbacks),
                                                failure_config=tune.FailureConfig(max_failures=0),
                                                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


@pytest.mark.slow
def test_a_trial_whose_checkpoint_is_gone_restarts_and_ends_as_a_clean_run(tmp_path, ray_session):
    """Tune's saved state points at a checkpoint that is gone (rotated away by num_to_keep before the driver
    died): on resume the trial restarts instead of failing, and ends exactly as a clean run."""
    import shutil

    from ray import tune

    from sweep.ray_tune import MissingCheckpoints

    config = {"lr": 0.1, "fail_at": 3, "runs_file": str(tmp_path / "runs.txt")}
    first = tuner(tmp_path, callbacks=[MissingCheckpoints()], config=config).fit()[0]
    assert first.error is not None and first.checkpoint is not None  # the trial stopped mid-way, checkpointed
    shutil.rmtree(first.checkpoint.path)  # what num_to_keep did before the kill
    again = tune.Tuner.restore(str(tmp_path / "exp"), counting_trainable, resume_errored=True).fit()[0]
    assert again.error is None, again.error
    assert again.metrics["n"] == STEPS and again.metrics["final_val_acc"] == pytest.approx(STEPS * 0.1)
    assert again.metrics["training_iteration"] == STEPS  # restarted from its start: Tune's count is right too
    clean = tuner(tmp_path / "clean", config={**config, "fail_at": None,
                                              "runs_file": str(tmp_path / "clean.txt")}).fit()[0]
    assert {k: again.metrics[k] for k in ("n", "val_acc", "final_val_acc")} == \
        {k: clean.metrics[k] for k in ("n", "val_acc", "final_val_acc")}


# -- errored seeds are not re-run on resume: Tune, Optuna (and the tables) keep one truth (item 3) -----------
@pytest.mark.slow
def test_a_failed_seed_stays_failed_after_resume_in_tune_and_optuna(tmp_path, ray_session):
    from optuna.trial import TrialState
    from ray import tune

    from sweep.driver import RESUME

    experiment = tmp_path / "exp"
    experiment.mkdir()
    searcher = make_searcher(experiment, trials=1)
    runs = tmp_path / "runs.txt"
    first = tuner(tmp_path, searcher=searcher, config={"fail_at": 3, "runs_file": str(runs)}).fit()[0]
    assert first.error is not None and study_of(experiment).trials[0].state == TrialState.FAIL
    # the driver is killed here (Tune's state and Optuna both say failed), then resumed the way the sweep does
    again = tune.Tuner.restore(str(experiment), counting_trainable, **RESUME).fit()[0]
    assert runs.read_text().split() == ["run"]  # not re-run: a re-run would now succeed
    assert again.error is not None and study_of(experiment).trials[0].state == TrialState.FAIL


@pytest.mark.slow
def test_a_seed_tune_saved_as_errored_but_optuna_never_heard_of_is_told_on_resume(tmp_path, ray_session):
    """Tune saved the trial ERROR, the driver died before the searcher recorded it: told FAIL on restore."""
    from optuna.trial import TrialState

    experiment = tmp_path / "exp"
    first = tuner(tmp_path, config={"fail_at": 2, "runs_file": str(tmp_path / "runs.txt"), "lr": 0.1}).fit()[0]
    assert first.error is not None
    s1 = make_searcher(experiment, trials=1)
    s1.suggest(first.metrics["trial_id"])  # handed to that Ray trial, its end never recorded
    s2 = make_searcher(experiment, trials=1)
    assert first.metrics["trial_id"] in s2.live  # from the storage alone it looks running forever
    s2.restore(str(experiment / "searcher-state.pkl"))
    assert s2.live == {} and study_of(experiment).trials[0].state == TrialState.FAIL


# -- the live table's ETA after a resume (item 5) ------------------------------------------------------------
class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def stub_trial(trial_id: str, status: str):
    from ray.tune.experiment import Trial

    t = Trial("sweep_trainable", config={"_study": "mobilenet_v2-admm", "seed": 0}, trial_id=trial_id, stub=True)
    t.set_status(status)
    return t


def finish(table, trials, t, acc=0.5):
    t.update_last_result({"status": "ok", "trial_done": True, "final_val_acc": acc, "val_acc": acc})
    t.set_status("TERMINATED")
    table.on_trial_complete(iteration=0, trials=trials, trial=t)


def test_eta_after_a_resume_counts_earlier_trials_as_done_and_not_the_downtime():
    from sweep.progress import LiveTable

    clock = Clock()
    # resumed: Tune restored 2 of 6 trials finished; a new table (as unpickled from tuner.pkl) sees them
    trials = [stub_trial("a", "TERMINATED"), stub_trial("b", "TERMINATED"), stub_trial("c", "PENDING"),
              stub_trial("d", "PENDING")]
    table = LiveTable(clock=clock, redraw=False, total=6)
    table.on_trial_start(iteration=0, trials=trials, trial=trials[2])
    trials[2].set_status("RUNNING")
    clock.t += 60
    finish(table, trials, trials[2])
    assert "about 3m00s left (3/6)" in table.render()  # 3 left at 60 s each, not 5 left
    # the driver dies an hour later; the table (pickled) comes back: the hour is not the sweep's pace
    import pickle

    table = pickle.loads(pickle.dumps(table))
    table.clock = clock  # the copy's own clock, not the pickled one
    clock.t += 3600
    table.on_trial_start(iteration=0, trials=trials, trial=trials[3])
    trials[3].set_status("RUNNING")
    clock.t += 30
    finish(table, trials, trials[3])
    assert "about 1m00s left (4/6)" in table.render()


# -- the cached dense payload does not carry a histogram of another trial's prunable set (item 6) -------------
def stage_total(result, stage: str) -> int:
    return sum(r["count"] for r in result.weights if r["stage"] == stage)


@pytest.mark.slow
def test_dense_histogram_is_of_the_trials_own_prunable_weights_when_the_dense_model_is_cached(tmp_path,
                                                                                             tiny_splits):
    from helpers import TINY
    from trainables.trial import run_trial

    store = FileDenseStore(str(tmp_path))
    base = {**TINY, "sparsify_epochs": 1, "finetune_epochs": 1}
    built = run_trial({**base, "prune_first_conv": False}, data=tiny_splits, dense_store=store)
    read = run_trial({**base, "prune_first_conv": True}, data=tiny_splits, dense_store=store)
    assert built.summary["dense_key"] == read.summary["dense_key"]  # the same cached dense model
    assert read.summary["prunable_params"] > built.summary["prunable_params"]  # the first conv is prunable
    for result in (built, read):  # each trial's stages histogram the same weights: its own prunable set
        assert stage_total(result, "dense") == stage_total(result, "final") == result.summary["prunable_params"]


# -- the whole story through the CLI: killed, its checkpoint gone, resumed (item 1, end to end) ---------------
SWEEP_CLI = ["--dataset", "synthetic", "--width", "0.1", "--dense-epochs", "1", "--sparsify-epochs", "2",
             "--finetune-epochs", "2", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
             "--set", "synthetic_train=256", "--set", "synthetic_test=64", "--set", "batch_size=64",
             "--set", "bn_recal_batches=2", "--set", "max_threads=1", "--set", "dense_control=false"]


def saved_checkpoints(experiment) -> dict[str, str]:
    """Trial id -> the checkpoint Tune's newest saved experiment state restores it from (unfinished trials)."""
    import json

    from ray.tune.trainable.metadata import _TrainingRunMetadata

    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        state = json.loads(states[-1].read_text())
    except ValueError:  # caught mid-write
        return {}
    out = {}
    for trial, metadata in state["trial_data"]:
        t = json.loads(trial)
        latest = _TrainingRunMetadata.from_json_state(metadata).checkpoint_manager.latest_checkpoint_result
        if latest is not None and t["status"] not in ("TERMINATED", "ERROR"):
            out[t["trial_id"]] = latest.checkpoint.path
    return out


@pytest.mark.slow
def test_sweep_killed_with_its_checkpoint_gone_resumes_and_the_trial_matches_a_clean_run(tmp_path, tiny_splits):
    import json
    import shutil
    import signal
    import subprocess
    import sys
    import time

    import pandas as pd
    from optuna.trial import TrialState

    from trainables.trial import run_trial

    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", "--space", "baseline", "--local", "--trials", "1",
                             "--storage", str(tmp_path), "--name", "k", *SWEEP_CLI], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    experiment = tmp_path / "k"
    deadline, saved = time.time() + 300, {}
    while time.time() < deadline and not saved and proc.poll() is None:
        saved = saved_checkpoints(experiment)
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray, no goodbye
    proc.wait()
    assert saved, "the sweep ended before Tune saved a checkpoint of a running trial: the test tests nothing"
    (trial_id, checkpoint), = saved.items()
    shutil.rmtree(checkpoint, ignore_errors=True)  # what num_to_keep did before the kill
    r = subprocess.run([sys.executable, "-m", "sweep", "resume", "k", "--storage", str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = pd.read_parquet(experiment / "results" / "trials")
    assert list(trials["trial_id"]) == [trial_id] and list(trials["status"]) == ["ok"], trials[["status", "error"]]
    assert study_states(experiment) == [TrialState.COMPLETE]
    # the restarted trial's numbers are a clean run's (trials are deterministic)
    row = trials.iloc[0]
    clean = run_trial(json.loads(row["config_json"]), data=None)
    for key in ("dense_val_acc", "post_prune_val_acc", "final_val_acc", "achieved_sparsity"):
        assert row[key] == pytest.approx(clean.summary[key], abs=1e-6), key
    epochs = pd.read_parquet(experiment / "results" / "epochs").sort_values("epoch")
    assert list(epochs["phase"]) == [e["phase"] for e in clean.epochs]
    assert list(epochs["val_acc"]) == pytest.approx([e["val_acc"] for e in clean.epochs], abs=1e-6)
    assert list(epochs["train_loss"]) == pytest.approx([e["train_loss"] for e in clean.epochs], abs=1e-6)


def study_states(experiment, name="mobilenet_v2-magnitude"):
    import optuna

    from sweep.searcher import open_storage

    storage = open_storage(str(experiment / "optuna.journal"))
    return [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]
