"""Datasets as uint8 tensors in memory, a seeded validation split, and a batched on-device loader.

DESIGN.md "Data". Everything a trial needs is in :class:`Splits` (picklable, shared via Ray's object store).
"""

from __future__ import annotations

import logging
import os
import pickle
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from vocabulary.config import DATA_FOLDERS, NUM_CLASSES, DataConfig

log = logging.getLogger(__name__)

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_CLASSES", "CIFAR100_MEAN", "CIFAR100_STD", "DataError", "Splits",
           "read_cifar10_folder", "read_cifar100_folder", "load_splits", "Loader", "augment_batch"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# torchvision's commonly used CIFAR-100 training-set statistics (per channel, over all pixels), not recomputed here
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
# the files of each folder dataset's python layout (inside config.DATA_FOLDERS[dataset])
_LAYOUT_FILES = {"cifar10": (*_TRAIN_BATCHES, "test_batch"), "cifar100": ("train", "test", "meta")}
_SYNTHETIC_SEED = 1234  # fixed: the synthetic task is the same for every trial and call


class DataError(ValueError):
    """A dataset cannot be loaded. ``field`` names the configuration key at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass
class Splits:
    """uint8 images [N, 3, 32, 32] and int64 labels per split; per-dataset normalisation constants."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    classes: tuple[str, ...]


