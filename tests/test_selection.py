"""A configuration is judged on all its seeds (DESIGN rule 15): one rule (results.selection) used by Optuna
(sweep.searcher.tell), the tables and the summary. A lucky survivor (seed 0 ok, seed 1 diverged, seed 2
stopped) is never chosen over a configuration whose three seeds finished; a failed, missing or still-running
seed leaves a configuration incomplete; device type and precision are part of a configuration; pairs lost
are said.

Rows are built in memory as analysis.load gives them, with a real TrialConfig's hyperparameter columns.
"""

from __future__ import annotations

import itertools
import math

import optuna
import pandas as pd
import pytest

from results import schema, selection
from vocabulary.config import TrialConfig

ARCH = "mobilenet_v2"


def _row(tid, method, seed, status="ok", val=0.6, test=0.6, lr=1e-3, device="cpu", experiment="exp", **over):
    """One trials row: every schema column; failed rows look like sweep.ray_tune.EndWriter writes them (no
    device, no target, no accuracies)."""
    cfg = TrialConfig.from_dict({"method": method, "lr": lr, "sparsity": 0.5, "dense_epochs": 1,
                                 "sparsify_epochs": 2, "finetune_epochs": 1, "admm_interval": 1, **over})
    row = {name: None for name in schema.TRIALS.names}
    row.update({k: v for k, v in cfg.hyperparameters().items() if k in schema.HYPERPARAMETERS})
    row.update(arch=ARCH, method=method, experiment=experiment, experiment_dir=f"/x/{experiment}", trial_id=tid,
               seed=seed, status=status, error="" if status == "ok" else status, study=f"{ARCH}-{method}",
               optuna_trial=0, space="compare", dense_key=f"d{seed}", control_key=f"c{seed}", wall_time_s=1.0,
               dense_epochs=1, sparsify_epochs=2, finetune_epochs=1, epochs_run=4)
    for stage in schema.ACC_STAGES:
        row[f"{stage}_val_acc"] = row[f"{stage}_test_acc"] = math.nan
    if status == "failed":
        return row
    row.update(device=device, target_sparsity=0.5, achieved_sparsity=0.5, total_params=1000, nonzero_params=550,
               prunable_params=900, prunable_nonzero=450, dense_macs=5000, nonzero_macs=2500)
    if status == "ok":
        row.update(final_val_acc=val, final_test_acc=test, dense_val_acc=0.8, dense_test_acc=0.8,
                   pre_prune_test_acc=0.7, post_prune_test_acc=0.5, post_prune_stale_bn_test_acc=0.2)
    return row


def _lucky_sweep() -> list[dict]:
    """The measured case: admm lr 1e-3 has seed 0 ok (val 0.615), seed 1 diverged, seed 2 stopped; admm
    lr 1e-4 has three ok seeds (val 0.577); magnitude three ok seeds."""
    rows = [_row("lucky0", "admm", 0, val=0.615, test=0.62), _row("lucky1", "admm", 1, "diverged"),
            _row("lucky2", "admm", 2, "stopped")]
    rows += [_row(f"full{s}", "admm", s, val=0.577, test=0.58 + 0.01 * s, lr=1e-4) for s in range(3)]
    rows += [_row(f"mag{s}", "magnitude", s, val=0.55, test=0.57 + 0.01 * s) for s in range(3)]
    return rows


def test_a_lucky_survivor_is_never_chosen_and_pairs_are_not_lost():
    from analysis.tables import best_configs, paired_comparison

    trials = pd.DataFrame(_lucky_sweep())
    best = best_configs(trials, 0.5).set_index("method")
    assert best.loc["admm", "lr"] == 1e-4 and best.loc["admm", "n_seeds"] == 3
    assert best.loc["admm", "final_val_acc_mean"] == pytest.approx(0.577)
    paired = paired_comparison(trials).iloc[0]
    assert paired["n_pairs"] == 3 and paired["seeds"] == "0,1,2"


def test_the_passed_over_configuration_is_listed_with_its_state():
    from analysis.tables import config_states

    states = config_states(pd.DataFrame(_lucky_sweep())).set_index("lr")
    admm = states[states["method"] == "admm"]
    assert admm.loc[1e-3, "state"] == selection.DIVERGED and admm.loc[1e-4, "state"] == selection.COMPLETE
    assert admm.loc[1e-3, "seeds_ok"] == 1 and admm.loc[1e-3, "seeds_expected"] == 3
    assert admm.loc[1e-3, "seed_statuses"] == "0 ok, 1 diverged, 2 stopped"


