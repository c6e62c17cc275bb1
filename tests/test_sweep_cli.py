"""Bad input to ``python -m sweep``: one clear "error: ..." line naming the option, exit code 2, nothing
started, nothing overwritten. Subprocesses (the real CLI); no Ray is started by any of these."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweep import spaces as sp


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**os.environ, "RAY_ADDRESS": ""})


@pytest.mark.parametrize("args, option", [
    (["--space", "nope"], "--space"),
    (["--arch", "resnet18"], "--arch"),
    (["--set", "not_a_field=1"], "--set"),
    (["--set", "lr=50"], "--set"),
    (["--set", "lr"], "--set"),
    (["--dataset", "mnist"], "--dataset"),
    (["--sampler", "cmaes"], "--sampler"),
    (["--scheduler", "asha"], "--scheduler"),  # admm searches sparsity: multi-objective, no ASHA
    (["--trials", "0"], "--trials"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["--dense-epochs", "-1"], "--dense-epochs"),
])
def test_bad_run_option_exits_2_naming_it(args, option, tmp_path):
    r = cli("run", "--local", "--storage", str(tmp_path), "--name", "x", *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and option in r.stderr, r.stderr
    assert not (tmp_path / "x").exists(), "something was created before validation finished"


@pytest.mark.parametrize("text, field", [
    ('methods = ["admm"]\n[params]\nbogus = {type = "float", low = 0.1, high = 0.2}\n', "bogus"),
    ('methods = ["admm"]\n[params]\nlr = {type = "float", low = 0.01, high = 0.001}\n', "lr"),
    ('methods = ["admm"]\n[params]\nlr = {type = "float", low = 0.01, high = 0.01}\n', "lr"),
    ('methods = ["admm"]\n[params]\nrho = {type = "float", low = 0.0, high = 1.0, log = true}\n', "rho"),
    ('methods = ["admm"]\n[params]\nlr = {type = "float", low = "a", high = 1.0}\n', "lr"),
    ('methods = ["admm"]\n[params]\nsparsity = 1.5\n', "sparsity"),
    ('methods = ["admm"]\n[params]\nschedule = {type = "categorical", choices = ["weekly"]}\n', "schedule"),
    ('methods = ["sgd"]\n', "methods"),
    ('methods = ["admm"\n', "malformed"),
])
def test_bad_space_file_exits_2_naming_the_parameter(text, field, tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(text)
    r = cli("run", "--local", "--space", str(path), "--storage", str(tmp_path), "--name", "x")
    assert r.returncode == 2 and r.stderr.startswith("error: --space") and field in r.stderr, r.stderr


def test_yaml_space_file_loads_with_method_params(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("methods: [admm, magnitude]\nparams:\n  lr: {type: float, low: 0.0001, high: 0.01, log: true}\n"
                    "  sparsity: 0.7\nmethod_params:\n  admm:\n    rho: {type: float, low: 0.001, high: 0.1, log: true}\n")
    space = sp.load_space(str(path))
    assert space.name == "mine" and space.methods == ("admm", "magnitude")
    assert set(space.params_for("admm")) == {"lr", "sparsity", "rho"}
    assert set(space.params_for("magnitude")) == {"lr", "sparsity"}
    assert not space.searches_sparsity("admm")


def test_existing_name_without_resume_exits_2_and_keeps_files(tmp_path):
    (tmp_path / "taken").mkdir()
    marker = tmp_path / "taken" / "keep.txt"
    marker.write_text("mine")
    r = cli("run", "--local", "--storage", str(tmp_path), "--name", "taken")
    assert r.returncode == 2 and "--name" in r.stderr and "resume" in r.stderr, r.stderr
    assert marker.read_text() == "mine"


def test_resume_of_unknown_sweep_exits_2(tmp_path):
    r = cli("resume", "ghost", "--local", "--storage", str(tmp_path))
    assert r.returncode == 2 and "ghost" in r.stderr, r.stderr


def test_spaces_lists_every_builtin_with_ranges():
    r = cli("spaces")
    assert r.returncode == 0
    for name, space in sp.BUILTIN.items():
        assert f"{name}:" in r.stdout
        for method in space.methods:
            for param, d in space.params_for(method).items():
                assert f"[{method}] {param}: {d.describe()}" in r.stdout


@pytest.mark.parametrize("sub", ["run", "resume", "spaces"])
def test_help_on_each_command(sub):
    r = cli(sub, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout
