"""python -m trainables train as a subprocess: end-to-end runs and bad input (exit 2, field named)."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.cifar_fixture import write_fake_cifar10

TINY = ["--dataset", "synthetic", "--synthetic-train", "256", "--synthetic-test", "64", "--width", "0.25",
        "--dense-epochs", "1", "--sparsify-epochs", "1", "--finetune-epochs", "1", "--batch-size", "64",
        "--bn-recal-batches", "2", "--arch", "mobilenet_v3_small", "--max-threads", "1"]


def _run(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "trainables", "train", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("method", ["admm", "magnitude"])
def test_end_to_end(method, tmp_path):
    proc = _run(*TINY, "--method", method, "--sparsity", "0.5", "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "ok"
    assert summary["achieved_sparsity"] == summary["target_sparsity"] == 0.5
    for k in ("dense_val_acc", "pre_prune_val_acc", "post_prune_val_acc", "final_val_acc", "final_test_acc"):
        assert 0.0 <= summary[k] <= 1.0
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 1 and trials["status"].iloc[0] == "ok"
    assert len(pd.read_parquet(tmp_path / "results" / "epochs")) == 3
    assert "finetune epoch" in proc.stderr


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
def test_bad_input_exits_2_naming_field(args, field):
    proc = _run(*args, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {field}:")


def test_corrupt_batch_file(tmp_path):
    root = _corrupt_cifar(tmp_path)
    proc = _run("--dataset", "cifar10", "--data-dir", root, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data_dir:") and "data_batch_2" in last


def test_checkpoint_of_other_arch(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc = _run(*TINY, "--finetune-epochs", "1", "--checkpoint-dir", str(ckpt))  # last epoch: no checkpoint
    assert proc.returncode == 0, proc.stderr
    assert (ckpt / "checkpoint.pt").exists()
    proc = _run(*TINY, "--arch", "mobilenet_v2", "--resume", str(ckpt))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: resume_from:")
    assert "epoch" not in proc.stderr.split("error:")[0]  # nothing trained before the error
