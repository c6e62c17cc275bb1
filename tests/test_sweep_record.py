"""The sweep's options as one frozen, typed record (sweep.record.SweepOptions, issue 17): one from_dict that
names a bad key, a versioned sweep.json that the sweeps started before the record still load from, and
``--reference METHOD`` (refused with exit 2 before anything starts; kept in sweep.json as "reference").

The version 1 file below is exactly what ``python -m sweep run --space compare --local --trials 1 ...``, then
``resume old --trials 1`` and ``confirm old --seeds 1`` wrote before the record (the run command's argparse
namespace plus archs, base and optuna_storage; tune_dir and confirm added by the later commands).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import helpers
from vocabulary.registry import SAMPLER_STARTUP
from sweep.record import DROPPED_BY_V2, VERSION, SweepOptions, SweepOptionsError, read, write

V1_SWEEP_JSON = """{
 "arch": null,
 "archs": [
  "mobilenet_v2"
 ],
 "base": {
  "batch_size": 64,
  "bn_recal_batches": 2,
  "dataset": "synthetic",
  "dense_epochs": 1,
  "finetune_epochs": 1,
  "keep_model": true,
  "max_threads": 1,
  "sparsify_epochs": 1,
  "sparsity": 0.5,
  "synthetic_test": 64,
  "synthetic_train": 256,
  "width": 0.1
 },
 "command": "run",
 "confirm": {
  "seeds": [
   1
  ]
 },
 "cpus_per_trial": 1.0,
 "data_dir": null,
 "dataset": "synthetic",
 "dense_epochs": 1,
 "finetune_epochs": 1,
 "gpus_per_trial": 0.0,
 "keep_models": "chosen",
 "local": true,
 "max_concurrent": 0,
 "max_failures": 2,
 "name": "old",
 "optuna_storage": "optuna.journal",
 "sampler": "tpe",
 "scheduler": "none",
 "seeds": 1,
 "set": [
  "synthetic_train=256",
  "synthetic_test=64",
  "batch_size=64",
  "bn_recal_batches=2",
  "max_threads=1",
  "sparsity=0.5"
 ],
 "space": "compare",
 "sparsify_epochs": 1,
 "storage": "/tmp/sw_old/exp",
 "trials": 2,
 "tune_dir": "extend-1",
 "verbose": false,
 "width": 0.1
}"""

# the keys analysis/ reads from sweep.json as a plain dict (analysis.load, analysis.tables, analysis.summary)
ANALYSIS_KEYS = ("seeds", "sampler", "storage", "optuna_storage", "confirm")


def test_a_sweep_json_written_before_the_record_loads_as_it_ran():
    old = json.loads(V1_SWEEP_JSON)
    options = SweepOptions.from_dict(old)
    assert (options.name, options.storage, options.space, options.archs) == ("old", "/tmp/sw_old/exp", "compare",
                                                                              ("mobilenet_v2",))
    assert dict(options.base) == old["base"] and options.set == tuple(old["set"])
    assert (options.trials, options.seeds, options.sampler, options.scheduler, options.keep_models) == \
        (2, 1, "tpe", "none", "chosen")
    assert (options.max_failures, options.max_concurrent, options.local) == (2, 0, True)
    assert (options.cpus_per_trial, options.gpus_per_trial, options.optuna_storage) == (1.0, 0.0, "optuna.journal")
    assert options.tune_dir == "extend-1" and options.confirm_seeds == (1,)
    assert options.reference == "magnitude" and options.version == VERSION  # read as version 1, held as 2
    new = options.to_dict()
    assert {k: new[k] for k in ANALYSIS_KEYS} == {k: old[k] for k in ANALYSIS_KEYS}  # what analysis reads
    assert new["version"] == VERSION and not set(DROPPED_BY_V2) & set(new)
    # the dropped keys were only an echo: every one of them is in base or archs, resolved
    assert all(old[k] == old["base"][k] for k in ("dataset", "width", "dense_epochs", "sparsify_epochs",
                                                  "finetune_epochs"))


def test_a_version_1_file_without_keep_models_keeps_every_model_as_the_sweep_did():
    assert SweepOptions.from_dict({"name": "s", "seeds": 2}).keep_models == "all"
    assert SweepOptions.from_dict({"name": "s", "version": VERSION}).keep_models == "chosen"  # the record's default


def test_round_trip_through_sweep_json(tmp_path):
    options = dataclasses.replace(SweepOptions.from_dict(json.loads(V1_SWEEP_JSON)), reference="admm")
    assert SweepOptions.from_dict(options.to_dict()) == options
    write(str(tmp_path), options)
    on_disk = json.loads((tmp_path / "sweep.json").read_text())
    assert on_disk["reference"] == "admm" and on_disk["version"] == VERSION and on_disk["confirm"] == {"seeds": [1]}
    assert read(str(tmp_path)) == options and read(str(tmp_path / "none")) is None
    fresh = SweepOptions()  # no confirmation yet: no "confirm" key, as before the record
    assert "confirm" not in fresh.to_dict() and SweepOptions.from_dict(fresh.to_dict()) == fresh


def test_the_record_is_frozen():
    options = SweepOptions.from_dict(json.loads(V1_SWEEP_JSON))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.trials = 3
    with pytest.raises(TypeError):
        options.base["width"] = 1.0  # base is read-only too
    assert dataclasses.replace(options, trials=3).trials == 3 and options.trials == 2


@pytest.mark.parametrize("key, value, field", [
    ("bogus", 1, "bogus"),
    ("trials", 0, "trials"),
    ("seeds", "2", "seeds"),
    ("max_failures", True, "max_failures"),
    ("sampler", "cmaes", "sampler"),
    ("scheduler", "hyperband", "scheduler"),
    ("keep_models", "some", "keep_models"),
    ("reference", "random", "reference"),
    ("archs", ["resnet18"], "archs"),
    ("archs", [], "archs"),
    ("base", {"not_a_field": 1}, "base.not_a_field"),
    ("local", "yes", "local"),
    ("cpus_per_trial", 0, "cpus_per_trial"),
    ("gpus_per_trial", -0.5, "gpus_per_trial"),
    ("confirm", {"seeds": [-1]}, "confirm.seeds"),
    ("confirm", {"sead": [1]}, "confirm"),
    ("tune_dir", "", "tune_dir"),
    ("version", 3, "version"),
])
def test_a_bad_key_or_value_is_refused_naming_the_key(key, value, field):
    for version in ({}, {"version": VERSION}):  # version 1 and 2 alike
        raw = {**json.loads(V1_SWEEP_JSON), **version, key: value}
        if version:
            raw = {k: v for k, v in raw.items() if k not in DROPPED_BY_V2}
        with pytest.raises(SweepOptionsError) as err:
            SweepOptions.from_dict(raw)
        assert err.value.field == field and str(err.value).startswith(f"{field}: "), str(err.value)
    with pytest.raises(SweepOptionsError) as err:  # a version 1 key is unknown in a version 2 file
        SweepOptions.from_dict({"version": VERSION, "command": "run"})
    assert err.value.field == "command"


def test_a_bad_sweep_json_stops_resume_and_confirm_naming_the_sweep_and_the_key(tmp_path, sweep_main):
    exp = tmp_path / "s"
    exp.mkdir()
    (exp / "sweep.json").write_text(json.dumps({**json.loads(V1_SWEEP_JSON), "sampler": "cmaes"}))
    for command in (["resume", "s"], ["confirm", "s", "--seeds", "1"]):
        code, _, err = sweep_main(*command, "--storage", str(tmp_path))
        assert code == 2 and err.startswith("error: NAME") and "sampler" in err and "cmaes" in err, err
    assert sorted(os.listdir(exp)) == ["sweep.json"]


@pytest.mark.parametrize("args, said", [
    (["--reference", "random"], "not a registered method"),
    (["--space", "admm", "--reference", "magnitude"], "not among space 'admm'"),
    (["--space", "baseline", "--reference", "admm"], "not among space 'baseline'"),
])
def test_a_bad_reference_exits_2_naming_the_option_before_anything_starts(args, said, tmp_path, sweep_main):
    import ray

    was = ray.is_initialized()
    code, _, err = sweep_main("run", "--local", "--storage", str(tmp_path), "--name", "x", *args)
    assert code == 2 and err.startswith("error: --reference") and said in err, err
    assert ray.is_initialized() == was and not (tmp_path / "x").exists()


@pytest.mark.parametrize("grid, sampler", [(True, "tpe"), (False, "nsga2"), (False, "gp")])
def test_the_report_reads_the_search_facts_the_record_writes(grid, sampler):
    # analysis cannot import sweep: the keys are the contract. Before the record wrote them, a grid sweep
    # (the seed space: one configuration per study) got the caution "essentially random search"
    from analysis import search_info

    written = SweepOptions.from_dict({"sampler": sampler, "grid": grid,
                                      "sampler_startup_trials": SAMPLER_STARTUP[sampler]}).to_dict()
    search = search_info([json.loads(json.dumps(written))])
    assert search.known and search.grid is grid and search.sampler == sampler
    assert search.startup == SAMPLER_STARTUP[sampler]


def test_each_sampler_is_built_with_the_random_start_sweep_json_records():
    from sweep.searcher import make_sampler

    assert make_sampler("tpe", 1)._n_startup_trials == SAMPLER_STARTUP["tpe"]
    assert make_sampler("gp", 1)._n_startup_trials == SAMPLER_STARTUP["gp"]
    assert make_sampler("nsga2", 1)._population_size == SAMPLER_STARTUP["nsga2"]


@pytest.mark.slow
def test_the_reference_is_kept_in_sweep_json_and_resume_reads_it(tmp_path):
    """A real tiny sweep (one configuration per method): sweep.json is version 2 with the given reference, and
    a plain resume of the finished sweep reads it back and runs nothing."""
    env = {**os.environ, "RAY_ADDRESS": ""}
    tiny = ["--dataset", helpers.TINY["dataset"], "--width", "0.1", "--dense-epochs", "1", "--sparsify-epochs",
            "1", "--finetune-epochs", "1", "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--set",
            "max_threads=1", "--set", "sparsity=0.5",
            *helpers.sweep_set_args({k: helpers.TINY[k] for k in ("synthetic_train", "synthetic_test", "batch_size",
                                                                 "bn_recal_batches")})]
    for argv in (["run", "--space", "compare", "--local", "--trials", "1", "--reference", "admm", "--name", "r",
                  *tiny], ["resume", "r"]):
        r = subprocess.run([sys.executable, "-m", "sweep", *argv, "--storage", str(tmp_path)], capture_output=True,
                           text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    on_disk = json.loads((tmp_path / "r" / "sweep.json").read_text())
    assert on_disk["reference"] == "admm" and on_disk["version"] == VERSION and on_disk["trials"] == 1
    # the facts the report's search caution reads: not a grid, TPE's random start as the sweep built it
    assert on_disk["grid"] is False and on_disk["sampler_startup_trials"] == SAMPLER_STARTUP["tpe"]
    options = read(str(tmp_path / "r"))
    assert options.reference == "admm" and options.archs == ("mobilenet_v2",) and options.local is True
