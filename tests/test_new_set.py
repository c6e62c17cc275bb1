"""Adding a sparsity set edits its module and one registration line, nothing else (issue 17).

The throwaway set is row sparsity (tests/row_set.py); REGISTRATION is the line a newcomer adds to
vocabulary/registry.py SETS. In-process, the line runs against the registry (monkeypatched, restored after
the test): trainables resolves it, the generated --sparsity-set help lists it, and the method contract runs
on it. The slow tests make the real edit (the line appended to a copy of vocabulary/registry.py) in a fresh
interpreter: tests/test_contracts.py, unedited, runs its set contract on it, and a trial runs on it from the
command line (config validation, the layer report on disk, the --sparsity-set help and refusal).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from helpers import register

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

# the one line a newcomer adds to vocabulary/registry.py (after SETS: it names tests/row_set.py)
REGISTRATION = ('SETS["row"] = SetSpec(help="sparsity in every output row (a conv filter, a linear row) of every '
                'layer", module="row_set", fields=("sparsity",))')


@pytest.fixture
def registered(monkeypatch):
    """REGISTRATION run against the registry (a copy of SETS, restored after the test)."""
    return register(monkeypatch, "SETS", REGISTRATION, "row")


def test_trainables_resolves_it_and_builds_it_from_its_own_fields(registered):
    import torch

    from vocabulary.config import PruneConfig
    from trainables.sparsity import SETS, make_sparsity_set, sparsity_set

    assert list(SETS) == ["uniform", "global", "nm", "row"] and "row" in SETS
    sset = sparsity_set(PruneConfig(sparsity_set="row", sparsity=0.5, nm_n=1, nm_m=8))
    assert type(sset).__name__ == "RowSet" and sset.level == 0.5
    assert sparsity_set(PruneConfig(sparsity_set="row", sparsity=0.5), level=0.75).level == 0.75
    t = torch.tensor([[1.0, -3.0, 2.0, 0.5], [2.0, 2.0, -1.0, 2.0]])
    (mask,) = sset.masks([t])  # two of every row (ties: the lower index), where uniform would keep three 2s
    assert mask.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert sset.kept_count([t]) == 4 and sset.project([t])[0].tolist() == [[0, -3, 2, 0], [2, 2, 0, 0]]
    with pytest.raises(ValueError, match="does not read nm_n"):
        make_sparsity_set("row", 0.5, nm_n=2)  # its declared fields are the ones it may be given


def test_the_sparsity_set_help_lists_it(registered):
    from vocabulary import config as C

    assert f"row: {registered.help}" in C.field_help()["sparsity_set"]


def test_the_method_contract_runs_on_it(registered):
    import torch

    import method_contract as MC

    every = MC.variants()
    for name, prune in every:
        for opt_name, make_opt in (("adam", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
                                   ("sgd_wd", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True,
                                                                        weight_decay=5e-3))):
            MC.check_zeros_stay_zero_through_masked_finetuning(name, prune, "row", opt_name, make_opt)
        MC.check_resume_is_exact(name, prune, "row")
        MC.check_differs_from_the_other_methods(name, prune, "row", every)
        MC.check_reports_only_declared_metrics(name, prune, "row")


def _edited_copy(tmp_path) -> dict:
    """The real edit: a copy of vocabulary/ with the line appended to registry.py, shadowing the project's
    (the environment of a fresh interpreter that sees it)."""
    shutil.copytree(os.path.join(ROOT, "vocabulary"), tmp_path / "vocabulary",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "vocabulary" / "registry.py", "a") as f:
        f.write("\n" + REGISTRATION + "\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), TESTS, ROOT]))


@pytest.mark.slow
def test_one_registration_line_joins_the_contract_tests_unedited(tmp_path):
    """tests/test_contracts.py parametrizes over the registry: with the line, its set tests run on row too
    (and its config-names check still holds), with no edit to the test file."""
    env = _edited_copy(tmp_path)
    selected = "row or uniform or registries_match or every_set_at_every_level"
    run = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-k", selected,
                          os.path.join(TESTS, "test_contracts.py")], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    passed = {kind: len(re.findall(rf"[-\[]{kind}\] PASSED", run.stdout)) for kind in ("row", "uniform")}
    assert passed["row"] >= 30 and passed["row"] == passed["uniform"], passed  # every test uniform joins
    assert re.search(r"test_registries_match_config_names PASSED", run.stdout)
    assert len(re.findall(r"test_every_set_at_every_level_keeps_what_it_reports_on_every_arch\S* PASSED",
                          run.stdout)) == 9  # 3 archs x 3 widths, every set (row among them) at every level


SCRIPT = r"""
import contextlib, io, json, sys
import pandas as pd
from vocabulary import config as C
from trainables.__main__ import main
from helpers import TINY, train_args

out = {"sets": list(C.SPARSITY_SETS)}
text = io.StringIO()
with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
    main(["train", "--help"])
out["help"] = " ".join(text.getvalue().split())
err = io.StringIO()
with contextlib.redirect_stderr(err):
    out["bad_rc"] = main(["train", "--sparsity-set", "rows"])
out["bad_msg"] = err.getvalue()
cfg = dict(TINY, method="magnitude", schedule="gradual", sparsity_set="row", sparsity=0.5)
out["rc"] = main(["train", *train_args(cfg), "--out", sys.argv[1], "-q"])
trials = pd.read_parquet(sys.argv[1] + "/results/trials")
layers = pd.read_parquet(sys.argv[1] + "/results/layers")
layers = layers[layers.prunable]
out["trial"] = {k: str(trials[k].iloc[0]) for k in ("status", "sparsity_set")}
out["achieved"] = float(trials["achieved_sparsity"].iloc[0])
out["targets"] = sorted({round(float(t), 6) for t in layers.target_sparsity})
out["at_least_target"] = bool((layers.sparsity >= layers.target_sparsity - 1e-9).all())
out["wanted"] = float((layers.target_sparsity * layers.numel).sum() / layers.numel.sum())
print(json.dumps(out))
"""


@pytest.mark.slow
def test_one_registration_line_reaches_config_the_cli_and_a_trial(tmp_path):
    env = _edited_copy(tmp_path)
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "exp")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["sets"] == ["uniform", "global", "nm", "row"]
    assert "one of: uniform, global, nm, row" in out["help"]
    assert "row: sparsity in every output row (a conv filter, a linear row) of every layer" in out["help"]
    assert out["bad_rc"] == 2 and "sparsity_set" in out["bad_msg"] and "row" in out["bad_msg"]
    assert out["rc"] == 0 and out["trial"] == {"status": "ok", "sparsity_set": "row"}
    # rows of 9 and 25 (depthwise 3x3, 5x5 filters) keep 5 and 13: floor(0.5 * r) zeros per row, as declared
    assert out["targets"] == [0.444444, 0.48, 0.5]
    assert out["at_least_target"] and out["achieved"] >= out["wanted"] - 1e-3  # kept through fine-tuning
