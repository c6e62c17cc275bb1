"""sweep.progress.LiveTable driven with real ray.tune Trial objects (stub trials: no Ray cluster, no trainable).

The callback is called the way Tune's controller calls it: on_trial_result gets the new result before the
trial's last_result is updated; on_trial_complete/error read last_result. The clock is injected, so rate
limiting is checked without sleeping.
"""

from __future__ import annotations

import logging
import pickle
import time

import pytest
from ray.tune.experiment import Trial

from sweep.outcome import trial_status as outcome
from sweep.progress import LiveTable


class Clock:
    """A settable monotonic clock (module level, so a LiveTable holding it still pickles)."""

    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Sweep:
    """Drives one LiveTable through trial events like Tune's controller does."""

    def __init__(self, table: LiveTable):
        self.table = table
        self.trials: list[Trial] = []

    def start(self, trial_id: str, study: str, seed: int = 0) -> Trial:
        t = Trial("sweep_trainable", config={"_study": study, "seed": seed, "arch": "mobilenet_v2"},
                  trial_id=trial_id, stub=True)
        self.trials.append(t)
        # Tune's controller calls on_trial_start while the trial is still PENDING, then sets it RUNNING
        self.table.on_trial_start(iteration=0, trials=self.trials, trial=t)
        t.set_status(Trial.RUNNING)
        return t

    def result(self, t: Trial, phase: str, epoch: int, val_acc: float) -> None:
        r = {"phase": phase, "epoch": epoch, "val_acc": val_acc, "status": "ok", "trial_done": False,
             "training_iteration": epoch}
        self.table.on_trial_result(iteration=0, trials=self.trials, trial=t, result=dict(r))
        t.update_last_result(r)

    def complete(self, t: Trial, final_val_acc: float | None, status: str = "ok", done: bool = True) -> None:
        r = {"phase": "finetune", "epoch": 3, "val_acc": final_val_acc, "status": status, "trial_done": done,
             "training_iteration": 4}
        if final_val_acc is not None:
            r["final_val_acc"] = final_val_acc
        if done:  # the final summary report
            self.table.on_trial_result(iteration=0, trials=self.trials, trial=t, result=dict(r))
            t.update_last_result(r)
        t.set_status(Trial.TERMINATED)
        self.table.on_trial_complete(iteration=0, trials=self.trials, trial=t)

    def error(self, t: Trial) -> None:
        t.set_status(Trial.ERROR)
        self.table.on_trial_error(iteration=0, trials=self.trials, trial=t)


