"""python -m trainables train: end-to-end runs and bad input (exit 2, field named). Through its main(argv) in
this process, and once as a real subprocess (the smoke test that `python -m trainables` itself works)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from helpers import TINY, train_args
from tests.cifar_fixture import write_fake_cifar10

ARGS = train_args({**TINY, "sparsify_epochs": 1, "max_threads": 1})


def _subprocess(*args, timeout=300) -> tuple[int, str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "trainables", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("method, in_process", [("admm", False), ("magnitude", True)])
def test_end_to_end(method, in_process, tmp_path, trainables_main):
    run = trainables_main if in_process else _subprocess
    code, stdout, stderr = run("train", *ARGS, "--method", method, "--sparsity", "0.5", "--json", "--out",
                               str(tmp_path))
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["status"] == "ok"
    assert summary["achieved_sparsity"] == summary["target_sparsity"] == 0.5
    for k in ("dense_val_acc", "pre_prune_val_acc", "post_prune_val_acc", "final_val_acc", "final_test_acc"):
        assert 0.0 <= summary[k] <= 1.0
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 1 and trials["status"].iloc[0] == "ok"
    assert len(pd.read_parquet(tmp_path / "results" / "epochs")) == 3
    assert "finetune epoch" in stderr


def _corrupt_cifar(tmp_path):
    folder = write_fake_cifar10(str(tmp_path))
    path = os.path.join(folder, "data_batch_2")
    with open(path, "r+b") as f:
        f.truncate(100)
    return str(tmp_path)


BAD = [
    (["--arch", "resnet"], "arch"),
    (["--method", "lottery"], "method"),
    (["--dataset", "imagenet"], "dataset"),
    (["--sparsity", "1.0"], "sparsity"),
    (["--sparsity", "-0.1"], "sparsity"),
    (["--rho", "0"], "rho"),
    (["--rho", "-1"], "rho"),
    (["--lr", "0"], "lr"),
    (["--lr", "100"], "lr"),
    (["--dense-epochs", "-1"], "dense_epochs"),
    (["--finetune-epochs", "-2"], "finetune_epochs"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "data_dir"),
]


@pytest.mark.parametrize("args,field", BAD)
def test_bad_input_exits_2_naming_field(args, field, trainables_main):
    code, _, stderr = trainables_main("train", *args)
    assert code == 2, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: {field}:")


def test_corrupt_batch_file(tmp_path, trainables_main):
    root = _corrupt_cifar(tmp_path)
    code, _, stderr = trainables_main("train", "--dataset", "cifar10", "--data-dir", root)
    assert code == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: data_dir:") and "data_batch_2" in last


def test_checkpoint_of_other_arch(tmp_path, trainables_main):
    ckpt = tmp_path / "ckpt"
    code, _, stderr = trainables_main("train", *ARGS, "--finetune-epochs", "1", "--checkpoint-dir", str(ckpt))
    assert code == 0, stderr
    assert (ckpt / "checkpoint.pt").exists()  # the last epoch writes none: this one is the sparsify epoch's
    code, _, stderr = trainables_main("train", *ARGS, "--arch", "mobilenet_v2", "--resume", str(ckpt))
    assert code == 2
    assert stderr.strip().splitlines()[-1].startswith("error: resume_from:")
    assert "epoch" not in stderr.split("error:")[0]  # nothing trained before the error
