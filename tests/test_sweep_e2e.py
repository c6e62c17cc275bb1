"""End-to-end sweeps through the real CLI (subprocess: real Ray local mode, real Optuna journal, real Parquet,
real trainables.trial.run_trial on tiny models). Each test checks the results row by row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

import helpers
from sweep.searcher import open_storage

pytestmark = pytest.mark.slow

# helpers.TINY's data and batch sizes as sweep options, at width 0.1 and 1 + 1 + 1 epochs
TINY = ["--dataset", helpers.TINY["dataset"], "--width", "0.1", "--dense-epochs", "1", "--sparsify-epochs", "1",
        "--finetune-epochs", "1", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
        *helpers.sweep_set_args({k: helpers.TINY[k] for k in ("synthetic_train", "synthetic_test", "batch_size",
                                                             "bn_recal_batches")}),
        "--set", "max_threads=1"]
EPOCHS = 3  # dense + sparsify + finetune epoch rows per trial


def sweep(*args: str, check=True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    r = subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=600,
                       env=env, **kw)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def study_states(experiment: str, name: str) -> list[TrialState]:
    study = optuna.load_study(study_name=name, storage=open_storage(os.path.join(experiment, "optuna.journal")))
    return [t.state for t in study.trials]


def check_rows(experiment: str, n: int) -> pd.DataFrame:
    trials = pd.read_parquet(os.path.join(experiment, "results", "trials"))
    assert len(trials) == n and trials["trial_id"].is_unique
    epochs = pd.read_parquet(os.path.join(experiment, "results", "epochs"))
    assert not epochs.duplicated(["trial_id", "phase", "epoch"]).any()
    ok = trials[trials["status"] == "ok"]
    counts = epochs.groupby("trial_id").size()
    assert (counts.loc[ok["trial_id"]] == EPOCHS).all(), counts
    assert (ok["epochs_run"] == EPOCHS).all()
    assert ((ok["achieved_sparsity"] - ok["target_sparsity"]).abs() < 1e-3).all()
    return trials


def test_compare_space_two_studies_multiobjective_dense_built_once(tmp_path):
    r = sweep("run", "--space", "compare", "--local", "--trials", "2", "--storage", str(tmp_path), "--name", "c",
              *TINY)
    exp = str(tmp_path / "c")
    assert "mobilenet_v2-admm" in r.stdout and f"python -m analysis report {exp}" in r.stdout
    trials = check_rows(exp, 4)
    assert sorted(trials.groupby("method").size().items()) == [("admm", 2), ("magnitude", 2)]
    assert set(trials["study"]) == {"mobilenet_v2-admm", "mobilenet_v2-magnitude"}
    for name in ("mobilenet_v2-admm", "mobilenet_v2-magnitude"):
        study = optuna.load_study(study_name=name, storage=open_storage(os.path.join(exp, "optuna.journal")))
        assert len(study.directions) == 2  # final_acc and sparsity: a Pareto front
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    builds = json.load(open(os.path.join(exp, "dense", "builds.json")))
    # one dense key (same arch/seed/recipe) and its dense control, each built once for 4 trials
    assert sorted(builds) == sorted({trials["dense_key"].iloc[0], trials["control_key"].iloc[0]}), builds
    assert list(builds.values()) == [1, 1], builds
    assert trials["dense_key"].nunique() == 1
    assert trials["control_val_acc"].notna().any()  # the trial that built or read the control has it
    # the journal reads well in optuna-dashboard: named objectives, what each study is
    for name in ("mobilenet_v2-admm", "mobilenet_v2-magnitude"):
        study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(os.path.join(exp, "optuna.journal"))))
        assert study.metric_names == ["final_val_acc", "achieved_sparsity"]
        attrs = study.user_attrs
        assert attrs["space"] == "compare" and attrs["arch"] == "mobilenet_v2" and attrs["method"] in name
        assert attrs["dense_recipe"]["dense_epochs"] == 1 and "lr" in attrs["searched"]


def test_diverged_trials_end_diverged_and_fail_in_optuna(tmp_path):
    sweep("run", "--space", "baseline", "--local", "--trials", "2", "--storage", str(tmp_path), "--name", "d",
          *TINY, "--set", "optimizer=sgd", "--set", "lr=10", "--set", "finetune_lr_scale=100", "--set", "momentum=0.99", "--set", "weight_decay=1.0",
          "--set", "sparsity=0.5")
    exp = str(tmp_path / "d")
    trials = pd.read_parquet(os.path.join(exp, "results", "trials"))
    assert len(trials) == 2 and set(trials["status"]) == {"diverged"}, trials[["status", "error"]]
    assert study_states(exp, "mobilenet_v2-magnitude") == [TrialState.FAIL] * 2


def test_resume_after_sigkill_finishes_exactly_the_planned_trials(tmp_path):
    args = ["run", "--space", "admm", "--local", "--trials", "3", "--max-concurrent", "1",
            "--storage", str(tmp_path), "--name", "k", *TINY]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    exp = tmp_path / "k"
    deadline = time.time() + 300
    while time.time() < deadline and not list((exp / "results" / "trials").rglob("*.parquet")):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray processes, no goodbye
    proc.wait()
    done_before = len(list((exp / "results" / "trials").rglob("*.parquet")))
    assert 1 <= done_before < 3, "kill landed outside the sweep: the test tests nothing"
    r = sweep("resume", "k", "--local", "--storage", str(tmp_path), check=False)
    assert r.returncode == 0 and "UpdateFinishedTrialError" not in r.stderr, r.stderr[-3000:]
    trials = check_rows(str(exp), 3)
    assert study_states(str(exp), "mobilenet_v2-admm") == [TrialState.COMPLETE] * 3
    # every Optuna trial is answered by exactly the Ray trial whose row is in the table
    study = optuna.load_study(study_name="mobilenet_v2-admm", storage=open_storage(str(exp / "optuna.journal")))
    assert sorted(t.user_attrs["ray_trial_0"] for t in study.trials) == sorted(trials["trial_id"])
    assert sorted(trials["optuna_trial"]) == [0, 1, 2]
    builds = json.load(open(exp / "dense" / "builds.json"))
    # the persisted dense model and dense control were reused after the kill
    assert list(builds.values()) == [1, 1], builds


def test_seed_space_grid_over_archs_and_methods_with_seed_means(tmp_path):
    sweep("run", "--space", "seed", "--local", "--seeds", "2", "--storage", str(tmp_path), "--name", "g", *TINY)
    exp = str(tmp_path / "g")
    trials = check_rows(exp, 3 * 2 * 2)
    assert set(trials["status"]) == {"ok"}
    assert sorted(trials.groupby(["arch", "method"]).size().to_dict().values()) == [2] * 6
    assert (trials["sparsity"] == 0.5).all() and (trials["lr"] == 1e-3).all()
    assert ((trials["target_sparsity"] - 0.5).abs() < 0.01).all()
    assert (trials.loc[trials["method"] == "admm", "rho"] == 0.01).all()
    # the driver loaded the dataset once and handed it to every trial through the object store
    assert {json.loads(p)["data"] for p in trials["provenance_json"]} == {"given"}
    # one dense model per (arch, seed), built once and shared by both methods
    builds = json.load(open(os.path.join(exp, "dense", "builds.json")))
    assert len(builds) == 12 and set(builds.values()) == {1}, builds  # dense models and their controls
    assert (trials.groupby(["arch", "seed"])["dense_key"].nunique() == 1).all()
    dense = trials.groupby(["arch", "seed"])["dense_val_acc"].nunique()
    assert (dense == 1).all()  # both methods start from the same dense weights
    storage = open_storage(os.path.join(exp, "optuna.journal"))
    for (arch, method), g in trials.groupby(["arch", "method"]):
        study = optuna.load_study(study_name=f"{arch}-{method}", storage=storage)
        assert len(study.directions) == 1 and [t.state for t in study.trials] == [TrialState.COMPLETE]
        assert study.trials[0].value == pytest.approx(g["final_val_acc"].mean())  # the mean over seeds


def test_asha_stopped_trials_are_pruned_in_optuna_with_their_rows(tmp_path):
    space = tmp_path / "lr.toml"
    space.write_text('methods = ["magnitude"]\n[params]\nlr = {type = "float", low = 1e-5, high = 0.3, log = true}\n'
                     'sparsity = 0.5\nschedule = "one_shot"\n')
    sweep("run", "--space", str(space), "--local", "--trials", "6", "--scheduler", "asha", "--storage",
          str(tmp_path), "--name", "a", *TINY, "--sparsify-epochs", "2", "--finetune-epochs", "2")
    exp = str(tmp_path / "a")
    trials = pd.read_parquet(os.path.join(exp, "results", "trials"))
    epochs = pd.read_parquet(os.path.join(exp, "results", "epochs"))
    assert len(trials) == 6 and trials["trial_id"].is_unique
    assert set(trials["status"]) <= {"ok", "stopped"}, trials[["status", "error"]]
    study = optuna.load_study(study_name="mobilenet_v2-magnitude", storage=open_storage(os.path.join(exp, "optuna.journal")))
    by_ray = {t.user_attrs["ray_trial_0"]: t for t in study.trials}
    for row in trials.itertuples():
        t = by_ray[row.trial_id]
        n = int((epochs["trial_id"] == row.trial_id).sum())
        if row.status == "ok":
            assert t.state == TrialState.COMPLETE and t.value == pytest.approx(row.final_val_acc) and n == 5
        else:  # stopped by ASHA: pruned in Optuna, never completed with its partial value
            assert t.state == TrialState.PRUNED and t.value is None and 1 <= n < 5 and row.epochs_run == n
    assert (trials["status"] == "stopped").any(), "ASHA stopped nothing: the test did not test pruning"


def test_resume_of_a_sweep_killed_during_start_up(tmp_path):
    """Killed after the searcher handed out its first seed but (normally) before Tune saved any state:
    resume starts Tune afresh on the same Optuna studies and runs that seed again, nothing hangs."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", "--space", "admm", "--local", "--trials", "2",
                             "--max-concurrent", "1", "--storage", str(tmp_path), "--name", "e", *TINY], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = tmp_path / "e" / "optuna.journal"
    deadline = time.time() + 300
    while time.time() < deadline and not (journal.exists() and "ray_trial_0" in journal.read_text()):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before_tune_state = not list((tmp_path / "e").glob("experiment_state-*.json"))
    r = sweep("resume", "e", "--local", "--storage", str(tmp_path), check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = check_rows(str(tmp_path / "e"), 2)
    study = optuna.load_study(study_name="mobilenet_v2-admm", storage=open_storage(str(journal)))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.user_attrs["ray_trial_0"] for t in study.trials) == sorted(trials["trial_id"])
    if before_tune_state:  # the orphaned first seed was handed out again under a new Ray id
        assert journal.read_text().count("ray_trial_0") == 3


def test_ctrl_c_stops_cleanly_with_130_and_resume_runs_the_way_the_sweep_ran(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) stops the sweep with status 130 and prints the command
    that continues it; `python -m sweep resume NAME` as printed (no --local) resumes the --local sweep."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", "--space", "baseline", "--local", "--trials", "3",
                             "--max-concurrent", "1", "--storage", str(tmp_path), "--name", "i", *TINY], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    exp = tmp_path / "i"
    deadline = time.time() + 300
    while time.time() < deadline and not list((exp / "results" / "trials").rglob("*.parquet")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    command = f"python -m sweep resume i --storage {tmp_path}"
    assert command in err and "Tuner.restore" not in out + err, err[-3000:]
    done_before = len(list((exp / "results" / "trials").rglob("*.parquet")))
    assert done_before < 3, "the sweep had finished: the interrupt tested nothing"
    r = sweep(*command.split()[3:], check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = check_rows(str(exp), 3)
    assert set(trials["status"]) == {"ok"}
