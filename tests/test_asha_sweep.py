"""A 2-seed sweep with early stopping on, its driver SIGKILLed and resumed, tried as a new user would (issue 15):
it finishes, the scheduler ranked what each configuration's seeds reported (the projected accuracy), and
Optuna's record of every configuration agrees with the tables (DESIGN rules 14, 15)."""

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

from sweep.searcher import open_storage

pytestmark = pytest.mark.slow

ARGS = ["--space", "compare", "--local", "--scheduler", "asha", "--seeds", "2", "--trials", "3",
        "--dataset", "synthetic", "--arch", "mobilenet_v3_small", "--width", "0.25", "--dense-epochs", "2",
        "--sparsify-epochs", "3", "--finetune-epochs", "2", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
        "--set", "sparsity=0.5", "--set", "synthetic_train=256", "--set", "synthetic_test=64",
        "--set", "batch_size=64", "--set", "bn_recal_batches=2", "--set", "max_threads=1",
        "--set", "dense_control=false"]


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAY_ADDRESS": ""})


def test_two_seed_asha_sweep_resumes_after_a_kill_and_optuna_agrees_with_the_tables(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "run", *ARGS, "--storage", str(tmp_path),
                             "--name", "a"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    exp = tmp_path / "a"
    deadline = time.time() + 600
    while time.time() < deadline and len(list((exp / "results" / "trials").rglob("*.parquet"))) < 2:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(list((exp / "results" / "trials").rglob("*.parquet")))
    assert 2 <= before < 12, "the kill landed outside the sweep: the test tests nothing"
    r = _sweep("resume", "a", "--local", "--storage", str(tmp_path))
    (tmp_path / "resume.log").write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stderr[-3000:]

    trials = pd.read_parquet(exp / "results" / "trials")
    epochs = pd.read_parquet(exp / "results" / "epochs")
    assert trials["trial_id"].is_unique
    assert len(trials) == 2 * 3 * 2, trials[["study", "optuna_trial", "seed", "status"]]
    state = json.loads((exp / "early_stopping.state").read_text())

    for study_name, rows in trials.groupby("study"):
        study = optuna.load_study(study_name=study_name, storage=open_storage(str(exp / "optuna.journal")))
        assert len(study.trials) == 3 and not any(t.state == TrialState.RUNNING for t in study.trials)
        for t in study.trials:
            seeds = rows[rows["optuna_trial"] == t.number]
            assert sorted(seeds["seed"]) == [0, 1]
            statuses = set(seeds["status"])
            # a configuration's seeds stop together: a stopped seed means the scheduler stopped the configuration
            if "stopped" in statuses:
                assert f"{study_name}|{t.number}" in state["stopped"]
            if statuses == {"ok"}:
                assert t.state == TrialState.COMPLETE
                assert t.value == pytest.approx(seeds["final_val_acc"].mean())
            elif statuses & {"failed", "diverged"}:
                assert t.state == TrialState.FAIL
            else:
                assert t.state == TrialState.PRUNED
        # the first configuration at a rung has nothing to be ranked against: TPE always sees complete values
        assert any(t.state == TrialState.COMPLETE for t in study.trials)

        # the rung's value of a configuration is the mean of what its seeds reported at the milestone: the
        # projected accuracy of the first sparsify epoch (dense epochs are not reported)
        rung = state["rungs"].get(f"{study_name}|1", {})
        assert rung, state
        for config, value in rung.items():
            ids = rows.loc[rows["optuna_trial"] == int(config), "trial_id"]
            first = epochs[epochs["trial_id"].isin(ids) & (epochs["phase"] == "sparsify")
                           & (epochs["phase_epoch"] == 1)]
            assert len(first) == 2 and value == pytest.approx(first["projected_val_acc"].mean())

    # --keep-models chosen (the default): the chosen configuration's seeds keep their models, nobody else; each
    # loads with the accuracy its trial recorded, also for trials that ran across the kill
    import torch

    from analysis.tables import annotate, best_configs
    from results import schema
    from vocabulary.config import TrialConfig
    from trainables.data import Loader, load_splits
    from trainables.model_file import load_model

    from analysis.load import load_tables

    table = load_tables([str(exp)]).trials
    rows = annotate(table)
    best = best_configs(table, 0.5)
    assert len(best) == 2
    chosen = set(rows.merge(best[["arch", "method", "config"]])["trial_id"])
    kept = {p.stem for p in (exp / "results" / "models").rglob("*.pt")}
    assert kept == chosen and len(kept) == 4
    data = load_splits(TrialConfig.from_dict(json.loads(trials["config_json"].iloc[0])).data)
    for _, row in trials[trials["trial_id"].isin(kept)].iterrows():
        path = exp / schema.model_path(arch=row["arch"], method=row["method"], trial_id=row["trial_id"])
        model, _ = load_model(path.read_bytes())
        loader = Loader(data.val_x, data.val_y, batch_size=256, shuffle=False, augment=False, mean=data.mean,
                        std=data.std)
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader.batches(0))
        assert correct / len(data.val_y) == row["final_val_acc"]
