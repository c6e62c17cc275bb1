"""``python -m sweep resume NAME --trials N``: a longer search on the same Optuna studies.

Fast: the new total and the longer search's Tune folder in sweep.json, a grid refused, bad input exit 2 with
nothing written; the searcher over the same journal asks for exactly N more configurations and redoes none.
Slow: a real tiny sweep (Ray local) extended, SIGKILLed mid-way, then continued by a plain ``resume``: the
new total is kept, every configuration distinct, nothing finished runs again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

import helpers


def test_a_longer_search_raises_the_total_and_gets_its_own_tune_folder():
    from sweep import spaces as sp
    from sweep.driver import extended, tune_folder
    from sweep.options import UsageError
    from sweep.record import SweepOptions

    options = SweepOptions.from_dict({"trials": 2, "space": "admm"})
    once = extended(options, sp.load_space("admm"), 3)
    assert once.trials == 5 and once.tune_dir == "extend-1" and options == SweepOptions.from_dict({"trials": 2,
                                                                                                  "space": "admm"})
    twice = extended(once, sp.load_space("admm"), 1)
    assert twice.trials == 6 and twice.tune_dir == "extend-2"
    assert tune_folder("/x/exp", options) == "/x/exp" and tune_folder("/x/exp", twice) == "/x/exp/extend-2"
    with pytest.raises(UsageError) as err:
        extended(SweepOptions.from_dict({"trials": 1}), sp.load_space("seed"), 2)  # a grid: one configuration per study
    assert err.value.option == "--trials"


def test_bad_resume_trials_is_refused_with_nothing_written(tmp_path, sweep_main):
    exp = tmp_path / "g"
    exp.mkdir()
    options = {"name": "g", "space": "seed", "set": [], "trials": 1, "seeds": 1, "local": True,
               "cpus_per_trial": 1, "gpus_per_trial": 0}
    (exp / "sweep.json").write_text(json.dumps(options))
    code, _, err = sweep_main("resume", "g", "--trials", "0", "--storage", str(tmp_path))
    assert code == 2 and "--trials" in err and ">= 1" in err, err
    code, _, err = sweep_main("resume", "g", "--trials", "2", "--storage", str(tmp_path))
    assert code == 2 and "--trials" in err and "grid" in err, err
    assert json.loads((exp / "sweep.json").read_text()) == options and sorted(os.listdir(exp)) == ["sweep.json"]
    code, _, err = sweep_main("resume", "nope", "--trials", "2", "--storage", str(tmp_path))
    assert code == 2 and "NAME" in err and "nope" in err, err


def test_the_searcher_over_the_same_journal_asks_exactly_n_more_and_redoes_none(tmp_path):
    """What a longer search's fresh Tuner gets: a searcher on the same journal, told the new total."""
    from sweep import spaces as sp
    from sweep.searcher import MultiStudySearcher, StudySpec

    space = sp.Space("t", "test", ("admm",), {"lr": sp.Dist("float", 1e-4, 1e-1, True)})
    spec = StudySpec("mobilenet_v2-admm", {"arch": "mobilenet_v2", "method": "admm"},
                     functools.partial(sp.suggest, space=space, method="admm"), ("final_val_acc",))
    journal = str(tmp_path / "optuna.journal")
    first = MultiStudySearcher(journal, [spec], trials=1)
    config = first.suggest("r0")
    first.on_trial_complete("r0", {"final_val_acc": 0.5, "status": "ok", "trial_done": True})
    assert first.suggest("r1") == MultiStudySearcher.FINISHED
    longer = MultiStudySearcher(journal, [spec], trials=3, tune_dir=str(tmp_path / "extend-1"))
    longer.reconcile(set())
    assert longer.seeds_ended() == 1
    more = [longer.suggest(f"n{i}") for i in range(2)]
    assert [c["_optuna_trial"] for c in more] == [1, 2]  # new configurations, trial 0 not handed out again
    assert len({config["lr"], *(c["lr"] for c in more)}) == 3
    assert longer.suggest("n2") == MultiStudySearcher.FINISHED
    assert longer.studies["mobilenet_v2-admm"].trials[0].value == 0.5


def _journal_with(exp, ended: int, running: int = 0) -> None:
    """A real Optuna journal whose study mobilenet_v2-admm has ``ended`` complete and ``running`` configurations."""
    import optuna

    from sweep.searcher import open_storage

    study = optuna.create_study(study_name="mobilenet_v2-admm", storage=open_storage(str(exp / "optuna.journal")))
    for _ in range(ended):
        study.tell(study.ask(), 0.5)
    for _ in range(running):
        study.ask()