@pytest.fixture
def blocks(caplog):
    """The blocks logged to sweep.progress so far (a function returning the list)."""
    caplog.set_level(logging.INFO, logger="sweep.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "sweep.progress"]


def best_lines(text: str) -> dict[str, str]:
    lines = text.splitlines()
    i = lines.index("best final_val_acc per study:")
    return {ln.split()[0]: ln for ln in lines[i + 1:]}


def test_best_per_study_counts_and_outcomes(blocks):
    clock = Clock()
    sweep = Sweep(LiveTable(interval_s=10, clock=clock, redraw=False))
    a1 = sweep.start("a1", "mobilenet_v2-admm", seed=0)
    a2 = sweep.start("a2", "mobilenet_v2-admm", seed=1)
    m1 = sweep.start("m1", "mobilenet_v2-magnitude")
    m2 = sweep.start("m2", "mobilenet_v2-magnitude")
    p = Trial("sweep_trainable", config={"_study": "mobilenet_v2-admm"}, trial_id="p1", stub=True)
    sweep.trials.append(p)  # PENDING: in Tune's list, not started
    sweep.result(a1, "sparsify", 2, 0.30)
    sweep.complete(a1, 0.61)
    sweep.complete(a2, 0.72)
    sweep.complete(m1, 0.99, status="diverged")  # never the best, whatever its number
    sweep.error(m2)
    clock.t += 65
    text = sweep.table.render()

    counts = text.splitlines()[0]
    assert counts == ("sweep: 0 running, 1 pending, 4 finished (2 ok, 1 diverged, 1 failed, 0 stopped), 1m05s")
    best = best_lines(text)
    assert "0.7200" in best["mobilenet_v2-admm"] and "a2" in best["mobilenet_v2-admm"]
    assert "(2 ok)" in best["mobilenet_v2-admm"]
    assert best["mobilenet_v2-magnitude"].split()[1] == "-"  # diverged and failed trials have no best
    rows = {ln.split()[0]: ln for ln in text.splitlines()[2:] if ln.split()[0] in ("a1", "a2", "m1", "m2")}
    # seed, phase, epoch, val_acc, pruned (the final accuracy once finished), status
    assert rows["a2"].split()[2:] == ["1", "finetune", "3", "0.7200", "0.7200", "ok"]
    assert rows["m1"].endswith("diverged") and rows["m2"].endswith("failed")
    assert blocks()[-1].startswith("sweep: 0 running, 1 pending, 4 finished (2 ok, 1 diverged, 1 failed")


def test_the_table_shows_the_projected_accuracy_early_stopping_ranks():
    """During ADMM's sparsify phase val_acc is of dense weights; the table shows beside it what the trial would
    score pruned now (projected_val_acc), the number the early stopping ranks (DESIGN rules 10, 14)."""
    sweep = Sweep(LiveTable(clock=Clock(), redraw=False))
    t = sweep.start("a1", "mobilenet_v2-admm")
    sweep.table.on_trial_result(iteration=0, trials=sweep.trials, trial=t, result={
        "phase": "sparsify", "epoch": 2, "val_acc": 0.31, "projected_val_acc": 0.13, "status": "ok",
        "trial_done": False, "training_iteration": 1})
    row = {ln.split()[0]: ln.split() for ln in sweep.table.render().splitlines()[2:]}["a1"]
    assert row[4:] == ["2", "0.3100", "0.1300", "RUNNING"]


def test_a_started_trial_without_results_is_running_not_pending():
    """A trial whose actor started but which has not reported yet (it is waiting for or building the shared
    dense model or the dense control) is running: it has a row and is not counted as pending."""
    sweep = Sweep(LiveTable(clock=Clock(), redraw=False))
    a = sweep.start("a1", "mobilenet_v2-admm")
    b = sweep.start("b1", "mobilenet_v2-magnitude")
    queued = Trial("sweep_trainable", config={"_study": "mobilenet_v2-admm"}, trial_id="q1", stub=True)
    sweep.trials.append(queued)  # created by the searcher, no resources yet
    sweep.result(a, "sparsify", 4, 0.5)
    text = sweep.table.render()
    assert text.splitlines()[0].startswith("sweep: 2 running, 1 pending, 0 finished")
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines()[2:] if ln.split()[0] in ("a1", "b1")}
    assert rows["b1"][3:] == ["-", "-", "-", "-", "RUNNING"] and rows["a1"][-1] == "RUNNING"
    assert b.status == Trial.RUNNING


def test_stopped_without_final_report_is_not_scored():
    sweep = Sweep(LiveTable(clock=Clock(), redraw=False))
    t = sweep.start("s1", "mobilenet_v2-admm")
    sweep.result(t, "sparsify", 2, 0.9)
    sweep.complete(t, None, done=False)  # ASHA stop: last result is an epoch report, no trial_done
    text = sweep.table.render()
    assert "0 ok, 0 diverged, 0 failed, 1 stopped" in text
    assert best_lines(text)["mobilenet_v2-admm"].split()[1] == "-"
    assert outcome({"trial_done": True, "status": "ok"}, False) == "ok"
    assert outcome(None, True) == "failed"
    assert outcome({"trial_done": False, "status": "ok"}, False) == "stopped"


def test_eta_from_the_pace_of_finished_trials():
    clock = Clock()
    sweep = Sweep(LiveTable(clock=clock, redraw=False, total=4))
    t = sweep.start("s1", "mobilenet_v2-admm")
    assert "left" not in sweep.table.render()  # no finished trial: no pace yet
    clock.t += 120
    sweep.complete(t, 0.8, done=True)
    assert "about 6m00s left (1/4)" in sweep.table.render()


