"""Early stopping compares like with like (DESIGN rules 14, 15): rungs per study, a configuration's seeds
decided together on their mean, the projected accuracy as the fidelity, and the state kept across a resume.

The scheduler is driven through Tune's own scheduler API with real ``ray.tune.experiment.Trial`` objects (no
Ray cluster needed: a scheduler only reads trial configs and results). Each of these tests fails with
``ray.tune.schedulers.ASHAScheduler(metric="val_acc")``, the scheduler the sweep used before.
"""

from __future__ import annotations

import math
import pickle

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from helpers import TINY
from sweep.scheduler import ConfigurationASHA, milestones, quantile
from trainables.trial import run_trial

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


def trial(study: str, config: int, seed: int) -> Trial:
    return Trial("sweep_trainable", config={"_study": study, "_optuna_trial": config, "seed": seed}, stub=True)


def report(sched, t: Trial, it: int, projected: float, val: float | None = None, **extra) -> str:
    result = {"training_iteration": it, "projected_val_acc": projected,
              "val_acc": projected if val is None else val, "status": "ok", **extra}
    return sched.on_trial_result(None, t, result)


def test_milestones_stay_below_the_final_report_and_quantile_matches_numpy():
    assert milestones(3, 1, 4) == [1]
    assert milestones(20, 1, 4) == [1, 4, 16]
    assert milestones(16, 1, 4) == [1, 4]  # 16 would be the final report: stopping there changes nothing
    assert milestones(1, 1, 4) == []
    np = pytest.importorskip("numpy")
    for xs in ([0.3], [0.1, 0.9], [0.5, 0.2, 0.8, 0.1, 0.7]):
        assert quantile(xs, 0.75) == pytest.approx(float(np.percentile(xs, 75)))


def test_rungs_never_mix_studies():
    """A weak architecture's configurations are ranked among themselves, not against a strong one's."""
    sched = ConfigurationASHA(max_t=3, seeds=1)
    for c, acc in enumerate((0.90, 0.91, 0.92, 0.93)):
        assert report(sched, trial("v2-admm", c, 0), 1, acc) == CONTINUE
    for c, acc in enumerate((0.30, 0.31, 0.32)):  # each better than those of its own study before it
        assert report(sched, trial("v3s-admm", c, 0), 1, acc) == CONTINUE
    assert not sched.stopped
    # and within a study the rung does stop: below the 75% quantile of the configurations before it
    assert report(sched, trial("v3s-admm", 3, 0), 1, 0.29) == STOP
    assert set(sched.stopped) == {"v3s-admm|3"}


def test_seeds_of_a_configuration_are_decided_together_on_their_mean():
    sched = ConfigurationASHA(max_t=3, seeds=2)
    assert report(sched, trial("s", 0, 0), 1, 0.80) == CONTINUE
    assert report(sched, trial("s", 0, 1), 1, 0.80) == CONTINUE
    # a lucky first seed does not decide: the configuration waits for its second seed
    lucky, unlucky = trial("s", 1, 0), trial("s", 1, 1)
    assert report(sched, lucky, 1, 0.95) == CONTINUE
    assert "s|1" not in sched.stopped
    assert report(sched, unlucky, 1, 0.05) == STOP  # mean 0.50 < 0.80
    assert report(sched, lucky, 2, 0.96) == STOP  # its sibling stops at its next report: seeds stop together
    assert sched.rungs["s|1"] == {"0": pytest.approx(0.80), "1": pytest.approx(0.50)}
    # a configuration whose mean beats the cutoff keeps both seeds, even with one weak seed
    assert report(sched, trial("s", 2, 0), 1, 0.70) == CONTINUE
    assert report(sched, trial("s", 2, 1), 1, 0.98) == CONTINUE  # mean 0.84 >= quantile(0.8, 0.5) = 0.725
    assert set(sched.stopped) == {"s|1"}


def test_the_rung_ranks_the_projected_accuracy_not_the_accuracy_of_unpruned_weights():
    """Measured before: ADMM at rho 1e-4 had val_acc 0.31 on its not-yet-sparse weights and 0.13 once
    projected; ranking val_acc kept it over a configuration that scores 0.25 when pruned."""
    sched = ConfigurationASHA(max_t=3, seeds=1)
    assert report(sched, trial("a", 0, 0), 1, projected=0.25, val=0.26) == CONTINUE
    assert report(sched, trial("a", 1, 0), 1, projected=0.13, val=0.31) == STOP


def test_a_diverged_seed_stops_its_siblings():
    sched = ConfigurationASHA(max_t=5, seeds=2)
    healthy = trial("a", 0, 1)
    assert report(sched, healthy, 1, 0.5) == CONTINUE
    sched.on_trial_result(None, trial("a", 0, 0), {"training_iteration": 2, "projected_val_acc": math.nan,
                                                   "status": "diverged", "trial_done": True})
    assert report(sched, healthy, 2, 0.6) == STOP


def test_rungs_and_stopped_configurations_survive_a_resume(tmp_path):
    """Tune does not save schedulers: Tuner.restore unpickles the one pickled when the sweep STARTED."""
    sched = ConfigurationASHA(max_t=3, seeds=1, experiment=str(tmp_path))
    at_start = pickle.dumps(sched)
    report(sched, trial("a", 0, 0), 1, 0.8)
    assert report(sched, trial("a", 1, 0), 1, 0.1) == STOP
    restored = pickle.loads(at_start)
    assert restored.stopped == sched.stopped and restored.rungs == sched.rungs
    assert report(restored, trial("a", 1, 0), 2, 0.9) == STOP  # still stopped after the resume
    assert report(restored, trial("a", 2, 0), 1, 0.05) == STOP  # ranked against the rung it had before


def test_projected_val_acc_is_what_the_trial_would_score_pruned_now():
    """ADMM's sparsify epochs: val_acc is of dense weights, projected_val_acc of a projected copy; at the
    end of sparsify the projected copy IS the hard projection, so it equals post_prune_val_acc exactly.
    Where the weights are in the set already (magnitude per step, fine-tuning) the two are one number."""
    admm = run_trial({**TINY, "method": "admm", "sparsity": 0.9, "rho": 1e-3})
    sparsify = [r for r in admm.epochs if r["phase"] == "sparsify"]
    assert sparsify and all(r["density"] == 1.0 for r in sparsify)  # not pruned yet: the fidelity must project
    assert sparsify[-1]["projected_val_acc"] == admm.summary["post_prune_val_acc"]
    assert all(0.0 <= r["projected_val_acc"] <= 1.0 for r in sparsify)
    assert all(math.isnan(r["projected_val_acc"]) for r in admm.epochs if r["phase"] == "dense")
    for result in (admm, run_trial({**TINY, "method": "magnitude", "sparsity": 0.9})):
        for r in result.epochs:
            if r["phase"] == "finetune" or result.summary["method"] == "magnitude" and r["phase"] == "sparsify":
                assert r["projected_val_acc"] == r["val_acc"], r
    assert admm.summary["empty_layers"] == 0