def test_resume_trials_while_a_run_is_unfinished_finishes_the_same_command_and_refuses_another(tmp_path, sweep_main):
    """A longer search ``resume g --trials 2`` (1 -> 3 configurations) was killed after 1 of its 2 new
    configurations ended (the journal: 2 ended, 1 running). The same command finishes it; another N is exit 2
    naming --trials with nothing written; an unfinished first run is refused the same way."""
    from sweep import spaces as sp
    from sweep.driver import configurations_ended, extended, finishes_longer_search
    from sweep.record import SweepOptions

    exp = tmp_path / "g"
    exp.mkdir()
    _journal_with(exp, ended=2, running=1)
    options = {"name": "g", "space": "admm", "set": [], "trials": 3, "seeds": 1, "local": False,
               "cpus_per_trial": 1, "gpus_per_trial": 0, "tune_dir": "extend-1", "extend_trials": 2, "version": 2}
    (exp / "sweep.json").write_text(json.dumps(options))
    record, space = SweepOptions.from_dict(options), sp.load_space("admm")
    assert configurations_ended(str(exp), record, space) == {"mobilenet_v2-admm": 2}
    assert finishes_longer_search(str(exp), record, space, 2, "g")  # the same command: finish, add none
    before = sorted(os.listdir(exp)), (exp / "optuna.journal").read_bytes()
    code, _, err = sweep_main("resume", "g", "--trials", "5", "--storage", str(tmp_path))
    assert code == 2 and "--trials" in err and "`resume g --trials 2`" in err and "2 of 3" in err, err
    assert "python -m sweep resume g`" in err, err
    assert json.loads((exp / "sweep.json").read_text()) == options
    assert (sorted(os.listdir(exp)), (exp / "optuna.journal").read_bytes()) == before
    first = {**options, "trials": 3, "tune_dir": None, "extend_trials": 0}  # the first run, killed
    (exp / "sweep.json").write_text(json.dumps(first))
    code, _, err = sweep_main("resume", "g", "--trials", "2", "--storage", str(tmp_path))
    assert code == 2 and "--trials" in err and "the sweep's last run is unfinished" in err, err
    done = dataclasses.replace(record, trials=2)  # every planned configuration ended: a new longer search
    assert not finishes_longer_search(str(exp), done, space, 2, "g")
    assert extended(done, space, 2).extend_trials == 2


# -- end to end (slow) ---------------------------------------------------------------------------------------
TINY = ["--dataset", helpers.TINY["dataset"], "--width", "0.1", "--dense-epochs", "1", "--sparsify-epochs", "1",
        "--finetune-epochs", "1", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
        *helpers.sweep_set_args({k: helpers.TINY[k] for k in ("synthetic_train", "synthetic_test", "batch_size",
                                                             "bn_recal_batches")}),
        "--set", "max_threads=1"]
ENV = {**os.environ, "RAY_ADDRESS": ""}


def _sweep(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _study(exp):
    import optuna

    from sweep.searcher import open_storage

    return optuna.load_study(study_name="mobilenet_v2-admm", storage=open_storage(str(exp / "optuna.journal")))


def _killed_longer_search(tmp_path):
    """A 1-configuration sweep, then ``resume k --trials 2`` SIGKILLed after its first new configuration's row:
    (the experiment folder, its rows folder, the first run's row files -> mtime)."""
    _sweep("run", "--space", "admm", "--local", "--trials", "1", "--max-concurrent", "1",
           "--storage", str(tmp_path), "--name", "k", *TINY)
    exp = tmp_path / "k"
    rows = exp / "results" / "trials"
    first = {p.name: p.stat().st_mtime_ns for p in rows.rglob("*.parquet")}
    assert len(first) == 1
    proc = subprocess.Popen([sys.executable, "-m", "sweep", "resume", "k", "--trials", "2", "--storage", str(tmp_path)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(rows.rglob("*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-way through the longer search
    proc.wait()
    assert len(list(rows.rglob("*.parquet"))) == 2, "the kill landed outside the longer search: it tests nothing"
    options = json.loads((exp / "sweep.json").read_text())
    assert options["trials"] == 3 and options["tune_dir"] == "extend-1"  # persisted before any trial
    return exp, rows, first


def _check_the_longer_search(exp, rows, first) -> None:
    """3 configurations, each run once and told to Optuna once, all distinct; the first run's rows untouched."""
    from optuna.trial import TrialState

    trials = pd.read_parquet(rows)
    assert len(trials) == 3 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert sorted(trials["optuna_trial"]) == [0, 1, 2]
    assert {p.name: p.stat().st_mtime_ns for p in rows.rglob("*.parquet") if p.name in first} == first  # not redone
    study = _study(exp)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 3  # the sampler went on, no repeats
    assert sorted(t.user_attrs["ray_trial_0"] for t in study.trials) == sorted(trials["trial_id"])


@pytest.mark.slow
def test_the_same_resume_trials_rerun_after_a_kill_finishes_it_instead_of_adding_more(tmp_path):
    """The user re-runs the killed `resume k --trials 2`: it finishes that longer search (total 3), and says
    so; it does not add 2 more (total 5), and redoes nothing."""
    exp, rows, first = _killed_longer_search(tmp_path)
    r = _sweep("resume", "k", "--trials", "2", "--storage", str(tmp_path))
    assert "finishing the interrupted longer search of `resume k --trials 2`" in r.stdout + r.stderr, r.stdout
    options = json.loads((exp / "sweep.json").read_text())
    assert (options["trials"], options["tune_dir"], options["extend_trials"]) == (3, "extend-1", 2)
    _check_the_longer_search(exp, rows, first)
    assert not (exp / "extend-2").exists()


@pytest.mark.slow
def test_a_longer_search_killed_and_resumed_keeps_the_new_total_and_redoes_nothing(tmp_path):
    exp, rows, first = _killed_longer_search(tmp_path)
    _sweep("resume", "k", "--storage", str(tmp_path))  # plain: continues the longer search to the new total
    _check_the_longer_search(exp, rows, first)
    _sweep("resume", "k", "--storage", str(tmp_path))  # a later plain resume keeps the total: nothing to run
    assert len(pd.read_parquet(rows)) == 3 and json.loads((exp / "sweep.json").read_text())["trials"] == 3
