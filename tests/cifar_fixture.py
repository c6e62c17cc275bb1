"""Write tiny datasets in CIFAR-10's and CIFAR-100's exact python on-disk layouts (cifar-10-batches-py,
cifar-100-python)."""

from __future__ import annotations

import os
import pickle

import numpy as np

BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_fake_cifar10(root, n_train_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> str:
    """Write data_batch_1..5, test_batch and batches.meta under root/cifar-10-batches-py; return that folder.

    Each batch is a pickle dict with b'data' uint8 [N, 3072] (channel-major rows, as CIFAR-10) and b'labels'.
    """
    folder = os.path.join(str(root), "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in BATCHES:
        n = n_test if name == "test_batch" else n_train_per_batch
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [b"x.png"] * n}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, f)
    return folder


CIFAR100_FILES = ("train", "test", "meta")


def write_fake_cifar100(root, n_train_per_class: int = 3, n_test_per_class: int = 1, seed: int = 0) -> str:
    """Write train, test and meta under root/cifar-100-python, as CIFAR-100's python version; return that folder.

    train/test: pickle dicts with b'data' uint8 [N, 3072] (1024 red, then green, then blue values per row),
    b'fine_labels' (0..99), b'coarse_labels' (fine // 5, 0..19), b'filenames', b'batch_label'; the images of
    one class share a colour (random per class) plus noise, so the labels are learnable. meta: b'fine_label_names'
    (100) and b'coarse_label_names' (20), bytes as in the real file.
    """
    folder = os.path.join(str(root), "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, (100, 3))  # [class, channel]
    for name, per_class in (("train", n_train_per_class), ("test", n_test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        noise = rng.integers(-40, 41, (len(fine), 3, 1024))
        data = np.clip(colours[fine][:, :, None] + noise, 0, 255).astype(np.uint8).reshape(len(fine), 3072)
        batch = {b"filenames": [f"{name}_{i}.png".encode() for i in range(len(fine))],
                 b"batch_label": f"{name} batch".encode(), b"fine_labels": fine.tolist(),
                 b"coarse_labels": (fine // 5).tolist(), b"data": data}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"fine{i:02d}".encode() for i in range(100)],
                     b"coarse_label_names": [f"coarse{i:02d}".encode() for i in range(20)]}, f)
    return folder


def read_pickle(path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def damage_file(path: str, how: str) -> None:
    """Break a dataset file the way a bad copy does: ``missing``, ``truncated`` (half of it), ``corrupt``."""
    if how == "missing":
        os.remove(path)
    elif how == "truncated":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    else:
        with open(path, "wb") as f:
            f.write(b"not a pickle")
