"""MultiStudySearcher with real Ray Tune (local), real ASHA and a real Optuna journal storage.

The trainable is a tiny pure function reporting a deterministic curve (no torch): it tests the searcher's
bookkeeping, not training. Issue 3's scenario: 8 trials, ASHA, journal storage -> stopped trials are PRUNED.
"""

from __future__ import annotations

import functools
import math

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from sweep import spaces as sp
from sweep.searcher import MultiStudySearcher, StudySpec, classify, open_storage

REPORTS = 6


# the session's local Ray (conftest.py; its workers have tests/ on their path to unpickle curve_trainable)
pytestmark = pytest.mark.usefixtures("ray_session")


def curve_trainable(config):
    """val_acc rises with lr toward a plateau; lr >= 0.5 'diverges' (status diverged, no done)."""
    for i in range(1, REPORTS + 1):
        if config["lr"] >= 0.5:
            tune.report({"val_acc": math.nan, "status": "diverged", "trial_done": True})
            return
        acc = config["lr"] * 100 * i / REPORTS
        last = i == REPORTS
        tune.report({"val_acc": acc, "status": "ok", "trial_done": last,
                     **({"final_val_acc": acc, "achieved_sparsity": config.get("sparsity", 0.5)} if last else {})})


def make_searcher(path, *, trials, seeds=1, space=None, objectives=("final_val_acc",), archs=("mobilenet_v2",)):
    space = space or sp.Space("t", "test", ("admm",), {"lr": sp.Dist("float", 1e-3, 1e-2, True)})
    studies = [StudySpec(f"{a}-admm", {"arch": a, "method": "admm"},
                         functools.partial(sp.suggest, space=space, method="admm"), objectives) for a in archs]
    return MultiStudySearcher(str(path), studies, trials=trials, seeds=seeds)


def run(searcher, tmp_path, *, scheduler=None, samples):
    tuner = tune.Tuner(curve_trainable,
                       # actors reused between trials: the searcher's bookkeeping is the same, each trial no longer
                       # pays a worker process's start-up (most of this file's time on 2 cores)
                       tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=samples,
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="t", verbose=0))
    return tuner.fit()


def test_asha_stopped_trials_reach_optuna_as_pruned(tmp_path):
    journal = tmp_path / "optuna.journal"
    searcher = make_searcher(journal, trials=8)
    asha = ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration", max_t=REPORTS,
                         grace_period=1, reduction_factor=2)
    results = run(searcher, tmp_path, scheduler=asha, samples=8)
    stopped_early = sum(r.metrics["training_iteration"] < REPORTS for r in results)
    study = optuna.load_study(study_name="mobilenet_v2-admm", storage=open_storage(str(journal)))
    states = [t.state for t in study.trials]
    assert len(states) == 8
    assert stopped_early >= 1, "ASHA stopped nothing: the test tests nothing"
    assert states.count(TrialState.PRUNED) == stopped_early
    assert states.count(TrialState.COMPLETE) == 8 - stopped_early
    for t in study.trials:  # a COMPLETE value is a full run's final value, never a partial one
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(t.params["lr"] * 100)


def test_seeds_mean_and_diverged_fail_and_studies_balanced(tmp_path):
    journal = tmp_path / "optuna.journal"
    space = sp.Space("t", "test", ("admm",), {"lr": sp.Dist("categorical", choices=(0.005, 0.9))})
    searcher = make_searcher(journal, trials=3, seeds=2, space=space, archs=("mobilenet_v2", "mobilenet_v3_small"))
    results = run(searcher, tmp_path, samples=12)
    assert len(results) == 12
    storage = open_storage(str(journal))
    for arch in ("mobilenet_v2", "mobilenet_v3_small"):
        study = optuna.load_study(study_name=f"{arch}-admm", storage=storage)
        assert len(study.trials) == 3  # same budget per study
        for t in study.trials:
            assert t.user_attrs.keys() >= {"ray_trial_0", "ray_trial_1", "result_0", "result_1"}
            if t.params["lr"] >= 0.5:
                assert t.state == TrialState.FAIL  # diverged -> FAIL, and the sweep went on
            else:
                assert t.state == TrialState.COMPLETE and t.value == pytest.approx(0.5)


def test_restore_from_storage_ignores_unknown_and_never_tells_twice(tmp_path):
    journal = tmp_path / "optuna.journal"
    s1 = make_searcher(journal, trials=2)
    cfg = s1.suggest("ray-a")
    assert cfg["_study"] == "mobilenet_v2-admm" and cfg["seed"] == 0
    s1.on_trial_complete("ray-a", {"status": "ok", "trial_done": True, "final_val_acc": 0.7})
    s1.suggest("ray-b")  # running when the driver "dies"
    s2 = make_searcher(journal, trials=2)  # a fresh driver: everything from the storage
    assert set(s2.live) == {"ray-b"}
    s2.on_trial_complete("ray-a", {"status": "ok", "trial_done": True, "final_val_acc": 0.1})  # no error
    s2.on_trial_complete("never-seen", None, error=True)  # unknown: ignored, no KeyError
    s2.on_trial_complete("ray-b", {"status": "ok", "trial_done": True, "final_val_acc": 0.9})
    study = optuna.load_study(study_name="mobilenet_v2-admm", storage=open_storage(str(journal)))
    assert [t.value for t in study.trials] == [0.7, 0.9]
    assert s2.suggest("ray-c") == "FINISHED"


def test_restore_hands_out_again_a_seed_that_tune_never_saved(tmp_path):
    """The driver died after handing a seed to a new Ray trial but before Tune saved that trial: on restore
    the seed must run again (seen: a resumed sweep waited forever on it), with the same parameters."""
    experiment = tmp_path / "ray" / "t"  # Tune's experiment folder; the journal lives in it, as in a sweep
    s1 = make_searcher(experiment / "optuna.journal", trials=3)
    run(s1, tmp_path, samples=1)  # a real Tune run: its experiment state knows one trial
    orphan = s1.suggest("orphan-x")  # handed out, never saved by Tune: the driver is killed here
    s2 = make_searcher(experiment / "optuna.journal", trials=3)
    assert "orphan-x" in s2.live  # from the storage alone it looks running...
    s2.restore(str(experiment / "searcher-state.pkl"))
    assert s2.live == {}  # ...but Tune will never run it
    again = s2.suggest("ray-new")
    assert again["_optuna_trial"] == orphan["_optuna_trial"] == 1 and again["lr"] == orphan["lr"]
    study = optuna.load_study(study_name="mobilenet_v2-admm", storage=open_storage(str(experiment / "optuna.journal")))
    assert study.trials[1].user_attrs["ray_trial_0"] == "ray-new" and len(study.trials) == 2


def test_classify_rules():
    obj = ("final_val_acc", "achieved_sparsity")
    assert classify({"status": "ok", "trial_done": True, "final_val_acc": 0.5, "achieved_sparsity": 0.8}, False,
                    obj) == {"state": "ok", "values": [0.5, 0.8]}
    assert classify({"status": "ok", "trial_done": False, "val_acc": 0.2}, False, obj)["state"] == "pruned"
    assert classify({"status": "diverged", "trial_done": True}, False, obj)["state"] == "fail"
    assert classify(None, True, obj)["state"] == "fail"
