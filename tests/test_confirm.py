"""``python -m sweep confirm NAME --seeds K``: the chosen configurations on seeds the tuning never used.

Fast: the seed choice, the trials table's stage column (old files read as tuning), the tuning-stage choice
never reading confirmation rows, the summary judging on the confirmation seeds (the tuning answer beside it),
bad input refused before anything starts. Slow: a real tiny sweep (Ray local, Optuna journal, Parquet)
confirmed on 2 fresh seeds, the confirm SIGKILLed mid-way and re-run: exactly the planned trials, no
duplicates, Optuna never told.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import helpers
from results import schema
from vocabulary.config import TrialConfig

ARCH = "mobilenet_v2"


def _row(tid, method, seed, val, test, lr=1e-3, stage=None, status="ok", experiment="exp"):
    """One trials row as analysis.load gives it (every schema column, a real TrialConfig's hyperparameters)."""
    cfg = TrialConfig.from_dict({"method": method, "lr": lr, "sparsity": 0.5, "dense_epochs": 1,
                                 "sparsify_epochs": 2, "finetune_epochs": 1, "admm_interval": 1})
    row = {name: None for name in schema.TRIALS.names}
    row.update({k: v for k, v in cfg.hyperparameters().items() if k in schema.HYPERPARAMETERS})
    row.update(arch=ARCH, method=method, experiment=experiment, experiment_dir=f"/x/{experiment}", trial_id=tid,
               seed=seed, status=status, stage=stage, error="", study=f"{ARCH}-{method}", optuna_trial=0,
               space="compare", dense_key=f"d{seed}", control_key=f"c{seed}", wall_time_s=1.0, epochs_run=4,
               device="cpu", target_sparsity=0.5, achieved_sparsity=0.5, total_params=1000, nonzero_params=550,
               prunable_params=900, prunable_nonzero=450, dense_macs=5000, nonzero_macs=2500)
    for stage_ in schema.ACC_STAGES:
        row[f"{stage_}_val_acc"] = row[f"{stage_}_test_acc"] = math.nan
    if status == "ok":
        row.update(final_val_acc=val, final_test_acc=test, dense_val_acc=0.8, dense_test_acc=0.8)
    return row


def _tuning() -> list[dict]:
    """admm: A (lr 1e-3, val 0.80) beats B (lr 1e-4, val 0.70); magnitude: one configuration; seeds 0, 1."""
    rows = [_row(f"A{s}", "admm", s, 0.80, 0.70 + 0.01 * s) for s in range(2)]
    rows += [_row(f"B{s}", "admm", s, 0.70, 0.90, lr=1e-4) for s in range(2)]
    rows += [_row(f"M{s}", "magnitude", s, 0.60, 0.60 + 0.01 * s) for s in range(2)]
    return rows


# -- the seed choice -------------------------------------------------------------------------------------
def test_confirmation_seeds_follow_every_tuning_seed_and_keep_the_recorded_ones():
    from sweep.confirm import confirm_seeds
    from sweep.options import UsageError

    assert confirm_seeds(3, {0, 1, 2}, 2) == [3, 4]
    assert confirm_seeds(2, {0, 1, 7}, 2) == [8, 9]  # a row that ran seed 7 (merged): never reused
    assert confirm_seeds(1, set(), 1) == [1]
    assert confirm_seeds(3, {0, 1, 2}, 2, recorded=[3, 4]) == [3, 4]  # a re-run finishes the same seeds
    assert confirm_seeds(3, {0, 1, 2}, 4, recorded=[3, 4]) == [3, 4, 5, 6]  # a larger K adds the next ones
    for k, recorded in ((0, []), (1, [3, 4])):
        with pytest.raises(UsageError) as err:
            confirm_seeds(3, {0, 1, 2}, k, recorded)
        assert err.value.option == "--seeds"


# -- the stage column --------------------------------------------------------------------------------------
def test_stage_column_is_written_and_older_files_read_as_tuning(tmp_path):
    from analysis.load import load_tables
    from analysis.tables import stage_trials, trial_stage

    assert "stage" in schema.TRIALS.names and schema.TRIAL_STAGES == ("tuning", "confirmation")
    row = {k: v for k, v in _row("new", "admm", 0, 0.5, 0.5, stage="confirmation").items()
           if k in schema.TRIALS.names and k not in schema.PARTITION_COLUMNS}
    schema.write_trial_table(str(tmp_path), "trials", [row], arch=ARCH, method="admm", trial_id="new")
    # a schema-3 file (no stage column), as sweeps wrote before confirmations existed
    old = schema.to_table("trials", [{**row, "trial_id": "old", "stage": None}]).drop_columns(["stage"])
    old = old.replace_schema_metadata({schema.VERSION_KEY: b"3"})
    folder = tmp_path / "results" / "trials" / f"arch={ARCH}" / "method=admm"
    pq.write_table(old, str(folder / "old.parquet"))
    trials = load_tables(str(tmp_path), strict=True).trials.set_index("trial_id")
    assert trials.loc["new", "stage"] == "confirmation" and trials.loc["old", "stage"] is None
    assert dict(zip(trials.index, trial_stage(trials))) == {"new": "confirmation", "old": "tuning"}
    assert list(stage_trials(trials.reset_index())["trial_id"]) == ["old"]
    assert pa.types.is_string(schema.TRIALS.field("stage").type)


# -- the tuning stage never reads confirmation rows ---------------------------------------------------------
def test_the_tuning_choice_never_looks_at_confirmation_rows():
    """Confirmation rows share the chosen configuration's id (same hyperparameters): mixed into the choice
    they would change it (A's diverged confirmation seed made it 'diverged', B's lucky confirmation made it
    best). The tuning stage must choose A exactly as without them."""
    from analysis.tables import (best_configs, comparison_table, config_states, configs_not_chosen,
                                 paired_comparison, pareto_front)

    tuning = pd.DataFrame(_tuning())
    confirmation = [_row("cA2", "admm", 2, 0.10, 0.10, stage="confirmation"),
                    _row("cA3", "admm", 3, math.nan, math.nan, stage="confirmation", status="diverged"),
                    _row("cB2", "admm", 2, 0.99, 0.99, lr=1e-4, stage="confirmation")]
    both = pd.concat([tuning.assign(stage="tuning"), pd.DataFrame(confirmation)], ignore_index=True)
    before, after = best_configs(tuning, 0.5), best_configs(both, 0.5)
    cols = ["method", "config", "final_val_acc_mean", "n_seeds", "trial_ids"]
    pd.testing.assert_frame_equal(before[cols], after[cols])
    assert set(after.loc[after["method"] == "admm", "trial_ids"].iloc[0].split(",")) == {"A0", "A1"}
    assert configs_not_chosen(both).empty  # A's diverged confirmation seed is not a tuning seed
    assert set(config_states(both)["state"]) == {"complete"}
    table = comparison_table(both, 0.5)
    assert not any(i.startswith("c") for i in ",".join(table["trial_ids"]).split(",") if i)
    paired = paired_comparison(both)
    assert paired["seeds"].tolist() == ["0,1"] and paired["stage"].tolist() == ["tuning"]
    front = pareto_front(both)
    assert set(front.loc[front["row"] == "pareto", "n_seeds"]) == {2}


# -- the summary's choice of stage ------------------------------------------------------------------------
def _confirmed(admm_tests=(0.50, 0.52, 0.51), mag_tests=(0.60, 0.61, 0.62), seeds=(2, 3, 4)) -> pd.DataFrame:
    rows = _tuning() + [_row(f"cA{s}", "admm", s, 0.5, t, stage="confirmation") for s, t in zip(seeds, admm_tests)]
    rows += [_row(f"cM{s}", "magnitude", s, 0.5, t, stage="confirmation") for s, t in zip(seeds, mag_tests)]
    return pd.DataFrame(rows)


def test_summary_judges_on_confirmation_seeds_and_keeps_the_tuning_answer_beside():
    from analysis.present import answers, show_summary
    from analysis.summary import summary_table

    table = summary_table(_confirmed())
    assert table["stage"].tolist() == ["confirmation", "tuning"]  # the answer first, the tuning one beside
    conf, tune = table.iloc[0], table.iloc[1]
    assert conf["seeds"] == "2,3,4" and tune["seeds"] == "0,1"
    # tuning: admm (A, the best val) 0.705 vs magnitude 0.605 -> admm ahead; confirmation: magnitude ahead
    assert tune["mean_diff"] == pytest.approx(0.10) and tune["leader"] == "admm"
    assert conf["mean_diff"] == pytest.approx(0.51 - 0.61) and conf["leader"] == "magnitude"
    assert "confirmation seeds 2, 3, 4" in conf["judged_on"] and "optimistic" in tune["judged_on"]
    said = answers(table)
    assert "judged on confirmation seeds 2, 3, 4" in said[0].headline and "tuning seeds" in said[1].headline
    assert "Judged on" in show_summary(table).frame.columns
    # without confirmation rows: one tuning row, worded as before
    plain = summary_table(pd.DataFrame(_tuning()))
    assert plain["stage"].tolist() == ["tuning"] and plain["judged_on"].tolist() == [""]
    assert "judged on" not in answers(plain)[0].headline


def test_summary_says_when_a_confirmation_is_not_finished():
    from analysis.summary import summary_table
    from analysis.tables import with_sweep_seeds

    trials = with_sweep_seeds(_confirmed(), {"/x/exp": 2}, {"/x/exp": [2, 3, 4, 5]})  # seed 5 never ran
    conf = summary_table(trials).iloc[0]
    assert conf["stage"] == "confirmation" and conf["n_pairs"] == 3
    assert "confirmation not finished" in conf["caution"] and "admm's confirmation is incomplete" in conf["caution"]


def test_a_confirmation_of_configurations_no_longer_chosen_is_not_the_answer():
    """A longer search changed admm's choice to A after B was confirmed: B's confirmation judges nothing."""
    from analysis.summary import summary_table

    rows = _tuning() + [_row(f"cB{s}", "admm", s, 0.5, 0.9, lr=1e-4, stage="confirmation") for s in (2, 3)]
    rows += [_row(f"cM{s}", "magnitude", s, 0.5, 0.5, stage="confirmation") for s in (2, 3)]
    table = summary_table(pd.DataFrame(rows))
    assert table["stage"].tolist() == ["tuning"] and table["seeds"].tolist() == ["0,1"]
    assert "run python -m sweep confirm again" in table["caution"].iloc[0]
    assert "confirm again" not in summary_table(pd.DataFrame(_tuning()))["caution"].iloc[0]


# -- bad input: exit 2 naming the option, nothing started -------------------------------------------------
def test_bad_confirm_input_is_refused_before_anything_starts(tmp_path, sweep_main):
    from analysis.tables import confirm_seeds

    code, _, err = sweep_main("confirm", "nope", "--seeds", "2", "--storage", str(tmp_path))
    assert code == 2 and "NAME" in err and "nope" in err, err
    exp = tmp_path / "s"
    (exp / "results" / "trials").mkdir(parents=True)
    options = {"name": "s", "seeds": 2, "space": "compare", "set": [], "local": True}
    (exp / "sweep.json").write_text(json.dumps(options))
    code, _, err = sweep_main("confirm", "s", "--seeds", "0", "--storage", str(tmp_path))
    assert code == 2 and "--seeds" in err, err
    # rows, but no configuration completed every seed (seed 1 failed): nothing to confirm
    for tid, seed, status in (("a0", 0, "ok"), ("a1", 1, "failed")):
        row = {k: v for k, v in _row(tid, "admm", seed, 0.5, 0.5, status=status).items()
               if k in schema.TRIALS.names and k not in schema.PARTITION_COLUMNS}
        schema.write_trial_table(str(exp), "trials", [row], arch=ARCH, method="admm", trial_id=tid)
    code, _, err = sweep_main("confirm", "s", "--seeds", "2", "--storage", str(tmp_path))
    assert code == 2 and "NAME" in err and "no complete configuration" in err, err
    assert json.loads((exp / "sweep.json").read_text()) == options and confirm_seeds(options) is None
    assert sorted(p.name for p in exp.iterdir()) == ["results", "sweep.json"]  # no Tune state, no journal


# -- end to end (slow) ---------------------------------------------------------------------------------------
TINY = ["--dataset", helpers.TINY["dataset"], "--width", "0.1", "--dense-epochs", "1", "--sparsify-epochs", "1",
        "--finetune-epochs", "1", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
        *helpers.sweep_set_args({k: helpers.TINY[k] for k in ("synthetic_train", "synthetic_test", "batch_size",
                                                             "bn_recal_batches")}),
        "--set", "max_threads=1", "--set", "sparsity=0.5"]
ENV = {**os.environ, "RAY_ADDRESS": ""}


def _sweep(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _journal_trials(exp) -> dict[str, int]:
    import optuna

    from sweep.searcher import open_storage

    storage = open_storage(str(exp / "optuna.journal"))
    return {s.study_name: len(optuna.load_study(study_name=s.study_name, storage=storage).trials)
            for s in optuna.get_all_study_summaries(storage)}


@pytest.mark.slow
def test_confirm_killed_and_rerun_runs_exactly_the_chosen_configurations_on_fresh_seeds(tmp_path):
    from analysis.load import load_tables

    _sweep("run", "--space", "compare", "--local", "--trials", "2", "--max-concurrent", "1",
           "--storage", str(tmp_path), "--name", "c", *TINY)
    exp = tmp_path / "c"
    studies = _journal_trials(exp)
    tuning = load_tables(str(exp)).trials
    assert len(tuning) == 4 and set(tuning["stage"]) == {"tuning"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "confirm", "c", "--seeds", "2", "--storage", str(tmp_path)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((exp / "results" / "trials").rglob("confirm-*.parquet")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray processes, mid-confirmation
    proc.wait()
    time.sleep(2)  # a worker of another process group may still finish writing a row
    done = len(list((exp / "results" / "trials").rglob("confirm-*.parquet")))
    assert 1 <= done < 4, "the kill landed outside the confirmation: the test tests nothing"
    assert json.loads((exp / "sweep.json").read_text())["confirm"] == {"seeds": [1, 2]}  # recorded before trials
    r = _sweep("confirm", "c", "--seeds", "2", "--storage", str(tmp_path))
    said = re.search(r"(\d+) trials to run, (\d+) done before", r.stdout)
    assert said and int(said[1]) + int(said[2]) == 4 and int(said[2]) >= done, r.stdout
    trials = load_tables(str(exp)).trials
    conf = trials[trials["stage"] == "confirmation"]
    assert len(trials) == 8 and trials["trial_id"].is_unique and set(conf["status"]) == {"ok"}
    assert sorted(conf["seed"]) == [1, 1, 2, 2]
    # each method's chosen configuration (tuning rows, best mean val), with its exact hyperparameters
    from analysis.tables import annotate, best_configs
    chosen = best_configs(tuning, 0.5)
    rows = annotate(trials)
    for best in chosen.to_dict("records"):
        mine = rows[(rows["stage"] == "confirmation") & (rows["method"] == best["method"])]
        assert set(mine["config"]) == {best["config"]} and len(mine) == 2
        assert set(mine["optuna_trial"]) == set(tuning.loc[tuning["trial_id"] == best["trial_ids"], "optuna_trial"])
    assert _journal_trials(exp) == studies  # Optuna is never told a confirmation trial
    # each confirmation seed has its own dense model (the dense store keys on the seed)
    assert conf.groupby("seed")["dense_key"].nunique().tolist() == [1, 1]
    assert set(conf["dense_key"]).isdisjoint(set(tuning["dense_key"]))
    # the report's answer is the confirmation's, the tuning one beside it
    out = tmp_path / "report"
    subprocess.run([sys.executable, "-m", "analysis", "report", str(exp), "--out", str(out)], check=True,
                   capture_output=True, env=ENV, timeout=300)
    text = (out / "report.md").read_text()
    assert "judged on confirmation seeds 1, 2" in text and "judged on the tuning seeds" in text
    summary = pd.read_csv(out / "tables" / "summary.csv", dtype={"seeds": str})
    assert summary["stage"].tolist() == ["confirmation", "tuning"] and summary["seeds"].tolist() == ["1,2", "0"]


def _saved_trials(folder) -> list[tuple[str, str, dict]]:
    """(status, row id, last result) of each trial in Tune's newest saved experiment state in ``folder``."""
    states = sorted(folder.glob("experiment_state-*.json")) if folder.exists() else []
    if not states:
        return []
    try:
        data = json.loads(states[-1].read_text())
    except ValueError:  # Tune writes it atomically, but read it again rather than trust a torn read
        return []
    out = []
    for trial, metadata in data["trial_data"]:
        t, m = json.loads(trial), json.loads(metadata)
        out.append((t["status"], t["config"].get("_trial_id"), m.get("last_result") or {}))
    return out


@pytest.mark.slow
def test_a_killed_confirm_continues_its_unfinished_trials_from_their_checkpoints(tmp_path):
    """The confirm is SIGKILLed while a trial is mid-way (Tune saved it RUNNING with a per-epoch checkpoint,
    no row yet). The re-run restores the confirm's Tune run: that trial continues from its checkpoint (its
    last result: more iterations than since the restore) under its deterministic id, nothing is duplicated."""
    from analysis.load import load_tables

    _sweep("run", "--space", "compare", "--local", "--trials", "1", "--max-concurrent", "1",
           "--storage", str(tmp_path), "--name", "r", *TINY, "--finetune-epochs", "3")  # 4 reports per trial
    exp, rows = tmp_path / "r", tmp_path / "r" / "results" / "trials"
    # Tune saves its experiment state every >= 10 s by default; a trial here lasts a few seconds: save often
    env = {**ENV, "TUNE_GLOBAL_CHECKPOINT_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "confirm", "r", "--seeds", "2", "--storage", str(tmp_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    mid, deadline = None, time.time() + 300
    while mid is None and time.time() < deadline and proc.poll() is None:
        mid = next((rid for status, rid, last in _saved_trials(exp / "confirm")
                    if status == "RUNNING" and 1 <= last.get("training_iteration", 0) < 4
                    and not list(rows.rglob(f"{rid}.parquet"))), None)
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # a worker of another process group may still finish writing a row
    assert mid and not list(rows.rglob(f"{mid}.parquet")), "no trial was killed mid-way: the test tests nothing"
    r = _sweep("confirm", "r", "--seeds", "2", "--storage", str(tmp_path))
    resumed = [last for _, rid, last in _saved_trials(exp / "confirm") if rid == mid]
    assert resumed and resumed[-1]["training_iteration"] == 4, resumed
    assert resumed[-1]["iterations_since_restore"] < 4, resumed[-1]  # continued from its checkpoint
    assert "continuing the killed run's" in r.stdout + r.stderr, r.stdout
    trials = load_tables(str(exp)).trials
    conf = trials[trials["stage"] == "confirmation"]
    assert len(trials) == 6 and trials["trial_id"].is_unique and set(conf["status"]) == {"ok"}
    assert mid in set(conf["trial_id"]) and sorted(conf["seed"]) == [1, 1, 2, 2]
    assert (conf["epochs_run"] == trials.loc[trials["stage"] == "tuning", "epochs_run"].max()).all()
