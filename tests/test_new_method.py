"""Adding a pruning method edits its module and one registration line, nothing else (issue 17).

The throwaway method is random pruning (tests/random_method.py); REGISTRATION is the line a newcomer adds to
vocabulary/registry.py METHODS. In-process, the line runs against the registry (monkeypatched, restored after
the test): the check hook, the declared metric's epochs column, the generated --method help and the method
contract reach it. The slow test makes the real edit (the line appended to a copy of vocabulary/registry.py)
and runs a trial in a fresh interpreter: config validation, the epochs table on disk, the CLI help.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from helpers import register

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)

# the one line a newcomer adds to vocabulary/registry.py (after METHODS: it names tests/random_method.py)
REGISTRATION = ('METHODS["random"] = MethodSpec(help="random pruning: a mask drawn at random once, kept by masked '
                'training", module="random_method", metrics=(Metric("random_kept", "int", '
                '"random: weights its mask keeps"),))')


@pytest.fixture
def registered(monkeypatch):
    """REGISTRATION run against the registry (a copy of METHODS, restored after the test)."""
    return register(monkeypatch, "METHODS", REGISTRATION, "random")


def _config(**overrides):
    """TINY with the random method; built past validation (vocabulary.config derived its name tuple at import,
    before this test registered the method: the slow test validates it for real)."""
    from vocabulary.config import TrialConfig
    from helpers import TINY

    cfg = TrialConfig.from_dict({**TINY, **overrides})
    return dataclasses.replace(cfg, prune=dataclasses.replace(cfg.prune, method="random"))


def test_check_trial_calls_the_methods_own_check(registered, tiny_splits):
    from vocabulary.config import ConfigError
    from trainables.trial import check_trial

    check_trial(_config(sparsify_epochs=2), tiny_splits)  # a sparsify phase: nothing to refuse
    with pytest.raises(ConfigError) as err:
        check_trial(_config(sparsify_epochs=0), tiny_splits)
    assert err.value.field == "sparsify_epochs" and "random pruning" in str(err.value)
    admm = _config(sparsify_epochs=0)
    check_trial(dataclasses.replace(admm, prune=dataclasses.replace(admm.prune, method="admm")), tiny_splits)
    # ADMM's check has no such rule: each method's hook is its own


def test_its_declared_metric_is_an_epochs_column_and_fills_the_row(registered):
    import math

    import pyarrow as pa

    from results import schema
    from trainables.methods import metric_columns

    columns = schema.method_metric_columns()
    assert columns[-1] == ("random_kept", pa.int64())
    assert [n for n, _ in columns[:-1]] == ["primal_residual", "dual_residual", "rho", "mask_changes"]
    row = metric_columns("random", {"random_kept": 7})
    assert row["random_kept"] == 7 and math.isnan(row["rho"]) and row["mask_changes"] is None
    assert metric_columns("admm", {"rho": 0.1})["random_kept"] is None  # the other methods' rows: null
    with pytest.raises(ValueError, match="without declaring"):
        metric_columns("random", {"rho": 0.1})  # a value it does not declare has no column


def test_the_method_help_lists_it(registered):
    from vocabulary import config as C

    assert f"random: {registered.help}" in C.field_help()["method"]


def test_the_method_contract_runs_on_it(registered):
    import method_contract as MC
    from trainables.sparsity import SETS

    import torch

    every = MC.variants()
    assert "random" in [n for n, _ in every]
    prune = dict(every)["random"]
    for kind in SETS:
        for opt_name, make_opt in (("adam", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
                                   ("sgd_wd", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True,
                                                                        weight_decay=5e-3))):
            MC.check_zeros_stay_zero_through_masked_finetuning("random", prune, kind, opt_name, make_opt)
        MC.check_resume_is_exact("random", prune, kind)
        MC.check_differs_from_the_other_methods("random", prune, kind, every)
        MC.check_reports_only_declared_metrics("random", prune, kind)


SCRIPT = r"""
import contextlib, io, json, sys
import pandas as pd
from vocabulary import config as C
from vocabulary.config import ConfigError, TrialConfig
from results import schema
from trainables.__main__ import build_parser
from trainables.trial import run_trial
from helpers import TINY
import method_contract as MC

out = {"methods": list(C.METHODS), "fields": list(C.METHOD_FIELDS["random"]),
       "column": str(schema.EPOCHS.field("random_kept").type)}
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    build_parser().parse_args(["train", "--help"])
out["train_help"] = help_text.getvalue()
try:
    run_trial(dict(TINY, method="random", sparsify_epochs=0))
except ConfigError as err:
    out["refused"] = err.field
res = run_trial(dict(TINY, method="random"))
res.write(sys.argv[1], trial_id="r0")
epochs = pd.read_parquet(sys.argv[1] + "/results/epochs")
out["kept"] = {p: [None if pd.isna(v) else int(v) for v in epochs.loc[epochs.phase == p, "random_kept"]]
               for p in ("dense", "sparsify", "finetune")}
out["method_column"] = epochs["method"].astype(str).unique().tolist()
out["status"], out["nonzero"] = res.summary["status"], res.summary["prunable_nonzero"]
out["rows_hp"] = C.TrialConfig.from_dict({"method": "random"}).hyperparameters()["rho"]
for kind in ("uniform", "global", "nm"):  # the contract, as test_contracts parametrizes it
    MC.check_resume_is_exact("random", dict(MC.variants())["random"], kind)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_one_registration_line_reaches_config_tables_and_help(tmp_path):
    """The real edit: the line appended to a copy of vocabulary/registry.py, shadowing the project's."""
    shutil.copytree(os.path.join(ROOT, "vocabulary"), tmp_path / "vocabulary",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "vocabulary" / "registry.py", "a") as f:
        f.write("\n" + REGISTRATION + "\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), TESTS, ROOT]))
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "exp")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["methods"] == ["admm", "magnitude", "random"] and out["fields"] == []
    assert out["column"] == "int64"
    assert "random pruning: a mask drawn at random once" in " ".join(out["train_help"].split())
    assert out["refused"] == "sparsify_epochs"
    assert out["status"] == "ok" and out["method_column"] == ["random"]
    assert out["kept"]["dense"] == [None] and out["kept"]["finetune"] == [None]
    assert out["kept"]["sparsify"] == [out["nonzero"]] * 2  # the mask kept what the set keeps, to the end
    assert out["rows_hp"] is None  # ADMM's rho is null in its rows
