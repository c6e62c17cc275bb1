"""CIFAR-100 (issue 18): its python layout read by the real reader on tiny files made here, the fine labels,
the validation split carved as CIFAR-10's, a 100-way head decided by the dataset, the dense key, bad files and
bad folders refused naming them, and the flow through both CLIs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from cifar_fixture import CIFAR100_FILES, damage_file, read_pickle, write_fake_cifar100
from helpers import TINY, train_args
from vocabulary.config import NUM_CLASSES, ConfigError, DataConfig, TrialConfig
from trainables.data import CIFAR100_MEAN, CIFAR100_STD, DataError, load_splits
from trainables.trial import run_trial

# TINY on the fake CIFAR-100 below: 270 training images (30 held out), one epoch per phase
TINY100 = {**TINY, "dataset": "cifar100", "sparsify_epochs": 1, "max_threads": 1}


@pytest.fixture(scope="module")
def cifar100_dir(tmp_path_factory) -> str:
    """A parent folder holding cifar-100-python/{train,test,meta}: 100 classes x 3 train, 100 x 1 test."""
    root = tmp_path_factory.mktemp("c100")
    write_fake_cifar100(root)
    return str(root)


def test_load_splits_reads_the_layout_with_fine_labels(cifar100_dir):
    folder = os.path.join(cifar100_dir, "cifar-100-python")
    test = read_pickle(os.path.join(folder, "test"))
    s = load_splits(DataConfig(dataset="cifar100", data_dir=cifar100_dir))
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (270, 30, 100)
    assert s.train_x.dtype == torch.uint8 and s.train_x.shape[1:] == (3, 32, 32)
    # rows are 1024 red, then green, then blue values: the image is the row reshaped to [3, 32, 32]
    assert s.test_x.reshape(100, -1).numpy().tolist() == test[b"data"].tolist()
    assert s.test_y.tolist() == test[b"fine_labels"] != test[b"coarse_labels"]  # the fine labels, 0..99
    assert set(torch.cat([s.train_y, s.val_y]).tolist()) == set(range(100))
    assert s.classes == tuple(f"fine{i:02d}" for i in range(100))  # from meta's fine_label_names
    assert (s.mean, s.std) == (CIFAR100_MEAN, CIFAR100_STD) and s.name == "cifar100"
    # the folder itself is accepted too, as for CIFAR-10
    assert load_splits(DataConfig(dataset="cifar100", data_dir=folder)).train_x.equal(s.train_x)


def _write_cifar10_batches(root, x: np.ndarray, y: np.ndarray) -> None:
    """The same images in CIFAR-10's layout: five equal training batches and a test batch."""
    folder = os.path.join(str(root), "cifar-10-batches-py")
    os.makedirs(folder)
    for i, (xs, ys) in enumerate(zip(np.split(x, 5), np.split(y, 5)), 1):
        with open(os.path.join(folder, f"data_batch_{i}"), "wb") as f:
            pickle.dump({b"data": xs, b"labels": ys.tolist()}, f)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump({b"data": x[:10], b"labels": y[:10].tolist()}, f)


@pytest.mark.parametrize("split_seed, limit_train", [(0, None), (5, 40)])
def test_validation_split_is_carved_as_for_cifar10(cifar100_dir, tmp_path, split_seed, limit_train):
    """The same 300 training images in both layouts: the same images go to validation and to training."""
    train = read_pickle(os.path.join(cifar100_dir, "cifar-100-python", "train"))
    _write_cifar10_batches(tmp_path, train[b"data"], np.asarray(train[b"fine_labels"]) % 10)
    kw = dict(val_fraction=0.2, split_seed=split_seed, limit_train=limit_train)
    c100 = load_splits(DataConfig(dataset="cifar100", data_dir=cifar100_dir, **kw))
    c10 = load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path), **kw))
    assert len(c100.val_x) == 60 and c100.val_x.equal(c10.val_x) and c100.train_x.equal(c10.train_x)
    assert (c100.val_y % 10).equal(c10.val_y)
    train_rows = {bytes(r.numpy()) for r in c100.train_x.reshape(len(c100.train_x), -1)}
    assert not any(bytes(r.numpy()) in train_rows for r in c100.val_x.reshape(60, -1))


