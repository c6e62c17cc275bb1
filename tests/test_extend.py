"""``python -m sweep resume NAME --trials N``: a longer search on the same Optuna studies.

Fast: the new total and the longer search's Tune folder in sweep.json, a grid refused, bad input exit 2 with
nothing written; the searcher over the same journal asks for exactly N more configurations and redoes none.
Slow: a real tiny sweep (Ray local) extended, SIGKILLed mid-way, then continued by a plain ``resume``: the
new total is kept, every configuration distinct, nothing finished runs again.
"""

from __future__ import annotations

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


@pytest.mark.slow
def test_a_longer_search_killed_and_resumed_keeps_the_new_total_and_redoes_nothing(tmp_path):
    from optuna.trial import TrialState

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
    _sweep("resume", "k", "--storage", str(tmp_path))  # plain: continues the longer search to the new total
    trials = pd.read_parquet(rows)
    assert len(trials) == 3 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert sorted(trials["optuna_trial"]) == [0, 1, 2]
    assert {p.name: p.stat().st_mtime_ns for p in rows.rglob("*.parquet") if p.name in first} == first  # not redone
    study = _study(exp)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 3  # the sampler went on, no repeats
    assert sorted(t.user_attrs["ray_trial_0"] for t in study.trials) == sorted(trials["trial_id"])
    _sweep("resume", "k", "--storage", str(tmp_path))  # a later plain resume keeps the total: nothing to run
    assert len(pd.read_parquet(rows)) == 3 and json.loads((exp / "sweep.json").read_text())["trials"] == 3
