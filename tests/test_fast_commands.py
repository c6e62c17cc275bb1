"""Commands that answer at once (issue 16): help, the space listing and every refusal import neither Ray, Optuna
nor torch (each costs seconds); and `python -m trainables train` shows its progress, one line per epoch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from helpers import TINY, train_args

HEAVY = ("ray", "optuna", "torch")

# runs each argv through the CLI's main() in one fresh interpreter; prints [argv, exit code, heavy modules]
PROBE = """
import json, sys
from {module} import main
out = []
for argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    out.append([argv, code, sorted(m for m in {heavy!r} if m in sys.modules)])
print("RESULT " + json.dumps(out))
"""


def _probe(module: str, argvs: list[list[str]], cwd) -> list:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY), json.dumps(argvs)],
                          capture_output=True, text=True, timeout=120, cwd=cwd)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stdout + proc.stderr
    return json.loads(line[0][len("RESULT "):])


def test_sweep_help_spaces_and_refusals_import_no_ray_optuna_torch(tmp_path):
    argvs = [["--help"], ["spaces"], ["run", "--help"], ["run", "--space", "nope"], ["run", "--sampler", "cmaes"],
             ["run", "--set", "lr=50"], ["run", "--scheduler", "asha"], ["run", "--arch", "resnet"],
             ["run", "--set", "sparsity_set=nm"], ["run", "--storage", str(tmp_path / "f" / "x")],
             ["resume", "x", "--cpus-per-trial", "-1"]]
    (tmp_path / "f").write_text("")
    results = _probe("sweep.cli", argvs, tmp_path)
    assert [code for _, code, _ in results] == [0, 0, 0] + [2] * (len(argvs) - 3), results
    assert all(loaded == [] for _, _, loaded in results), results


def test_trainables_help_and_refusals_import_no_torch(tmp_path):
    (tmp_path / "f").write_text("")
    argvs = [["train", "--help"], ["train", "--sparsity", "2"], ["train", "--method", "lottery"],
             ["train", "--out", str(tmp_path / "f" / "x")], ["train", "--dense-cache", str(tmp_path / "f")],
             ["train", "--resume", str(tmp_path / "missing")]]
    results = _probe("trainables.__main__", argvs, tmp_path)
    assert [code for _, code, _ in results] == [0, 2, 2, 2, 2, 2], results
    assert all(loaded == [] for _, _, loaded in results), results


LINE = re.compile(r"^(dense|control|sparsify|finetune) epoch (\d+)/(\d+)  loss \S+  val_acc \S+ .* img/s  \S+ left$")


@pytest.mark.slow  # two short trainings
def test_train_prints_one_line_per_epoch_dense_included_and_none_with_quiet(trainables_main):
    code, _, err = trainables_main("train", *train_args(TINY))
    assert code == 0, err
    lines = [m.groups() for m in map(LINE.match, err.splitlines()) if m]
    expected = [("dense", "1", "1"), ("sparsify", "1", "2"), ("sparsify", "2", "2"), ("finetune", "1", "1")]
    assert lines == expected, err
    assert err.strip().splitlines()[-1].startswith("ok: final_val_acc")
    code, _, err = trainables_main("train", *train_args(TINY), "-q")
    assert code == 0 and "epoch" not in err and "final_val_acc" not in err, err