@pytest.mark.parametrize("status", ["failed", "stopped"])
def test_a_failed_or_stopped_seed_keeps_a_configuration_from_being_chosen(status):
    """The failed row has no device and no target sparsity (EndWriter's row): it still counts."""
    from analysis.tables import best_configs

    rows = [_row("a0", "admm", 0, val=0.9), _row("a1", "admm", 1, val=0.9), _row("a2", "admm", 2, status)]
    rows += [_row(f"b{s}", "admm", s, val=0.6, lr=1e-4) for s in range(3)]
    best = best_configs(pd.DataFrame(rows), 0.5)
    assert best["lr"].tolist() == [1e-4] and best["n_seeds"].tolist() == [3]


def test_the_sweeps_seeds_count_seeds_not_yet_run():
    """sweep.json says --seeds 3: a configuration with one ok row (two still running) is incomplete. Given
    rows only, its seeds are those seen, so it is complete with one seed."""
    from analysis.tables import SWEEP_SEEDS, best_configs

    rows = [_row("a0", "admm", 0, val=0.9)] + [_row(f"b{s}", "admm", s, val=0.6, lr=1e-4) for s in range(3)]
    assert best_configs(pd.DataFrame(rows), 0.5)["lr"].tolist() == [1e-3]
    best = best_configs(pd.DataFrame(rows).assign(**{SWEEP_SEEDS: 3}), 0.5)
    assert best["lr"].tolist() == [1e-4]


def test_device_type_and_precision_split_configurations():
    """The same hyperparameters on CPU (float32) in one experiment and CUDA (bf16) in another are two
    configurations of three seeds each, never one of six rows; a failed CUDA row (no device recorded) counts
    against the CUDA configuration only."""
    from analysis.tables import best_configs, config_states, config_summary

    rows = [_row(f"cpu{s}", "admm", s, val=0.6) for s in range(3)]
    rows += [_row(f"gpu{s}", "admm", s, val=0.9, device="cuda:0", experiment="gpu") for s in range(3)]
    summary = config_summary(pd.DataFrame(rows))
    assert sorted(summary["device_type"]) == ["cpu", "cuda"] and summary["n_seeds"].tolist() == [3, 3]
    assert sorted(summary["precision"]) == ["bf16", "fp32"]
    rows.append(_row("gpu3", "admm", 3, "failed", experiment="gpu"))
    states = config_states(pd.DataFrame(rows)).set_index("device_type")["state"]
    assert states.to_dict() == {"cpu": selection.COMPLETE, "cuda": selection.INCOMPLETE}
    assert best_configs(pd.DataFrame(rows), 0.5)["device_type"].tolist() == ["cpu"]


def test_every_row_of_a_merged_configuration_counts():
    """A second experiment ran the same configuration (same device) again and seed 1 diverged there: the
    configuration is diverged, whatever the first experiment's rows say."""
    from analysis.tables import best_configs, config_states

    rows = [_row(f"a{s}", "admm", s, val=0.9) for s in range(3)]
    rows += [_row(f"again{s}", "admm", s, "diverged" if s == 1 else "ok", val=0.9, experiment="again")
             for s in range(3)]
    rows += [_row(f"b{s}", "admm", s, val=0.6, lr=1e-4) for s in range(3)]
    states = config_states(pd.DataFrame(rows)).set_index("lr")["state"]
    assert states[1e-3] == selection.DIVERGED
    assert best_configs(pd.DataFrame(rows), 0.5)["lr"].tolist() == [1e-4]


def test_pairs_lost_are_said():
    """Merged experiments: admm's chosen configuration completed seeds 0-2, magnitude's only 0-1 (its
    experiment ran 2 seeds): 2 pairs, seed 2 lost, and the summary's caution says so."""
    from analysis.summary import summary_table
    from analysis.tables import paired_comparison

    rows = [_row(f"a{s}", "admm", s, test=0.6 + 0.01 * s) for s in range(3)]
    rows += [_row(f"m{s}", "magnitude", s, test=0.5, experiment="two") for s in range(2)]
    paired = paired_comparison(pd.DataFrame(rows)).iloc[0]
    assert paired["n_pairs"] == 2 and paired["pairs_lost"] == "2 (admm only)"
    caution = summary_table(pd.DataFrame(rows)).iloc[0]["caution"]
    assert "pairs lost: seed 2 (admm only)" in caution


# --- the rule itself, and Optuna told by it ---------------------------------------------------------------

