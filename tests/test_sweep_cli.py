"""Bad input to ``python -m sweep``: one clear "error: ..." line naming the option, exit code 2, nothing
started, nothing overwritten. Through sweep.cli.main(argv) in this process, and once as a real subprocess
(the smoke test that `python -m sweep` itself exits 2); no Ray is started by any of these."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sweep import spaces as sp


@pytest.fixture
def cli(sweep_main):
    """Runs ``python -m sweep ARGS`` in this process; asserts it started no Ray. Returns (code, out, err)."""
    import ray

    def run(*args: str) -> tuple[int, str, str]:
        was = ray.is_initialized()
        result = sweep_main(*args)
        assert ray.is_initialized() == was, "the command started Ray"
        return result

    return run


def test_the_real_command_exits_2_naming_the_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sweep", "run", "--local", "--space", "nope", "--storage",
                        str(tmp_path), "--name", "x"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "RAY_ADDRESS": ""})
    assert r.returncode == 2 and r.stderr.startswith("error: --space") and "nope" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


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
def test_bad_run_option_exits_2_naming_it(args, option, tmp_path, cli):
    code, _, stderr = cli("run", "--local", "--storage", str(tmp_path), "--name", "x", *args)
    assert code == 2, stderr
    assert stderr.startswith("error: ") and option in stderr, stderr
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
def test_bad_space_file_exits_2_naming_the_parameter(text, field, tmp_path, cli):
    path = tmp_path / "space.toml"
    path.write_text(text)
    code, _, stderr = cli("run", "--local", "--space", str(path), "--storage", str(tmp_path), "--name", "x")
    assert code == 2 and stderr.startswith("error: --space") and field in stderr, stderr


def test_yaml_space_file_loads_with_method_params(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("methods: [admm, magnitude]\nparams:\n  lr: {type: float, low: 0.0001, high: 0.01, log: true}\n"
                    "  sparsity: 0.7\nmethod_params:\n  admm:\n    rho: {type: float, low: 0.001, high: 0.1, log: true}\n")
    space = sp.load_space(str(path))
    assert space.name == "mine" and space.methods == ("admm", "magnitude")
    assert set(space.params_for("admm")) == {"lr", "sparsity", "rho"}
    assert set(space.params_for("magnitude")) == {"lr", "sparsity"}
    assert not space.searches_sparsity("admm")


def test_existing_name_without_resume_exits_2_and_keeps_files(tmp_path, cli):
    (tmp_path / "taken").mkdir()
    marker = tmp_path / "taken" / "keep.txt"
    marker.write_text("mine")
    code, _, stderr = cli("run", "--local", "--storage", str(tmp_path), "--name", "taken")
    assert code == 2 and "--name" in stderr and "resume" in stderr, stderr
    assert marker.read_text() == "mine"


def test_resume_of_unknown_sweep_exits_2(tmp_path, cli):
    code, _, stderr = cli("resume", "ghost", "--local", "--storage", str(tmp_path))
    assert code == 2 and "ghost" in stderr, stderr


def test_spaces_lists_every_builtin_with_ranges(cli):
    code, stdout, _ = cli("spaces")
    assert code == 0
    for name, space in sp.BUILTIN.items():
        assert f"{name}:" in stdout
        for method in space.methods:
            for param, d in space.params_for(method).items():
                assert f"[{method}] {param}: {d.describe()}" in stdout


@pytest.mark.parametrize("sub", ["run", "resume", "spaces"])
def test_help_on_each_command(sub, cli):
    code, stdout, _ = cli(sub, "--help")
    assert code == 0 and "usage:" in stdout
