"""Writes a tiny dataset in CIFAR-10's exact python on-disk layout (cifar-10-batches-py)."""

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