@pytest.mark.parametrize("statuses, expected, state", [
    (["ok", "ok", "ok"], (), selection.COMPLETE),
    (["ok", "diverged", "stopped"], (), selection.DIVERGED),
    (["ok", "stopped", "failed"], (), selection.STOPPED),
    (["ok", "failed", "ok"], (), selection.INCOMPLETE),
    (["ok", None, "ok"], (), selection.INCOMPLETE),  # still running
    (["ok", "ok"], (0, 1, 2), selection.INCOMPLETE),  # seed 2 never ran
    ([], (), selection.INCOMPLETE),
])
def test_config_state(statuses, expected, state):
    assert selection.config_state(enumerate(statuses), expected) == state


OPTUNA_STATE = {selection.COMPLETE: optuna.trial.TrialState.COMPLETE, selection.STOPPED: optuna.trial.TrialState.PRUNED,
                selection.DIVERGED: optuna.trial.TrialState.FAIL, selection.INCOMPLETE: optuna.trial.TrialState.FAIL}


def _ray_result(status: str) -> tuple[dict | None, bool]:
    """What Tune hands the searcher for a seed that ended with ``status`` (sweep.outcome's definitions)."""
    if status == "failed":
        return None, True
    if status == "stopped":
        return {"trial_done": False, "status": "ok", "val_acc": 0.5}, False
    return {"trial_done": True, "status": status, "final_val_acc": 0.7}, False


def test_optuna_is_told_what_the_shared_rule_says():
    """Every combination of three seeds' ends: the Optuna trial's state is the rule's state (complete ->
    COMPLETE with the mean over all seeds, stopped -> PRUNED, diverged and incomplete -> FAIL)."""
    from sweep.searcher import classify, tell

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(), direction="maximize")
    for combo in itertools.product(("ok", "diverged", "failed", "stopped"), repeat=3):
        trial = study.ask()
        told = [classify(*_ray_result(s), ("final_val_acc",)) for s in combo]
        tell(study, trial.number, told)
        frozen = study.trials[trial.number]
        state = selection.config_state(enumerate(combo))
        assert frozen.state == OPTUNA_STATE[state], combo
        if state == selection.COMPLETE:
            assert frozen.value == pytest.approx(0.7)


def test_older_journal_entries_read_as_the_same_statuses():
    assert [selection.seed_status(t) for t in ({"state": "ok", "values": [1.0]}, {"state": "pruned"},
                                               {"state": "fail", "why": "diverged"}, {"state": "fail"})] \
        == ["ok", "stopped", "diverged", "failed"]


@pytest.mark.slow
def test_the_report_reads_the_sweeps_seeds_and_lists_configurations_not_chosen(tmp_path):
    """An experiment folder with sweep.json {"seeds": 3}: admm lr 1e-3 has written one ok seed so far (the
    others still running), so `python -m analysis report` must not choose it, and lists it as incomplete."""
    import json
    import os
    import subprocess
    import sys

    rows = [_row("a0", "admm", 0, val=0.9, experiment="exp")]
    rows += [_row(f"b{s}", "admm", s, val=0.6, lr=1e-4) for s in range(3)]
    rows += [_row(f"m{s}", "magnitude", s, val=0.6) for s in range(3)]
    for r in rows:
        r = {k: v for k, v in r.items() if k != "experiment_dir"}
        schema.write_trial_table(str(tmp_path), "trials", [{k: v for k, v in r.items()
                                                           if k not in schema.PARTITION_COLUMNS}],
                                 arch=r["arch"], method=r["method"], trial_id=r["trial_id"])
    (tmp_path / "sweep.json").write_text(json.dumps({"seeds": 3, "sampler": "tpe"}))
    out = tmp_path.parent / f"{tmp_path.name}-report"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "analysis", "report", str(tmp_path), "--out", str(out),
                           "--no-importance"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    chosen = pd.read_csv(out / "tables" / "best_hyperparameters.csv")
    assert chosen.loc[chosen["method"] == "admm", "trial_ids"].tolist() == ["b0,b1,b2"]
    not_chosen = pd.read_csv(out / "tables" / "not_chosen.csv")
    assert not_chosen["trial_ids"].tolist() == ["a0"] and not_chosen["state"].tolist() == ["incomplete"]
    assert not_chosen["seed_statuses"].tolist() == ["0 ok, 1 not run, 2 not run"]
    markdown = (out / "report.md").read_text()
    assert "## Configurations not chosen" in markdown and "sign-flip" in markdown