@pytest.mark.parametrize("name", CIFAR100_FILES)
@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupt"])
def test_bad_file_is_a_data_error_naming_it(tmp_path, name, damage):
    folder = write_fake_cifar100(tmp_path, n_train_per_class=1)
    path = os.path.join(folder, name)
    damage_file(path, damage)
    with pytest.raises(DataError) as err:
        load_splits(DataConfig(dataset="cifar100", data_dir=str(tmp_path)))
    assert err.value.field == "data_dir" and path in err.value.message
    assert ("missing" if damage == "missing" else "corrupt") in err.value.message


@pytest.mark.parametrize("change", ["label 100", "rows", "names"])
def test_wrong_contents_are_refused(tmp_path, change):
    folder = write_fake_cifar100(tmp_path, n_train_per_class=1)
    name = "meta" if change == "names" else "train"
    d = read_pickle(os.path.join(folder, name))
    if change == "label 100":
        d[b"fine_labels"][7] = 100
    elif change == "rows":
        d[b"data"] = d[b"data"][:-1]
    else:
        d[b"fine_label_names"] = d[b"fine_label_names"][:10]  # a CIFAR-10-sized meta
    with open(os.path.join(folder, name), "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(DataError, match=os.path.join("cifar-100-python", name)):
        load_splits(DataConfig(dataset="cifar100", data_dir=str(tmp_path)))


def test_a_folder_without_the_layout_names_it(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()  # a CIFAR-10 folder is not a CIFAR-100 one
    with pytest.raises(DataError, match="has no cifar-100-python folder.*cifar-100-python/train, test and meta"):
        load_splits(DataConfig(dataset="cifar100", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(dataset="cifar100", data_dir=str(tmp_path / "nope")))


def test_the_download_lands_where_the_reader_looks():
    """The download path (no network here): torchvision's CIFAR100 writes the layout read_cifar100_folder reads."""
    from torchvision.datasets import CIFAR10, CIFAR100

    from vocabulary.config import DATA_FOLDERS

    assert CIFAR100.base_folder == DATA_FOLDERS["cifar100"] and CIFAR10.base_folder == DATA_FOLDERS["cifar10"]
    assert [f for f, _ in CIFAR100.train_list + CIFAR100.test_list] + [CIFAR100.meta["filename"]] == \
        list(CIFAR100_FILES)
    assert CIFAR100.meta["key"] == "fine_label_names"


def test_the_dataset_decides_the_class_count():
    assert TrialConfig.from_dict({"dataset": "cifar100"}).model.num_classes == 100
    assert TrialConfig.from_dict({"dataset": "cifar100"}).to_dict()["num_classes"] == 100
    assert TrialConfig.from_dict({}).model.num_classes == TrialConfig().model.num_classes == 10
    assert TrialConfig.from_dict({"dataset": "cifar100", "num_classes": 100}).model.num_classes == 100
    for dataset, wrong in (("cifar100", 10), ("cifar10", 100), ("digits", 12)):
        with pytest.raises(ConfigError) as err:
            TrialConfig.from_dict({"dataset": dataset, "num_classes": wrong})
        assert err.value.field == "num_classes" and f"{NUM_CLASSES[dataset]} classes" in err.value.message
    # the hyperparameter column holds the resolved count, so results of both datasets never share a group
    assert TrialConfig.from_dict({"dataset": "cifar100"}).hyperparameters()["num_classes"] == 100


def test_dense_keys_of_the_two_datasets_differ():
    a, b = (TrialConfig.from_dict({"dataset": d, "data_dir": "/data"}) for d in ("cifar10", "cifar100"))
    assert "-cifar10-" in a.dense_key() and "-cifar100-" in b.dense_key()
    assert a.dense_key() != b.dense_key() and a.control_key() != b.control_key()


def test_data_dir_goes_with_a_folder_dataset_only():
    for dataset in ("digits", "synthetic"):
        with pytest.raises(ConfigError, match="cifar10 or cifar100") as err:
            TrialConfig.from_dict({"dataset": dataset, "data_dir": "/data"})
        assert err.value.field == "data_dir"


@pytest.mark.slow  # ~10 s: dense, sparsify and fine-tune on 270 images
def test_tiny_trial_end_to_end_with_a_100_way_head(cifar100_dir):
    result = run_trial({**TINY100, "data_dir": cifar100_dir, "method": "magnitude", "schedule": "one_shot"})
    s = result.summary
    assert s["status"] == "ok" and s["num_classes"] == 100 and "-cifar100-" in s["dense_key"]
    assert s["achieved_sparsity"] == s["target_sparsity"] == 0.5
    assert all(0.0 <= s[k] <= 1.0 for k in ("dense_val_acc", "final_val_acc", "final_test_acc"))
    heads = [r for r in result.layers if r["kind"] == "linear"]
    assert heads[-1]["shape"].startswith("100x"), heads  # the classifier's last Linear: 100 outputs
    assert json.loads(s["config_json"])["dataset"] == "cifar100"


# -- the command lines ---------------------------------------------------------------------------------------
def _last(err: str) -> str:
    return err.strip().splitlines()[-1]


def test_trainables_cli_refuses_a_folder_without_the_layout(tmp_path, trainables_main):
    code, _, err = trainables_main("train", *train_args(TINY100), "--data-dir", str(tmp_path))
    assert code == 2 and _last(err).startswith("error: data_dir:") and "cifar-100-python" in err, err
    code, _, err = trainables_main("train", *train_args(TINY100), "--num-classes", "10")
    assert code == 2 and _last(err).startswith("error: num_classes:") and "100 classes" in err, err


@pytest.mark.slow  # ~10 s
def test_trainables_cli_trains_on_cifar100(cifar100_dir, tmp_path, trainables_main):
    code, out, err = trainables_main("train", *train_args(TINY100), "--data-dir", cifar100_dir, "--json",
                                     "--out", str(tmp_path))
    assert code == 0, err
    assert json.loads(out)["num_classes"] == 100
    layers = pd.read_parquet(tmp_path / "results" / "layers")
    assert layers[layers["kind"] == "linear"]["shape"].iloc[-1].startswith("100x")


@pytest.mark.parametrize("folder", ["empty", "cifar10"])
def test_sweep_refuses_a_folder_without_the_layout(folder, tmp_path, sweep_main):
    data = tmp_path / "data"
    data.mkdir()
    if folder == "cifar10":
        (data / "cifar-10-batches-py").mkdir()
    code, _, err = sweep_main("run", "--local", "--dataset", "cifar100", "--data-dir", str(data),
                              "--storage", str(tmp_path / "exp"), "--name", "x")
    assert code == 2 and err.startswith("error: --data-dir:"), err
    assert "cifar-100-python/train, test and meta" in err and "Traceback" not in err
    assert not (tmp_path / "exp").exists() or not any((tmp_path / "exp").iterdir())


def test_sweep_options_take_cifar100_and_its_folder(cifar100_dir, tmp_path):
    from sweep.options import build_parser, load_data, validate_run

    args = build_parser().parse_args(["run", "--dataset", "cifar100", "--data-dir", cifar100_dir, "--storage",
                                      str(tmp_path), "--set", "batch_size=64"])
    space, archs, base = validate_run(args)
    assert base["dataset"] == "cifar100" and base["data_dir"] == cifar100_dir
    splits = load_data(base, archs[0])
    assert len(splits.classes) == 100 and len(splits.train_x) == 270


@pytest.mark.slow  # ~1-2 min: a real local Ray sweep and the report
def test_sweep_and_report_on_cifar100(cifar100_dir, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": ""}
    sets = [a for k in ("batch_size", "bn_recal_batches", "max_threads") for a in ("--set", f"{k}={TINY100[k]}")]
    run = subprocess.run([sys.executable, "-m", "sweep", "run", "--space", "baseline", "--local", "--trials", "2",
                          "--dataset", "cifar100", "--data-dir", cifar100_dir, "--arch", "mobilenet_v3_small",
                          "--width", "0.25", "--dense-epochs", "1", "--sparsify-epochs", "1", "--finetune-epochs",
                          "1", "--cpus-per-trial", "1", "--gpus-per-trial", "0", *sets, "--storage", str(tmp_path),
                          "--name", "c100"], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    experiment = tmp_path / "c100"
    trials = pd.read_parquet(experiment / "results" / "trials")
    assert len(trials) == 2 and (trials["status"] == "ok").all()
    assert (trials["dataset"] == "cifar100").all() and (trials["num_classes"] == 100).all()
    report = subprocess.run([sys.executable, "-m", "analysis", "report", str(experiment), "--out",
                             str(tmp_path / "report")], capture_output=True, text=True, timeout=300, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "report" / "report.html").stat().st_size > 0
