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

from trainables.config import DataConfig

log = logging.getLogger(__name__)

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
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


def _read_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise DataError("data_dir", f"missing CIFAR-10 batch file {path}")
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
        x = data.reshape(-1, 3, 32, 32)
    except Exception as e:  # pickle, key and shape errors all mean the same thing to the user
        raise DataError("data_dir", f"corrupt or truncated CIFAR-10 batch file {path} ({type(e).__name__}: {e}); "
                        "expected a pickle dict with b'data' uint8 [N, 3072] and b'labels'") from e
    if len(labels) != len(x) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError("data_dir", f"corrupt CIFAR-10 batch file {path}: labels do not match data (0..9)")
    return x, labels


def read_cifar10_folder(path: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train_x, train_y, test_x, test_y) from a CIFAR-10 python folder or its parent; raises DataError."""
    folder = os.path.join(path, "cifar-10-batches-py")
    if not os.path.isdir(folder):
        folder = path
    if not os.path.isdir(folder):
        raise DataError("data_dir", f"folder {path} does not exist (expected cifar-10-batches-py inside it)")
    parts = [_read_batch(os.path.join(folder, b)) for b in _TRAIN_BATCHES]
    test_x, test_y = _read_batch(os.path.join(folder, "test_batch"))
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return (torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
            torch.from_numpy(test_y))


def _load_cifar10(cfg: DataConfig):
    if cfg.data_dir is not None:
        return read_cifar10_folder(cfg.data_dir)
    import torchvision  # only here: the download path

    root = cfg.cache_dir or os.path.expanduser("~/.cache/prunesweep")
    log.info("downloading CIFAR-10 into %s (md5 verified by torchvision)", root)
    torchvision.datasets.CIFAR10(root=root, train=True, download=True)
    torchvision.datasets.CIFAR10(root=root, train=False, download=True)
    return read_cifar10_folder(root)


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


def load_splits(cfg: DataConfig) -> Splits:
    """Load ``cfg.dataset`` and carve the validation split (seeded by split_seed). Raises DataError."""
    if cfg.dataset == "cifar10":
        tx, ty, ex, ey = _load_cifar10(cfg)
        mean, std, classes = CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES
    elif cfg.dataset == "digits":
        tx, ty, ex, ey = _load_digits()
        classes = tuple(str(i) for i in range(10))
    elif cfg.dataset == "synthetic":
        tx, ty, ex, ey = _load_synthetic(cfg)
        classes = tuple(f"class{i}" for i in range(10))
    else:
        raise DataError("dataset", f"{cfg.dataset!r} is not one of cifar10, digits, synthetic")
    n_val = round(cfg.val_fraction * len(tx))
    if n_val < 1 or n_val >= len(tx):
        raise DataError("val_fraction", f"{cfg.val_fraction} leaves {n_val} of {len(tx)} images for validation")
    perm = torch.randperm(len(tx), generator=torch.Generator().manual_seed(cfg.split_seed))
    val, train = perm[:n_val], perm[n_val:]
    if cfg.limit_train is not None:
        train = train[: cfg.limit_train]
    train_x = tx[train].contiguous()
    if cfg.dataset != "cifar10":
        mean, std = _channel_stats(train_x)
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