def _unpickle(path: str, what: str) -> dict:
    """The pickled dict of a CIFAR python file; DataError naming ``path`` when it is missing or unreadable."""
    if not os.path.isfile(path):
        raise DataError("data_dir", f"missing {what} {path}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except Exception as e:  # truncated or not a pickle: the same thing to the user
        raise DataError("data_dir", f"corrupt or truncated {what} {path} ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise DataError("data_dir", f"corrupt {what} {path}: a {type(d).__name__}, not a pickled dict")
    return d


def _images_labels(d: dict, path: str, what: str, label_key: bytes, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 3, 32, 32], int64 [N]) from a CIFAR dict: b'data' rows are 1024 R, then G, then B values."""
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
        x = data.reshape(-1, 3, 32, 32)
    except Exception as e:  # key and shape errors all mean the same thing to the user
        raise DataError("data_dir", f"corrupt or truncated {what} {path} ({type(e).__name__}: {e}); expected a "
                                    f"pickle dict with b'data' uint8 [N, 3072] and {label_key!r}") from e
    if len(labels) != len(x) or (labels.size and (labels.min() < 0 or labels.max() >= n_classes)):
        raise DataError("data_dir", f"corrupt {what} {path}: labels do not match data (0..{n_classes - 1})")
    return x, labels


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    what = "CIFAR-10 batch file"
    return _images_labels(_unpickle(path, what), path, what, b"labels", NUM_CLASSES["cifar10"])


def _layout(dataset: str) -> str:
    files = _LAYOUT_FILES[dataset]
    return f"{DATA_FOLDERS[dataset]}/{', '.join(files[:-1])} and {files[-1]}"


def _layout_folder(path: str, dataset: str) -> str:
    """The folder holding ``dataset``'s python files: DATA_FOLDERS[dataset] inside ``path``, or ``path`` itself
    when it holds them. DataError when neither (naming the layout expected)."""
    sub = DATA_FOLDERS[dataset]
    folder = os.path.join(path, sub)
    if os.path.isdir(folder):
        return folder
    if not os.path.isdir(path):
        raise DataError("data_dir", f"folder {path} does not exist (expected {sub} inside it: {_layout(dataset)})")
    if not any(os.path.exists(os.path.join(path, f)) for f in _LAYOUT_FILES[dataset]):
        raise DataError("data_dir", f"{path} has no {sub} folder (expected the python layout {_layout(dataset)} "
                                    "inside it)")
    return path


def read_cifar10_folder(path: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_x, train_y, test_x, test_y) from a CIFAR-10 python folder or its parent; raises DataError."""
    folder = _layout_folder(path, "cifar10")
    parts = [_read_batch(os.path.join(folder, b)) for b in _TRAIN_BATCHES]
    test_x, test_y = _read_batch(os.path.join(folder, "test_batch"))
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return (torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
            torch.from_numpy(test_y))


def read_cifar100_folder(path: str) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """(train_x, train_y, test_x, test_y, class names) from a CIFAR-100 python folder (cifar-100-python: train,
    test, meta) or its parent; the labels are the 100 fine labels. Raises DataError naming the file at fault."""
    n_classes = NUM_CLASSES["cifar100"]
    folder = _layout_folder(path, "cifar100")
    meta_path = os.path.join(folder, "meta")
    names = _unpickle(meta_path, "CIFAR-100 meta file").get(b"fine_label_names")
    if not isinstance(names, list) or len(names) != n_classes:
        raise DataError("data_dir", f"corrupt CIFAR-100 meta file {meta_path}: expected b'fine_label_names', a "
                                    f"list of {n_classes} names")
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    out = []
    for split in ("train", "test"):
        what, path_ = f"CIFAR-100 {split} file", os.path.join(folder, split)
        out += _images_labels(_unpickle(path_, what), path_, what, b"fine_labels", n_classes)
    return (*(torch.from_numpy(a) for a in out), classes)


def _download(dataset: str, cfg: DataConfig) -> str:
    """Download ``dataset`` through torchvision (which verifies its md5 checksums); returns the root folder."""
    import torchvision  # only here: the download path

    root = cfg.cache_dir or os.path.expanduser("~/.cache/prunesweep")
    log.info("downloading %s into %s (md5 verified by torchvision)", dataset, root)
    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[dataset]
    cls(root=root, train=True, download=True)
    cls(root=root, train=False, download=True)
    return root


def _load_cifar10(cfg: DataConfig):
    return read_cifar10_folder(cfg.data_dir if cfg.data_dir is not None else _download("cifar10", cfg))


def _load_cifar100(cfg: DataConfig):
    return read_cifar100_folder(cfg.data_dir if cfg.data_dir is not None else _download("cifar100", cfg))


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    img = torch.from_numpy(d.images).float()[:, None]  # [N, 1, 8, 8], values 0..16
    # nearest upscaling keeps the 16 grey levels as crisp 4x4 blocks; bilinear would invent values
    img = torch.nn.functional.interpolate(img, size=32, mode="nearest")
    x = (img * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # fixed test split (20%)
    n_test = round(0.2 * len(x))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def _synthetic(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Class c: a grating at angle c*pi/10 with a class colour, random phase, plus noise."""
    y = torch.randint(0, 10, (n,), generator=gen)
    angle = y.float() * torch.pi / 10
    phase = torch.rand(n, generator=gen) * 2 * torch.pi
    coords = torch.arange(32).float()
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    wave = torch.sin(0.6 * (xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None])
                     + phase[:, None, None])  # [n, 32, 32]
    colour = torch.rand(10, 3, generator=torch.Generator().manual_seed(_SYNTHETIC_SEED)) * 0.8 + 0.2
    img = 0.5 + 0.4 * wave[:, None] * colour[y][:, :, None, None]
    img = img + 0.1 * torch.randn(n, 3, 32, 32, generator=gen)
    return (img * 255).round().clamp(0, 255).to(torch.uint8), y


def _load_synthetic(cfg: DataConfig):
    gen = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    tx, ty = _synthetic(cfg.synthetic_train, gen)
    ex, ey = _synthetic(cfg.synthetic_test, gen)
    return tx, ty, ex, ey


def _channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    f = x.float() / 255
    return tuple(f.mean((0, 2, 3)).tolist()), tuple(f.std((0, 2, 3)).clamp_min(1e-3).tolist())


# the published per-channel statistics of a dataset; the others are measured on their training split
_NORMALISATION = {"cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD)}


def _load(cfg: DataConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, tuple[str, ...]]:
    """(train_x, train_y, test_x, test_y, class names) of ``cfg.dataset``, before the validation split."""
    if cfg.dataset == "cifar10":
        return (*_load_cifar10(cfg), CIFAR10_CLASSES)
    if cfg.dataset == "cifar100":
        return _load_cifar100(cfg)
    if cfg.dataset == "digits":
        return (*_load_digits(), tuple(str(i) for i in range(10)))
    if cfg.dataset == "synthetic":
        return (*_load_synthetic(cfg), tuple(f"class{i}" for i in range(10)))
    raise DataError("dataset", f"{cfg.dataset!r} is not one of {', '.join(NUM_CLASSES)}")


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.dataset`` and carve the validation split (seeded by split_seed, not stratified: the same rule
    for every dataset). Raises DataError."""
    tx, ty, ex, ey, classes = _load(cfg)
    assert len(classes) == NUM_CLASSES[cfg.dataset], (cfg.dataset, len(classes))  # the head's size comes from there
    n_val = round(cfg.val_fraction * len(tx))
    if n_val < 1 or n_val >= len(tx):
        raise DataError("val_fraction", f"{cfg.val_fraction} leaves {n_val} of {len(tx)} images for validation")
    perm = torch.randperm(len(tx), generator=torch.Generator().manual_seed(cfg.split_seed))
    val, train = perm[:n_val], perm[n_val:]
    if cfg.limit_train is not None:
        train = train[: cfg.limit_train]
    train_x = tx[train].contiguous()
    mean, std = _NORMALISATION.get(cfg.dataset) or _channel_stats(train_x)
    return Splits(train_x, ty[train].long(), tx[val].contiguous(), ty[val].long(), ex.contiguous(),
                  ey.long(), tuple(mean), tuple(std), cfg.dataset, classes)


class Loader:
    """Batches of normalised float images on ``device``; order and augmentation depend only on (seed, epoch).

    Data moves to the device once, here (no copy when ``x_uint8`` is already there: loaders over one
    device tensor share it). Augmentation (random crop 32 from zero padding 4, horizontal flip p=0.5) and
    normalisation run as batched tensor ops on the device; the epoch's order and draws reach it in one copy.
    """

    def __init__(self, x_uint8: Tensor, y: Tensor, *, batch_size: int, shuffle: bool, augment: bool, mean, std,
                 device="cpu", seed: int = 0, drop_last: bool = False, channels_last: bool = False):
        self.device = torch.device(device)
        self.x = x_uint8.to(self.device)
        self.y = y.to(self.device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last, self.channels_last = seed, drop_last, channels_last
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        # generated on the CPU so the stream is identical on every device; only indices/offsets are drawn
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def epoch_plan(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The epoch's draws in batch order, on the device: (order int64 [N], offsets int64 [N, 2] or None,
        flips bool [N] or None); entry i belongs to the i-th image served, dataset image ``order[i]``.

        Drawn on the CPU from the (seed, epoch) generator, in a fixed sequence (permutation, then crop offsets,
        then flips, each indexed by dataset image), then moved to the device in ONE copy per epoch: a step
        only slices device tensors, so it never waits on the host.
        """
        gen = self._generator(epoch)
        n = len(self.x)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if not self.augment:
            return order.to(self.device), None, None
        offsets = torch.randint(0, 9, (n, 2), generator=gen)  # per dataset image: (row, col) in [0, 2*pad]
        flips = torch.rand(n, generator=gen) < 0.5  # per dataset image
        plan = torch.cat([order[:, None], offsets[order], flips[order, None].long()], 1)  # [N, 4], batch order
        plan = plan.to(self.device)
        return plan[:, 0], plan[:, 1:3], plan[:, 3].bool()

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x float [B,3,32,32] normalised, y int64 [B]) for ``epoch``; deterministic in (seed, epoch).

        One host-to-device copy per epoch (:meth:`epoch_plan`); per batch only device ops, no host sync.
        """
        order, offsets, flips = self.epoch_plan(epoch)
        for b in range(len(self)):
            span = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[span]
            x = self.x[idx]  # [B, 3, 32, 32] uint8, gathered on the device
            if offsets is not None:
                x = augment_batch(x, offsets[span], flips[span])
            x = (x.float() / 255 - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y[idx]


def augment_batch(x: Tensor, offsets: Tensor, flips: Tensor, pad: int = 4) -> Tensor:
    """Random crop from zero padding and horizontal flip, batched (no per-image loop).

    x: [B, C, H, W]; offsets: [B, 2] (row, col) in [0, 2*pad]; flips: bool [B]. Returns a new tensor.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # [B, C, H+2p, W+2p]
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # [B, W]
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # flipping the column index flips the crop
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    ci = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # [B, C, H, W]