def test_results_rate_limited_complete_and_error_always_logged(blocks):
    clock = Clock()
    sweep = Sweep(LiveTable(interval_s=10, clock=clock, redraw=False))
    t1 = sweep.start("t1", "mobilenet_v2-admm")
    t2 = sweep.start("t2", "mobilenet_v2-admm")
    assert blocks() == []  # starting a trial logs nothing
    sweep.result(t1, "sparsify", 2, 0.1)
    assert len(blocks()) == 1  # the first result is shown at once
    clock.t += 4
    sweep.result(t2, "sparsify", 2, 0.2)
    clock.t += 5.9
    sweep.result(t1, "finetune", 3, 0.3)
    assert len(blocks()) == 1  # 9.9 s since the last block
    clock.t += 0.1
    sweep.result(t2, "finetune", 3, 0.4)
    assert len(blocks()) == 2  # 10 s
    assert "t2" in blocks()[-1] and "0.4000" in blocks()[-1]
    sweep.error(t1)  # 0 s later: still logged
    assert len(blocks()) == 3 and "failed" in blocks()[-1]
    sweep.complete(t2, 0.5, done=False)  # also 0 s later
    assert len(blocks()) == 4
    clock.t += 9
    t3 = sweep.start("t3", "mobilenet_v2-admm")
    sweep.result(t3, "sparsify", 2, 0.6)
    assert len(blocks()) == 4  # a complete/error block restarts the interval too


def test_running_rows_capped_with_more_line():
    sweep = Sweep(LiveTable(max_rows=3, clock=Clock(), redraw=False))
    trials = [sweep.start(f"r{i}", "mobilenet_v2-admm", seed=i) for i in range(5)]
    sweep.complete(trials[0], 0.5)
    text = sweep.table.render()
    shown = [ln.split()[0] for ln in text.splitlines()[2:5]]
    assert shown == ["r1", "r2", "r3"]  # running first, in start order
    assert "(+1 running, +1 finished not shown)" in text
    assert "4 running, 0 pending, 1 finished" in text.splitlines()[0]


def test_redraw_clears_the_screen_plain_mode_does_not(blocks):
    sweep = Sweep(LiveTable(interval_s=0, clock=Clock(), redraw=True))
    t = sweep.start("t1", "mobilenet_v2-admm")
    sweep.result(t, "sparsify", 2, 0.1)
    sweep.result(t, "finetune", 3, 0.2)
    assert all(b.startswith("\x1b[H\x1b[2J") for b in blocks()) and len(blocks()) == 2
    assert blocks()[-1].count("\x1b") == 2  # only the prefix: the table itself is plain text
    plain = Sweep(LiveTable(interval_s=0, clock=Clock(), redraw=False))
    plain.result(plain.start("t2", "mobilenet_v2-admm"), "sparsify", 2, 0.1)
    assert blocks()[-1].startswith("sweep: ") and "\x1b" not in blocks()[-1]


def test_pickles_mid_sweep_and_keeps_its_table():
    clock = Clock()
    table = LiveTable(interval_s=10, clock=clock, redraw=True)
    sweep = Sweep(table)
    t = sweep.start("t1", "mobilenet_v2-admm")
    sweep.result(t, "sparsify", 2, 0.1)
    sweep.complete(t, 0.8)
    copy = pickle.loads(pickle.dumps(table))
    assert best_lines(copy.render())["mobilenet_v2-admm"].split()[1] == "0.8000"
    assert copy.last_emit is None  # a restored sweep shows its first result at once
    default = pickle.loads(pickle.dumps(LiveTable()))  # the CLI's form: time.monotonic clock
    assert default.interval_s == 10 and default.clock is time.monotonic  # survives the pickle as itself


def test_bad_arguments_rejected():
    with pytest.raises(ValueError):
        LiveTable(interval_s=-1)
    with pytest.raises(ValueError):
        LiveTable(max_rows=0)
