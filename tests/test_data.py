import os
import pickle

import pytest
import torch

from tests.cifar_fixture import damage_file, write_fake_cifar10
from vocabulary.config import DataConfig
from trainables.data import DataError, Loader, augment_batch, load_splits, read_cifar10_folder


def test_cifar_reader_round_trip(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train_per_batch=4, n_test=5)
    tx, ty, ex, ey = read_cifar10_folder(str(tmp_path))
    with open(os.path.join(folder, "data_batch_2"), "rb") as f:
        b2 = pickle.load(f, encoding="bytes")
    assert tx.shape == (20, 3, 32, 32) and tx.dtype == torch.uint8 and ex.shape == (5, 3, 32, 32)
    assert tx[4:8].reshape(4, -1).numpy().tolist() == b2[b"data"].tolist()
    assert ty[4:8].tolist() == b2[b"labels"]
    assert read_cifar10_folder(folder)[0].equal(tx)  # the folder itself is accepted too


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupt"])
def test_bad_batch_file_names_it(tmp_path, damage):
    folder = write_fake_cifar10(tmp_path, n_train_per_batch=4, n_test=4)
    path = os.path.join(folder, "data_batch_3")
    damage_file(path, damage)
    with pytest.raises(DataError, match="data_batch_3") as err:
        load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path)))
    assert err.value.field == "data_dir"


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_splits(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "nope")))


def test_val_split_disjoint_and_stable(tmp_path):
    write_fake_cifar10(tmp_path, n_train_per_batch=20, n_test=10)
    cfg = DataConfig(dataset="cifar10", data_dir=str(tmp_path), val_fraction=0.2)
    a, b = load_splits(cfg), load_splits(cfg)
    assert len(a.val_x) == 20 and len(a.train_x) == 80
    assert a.val_x.equal(b.val_x) and a.train_x.equal(b.train_x)
    train_rows = {bytes(r.numpy()) for r in a.train_x.reshape(80, -1)}
    assert not any(bytes(r.numpy()) in train_rows for r in a.val_x.reshape(20, -1))


def test_digits_and_synthetic():
    d = load_splits(DataConfig(dataset="digits"))
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape[1:] == (3, 32, 32) and d.train_y.dtype == torch.int64
    assert len(d.train_x) + len(d.val_x) + len(d.test_x) == 1797
    cfg = DataConfig(dataset="synthetic", synthetic_train=100, synthetic_test=20)
    s1, s2 = load_splits(cfg), load_splits(cfg)
    assert s1.train_x.shape == (90, 3, 32, 32) and s1.test_x.shape == (20, 3, 32, 32)
    assert s1.train_x.equal(s2.train_x) and s1.test_y.equal(s2.test_y)


def make_loader(seed=0):
    x = torch.randint(0, 256, (50, 3, 32, 32), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    return Loader(x, torch.arange(50), batch_size=16, shuffle=True, augment=True, mean=(0.5,) * 3,
                  std=(0.25,) * 3, seed=seed)


def test_loader_determinism():
    a, b = make_loader(), make_loader()
    assert len(a) == 4
    ba, bb = list(a.batches(1)), list(b.batches(1))
    assert all(x1.equal(x2) and y1.equal(y2) for (x1, y1), (x2, y2) in zip(ba, bb))
    assert not list(a.batches(2))[0][1].equal(ba[0][1])
    assert sorted(torch.cat([y for _, y in ba]).tolist()) == list(range(50))


def test_crop_and_flip_match_hand_computed():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = augment_batch(x, torch.tensor([[0, 8], [4, 4]]), torch.tensor([False, True]))
    assert out.shape == (2, 3, 32, 32)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    assert out[0].equal(padded[0, :, 0:32, 8:40])  # shifted down 4, left 4: a real shift
    assert out[1].equal(x[1].flip(-1))  # centre crop, flipped
