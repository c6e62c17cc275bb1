"""The Loader's data path (issue 9): the same batches as a per-image reference, one host-to-device copy per
epoch, no per-batch work off the device, no copy of the dataset per epoch.

The reference below is written independently of trainables.data: the (seed, epoch) stream drawn on the CPU in
the documented sequence (permutation, crop offsets, flips, each per dataset image), applied one image at a
time with plain slicing. The Loader must give the same bits, so a GPU trial sees exactly the batches a CPU
trial of the same seed sees.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trainables.data import Loader

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
N = 50  # not a multiple of the batch size: the last batch is partial unless dropped


def _data(n=N):
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def reference_batches(x, y, *, batch_size, shuffle, augment, seed, epoch, drop_last):
    """The contract, per image: the stream of Loader's (seed, epoch) generator, crop-then-flip, normalise."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    n = len(x)
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    if augment:
        offsets = torch.randint(0, 9, (n, 2), generator=gen)  # indexed by dataset image
        flips = torch.rand(n, generator=gen) < 0.5
    count = n // batch_size if drop_last else -(-n // batch_size)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for b in range(count):
        idx = order[b * batch_size:(b + 1) * batch_size].tolist()
        images = []
        for i in idx:
            img = x[i]
            if augment:
                r, c = offsets[i].tolist()
                img = F.pad(img, (4, 4, 4, 4))[:, r:r + 32, c:c + 32]
                if flips[i]:
                    img = img.flip(-1)
            images.append(img)
        xb = torch.stack(images).float() / 255
        yield (xb - mean) / std, y[idx]


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_loader_equals_per_image_reference(shuffle, augment, drop_last):
    x, y = _data()
    for seed, epoch in ((0, 0), (3, 5)):
        loader = Loader(x, y, batch_size=16, shuffle=shuffle, augment=augment, mean=MEAN, std=STD, seed=seed,
                        drop_last=drop_last)
        ours = list(loader.batches(epoch))
        ref = list(reference_batches(x, y, batch_size=16, shuffle=shuffle, augment=augment, seed=seed,
                                     epoch=epoch, drop_last=drop_last))
        assert len(ours) == len(ref) == len(loader) == (3 if drop_last else 4)
        assert [len(b) for b, _ in ours] == ([16] * 3 if drop_last else [16, 16, 16, 2])
        for (xo, yo), (xr, yr) in zip(ours, ref):
            assert xo.dtype == torch.float32 and torch.equal(xo, xr)  # bit-identical
            assert torch.equal(yo, yr)


def test_channels_last_changes_layout_not_values():
    x, y = _data()
    kw = dict(batch_size=16, shuffle=True, augment=True, mean=MEAN, std=STD, seed=1)
    plain, cl = Loader(x, y, **kw), Loader(x, y, channels_last=True, **kw)
    for (a, ya), (b, yb) in zip(plain.batches(2), cl.batches(2)):
        assert b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(ya, yb)


class _Recorder(TorchDispatchMode):
    """Every ATen op: its name, the devices of its tensor inputs and outputs, and its largest output."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, set, set, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {t.device.type for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.ops.append((str(func), ins, {t.device.type for t in outs}, max((t.numel() for t in outs), default=0)))
        return out


@pytest.mark.parametrize("augment", [True, False])
def test_one_copy_to_the_device_per_epoch_and_only_device_ops_per_batch(augment):
    """On a stand-in device (meta: shapes only), an epoch makes exactly one host-to-device copy, before the
    first batch; every op after it reads and writes device tensors only (what a CUDA step needs to never
    wait on the host), and none allocates a tensor the size of the dataset."""
    x, y = _data()
    loader = Loader(x, y, batch_size=16, shuffle=True, augment=augment, mean=MEAN, std=STD, device="meta",
                    channels_last=True)
    dataset = loader.x.numel()
    for epoch in range(2):
        rec = _Recorder()
        with rec:
            it = loader.batches(epoch)
            next(it)
            first = len(rec.ops)
            rest = list(it)
        assert len(rest) == 3
        uploads = [op for op in rec.ops if "cpu" in op[1] and "meta" in op[2]]
        assert len(uploads) == 1 and rec.ops.index(uploads[0]) < first, uploads  # the epoch plan, once
        after = rec.ops[first:]
        assert after and all(ins <= {"meta"} and outs <= {"meta"} for _, ins, outs, _ in after), \
            [op for op in after if "cpu" in op[1] | op[2]]
        assert max(size for *_, size in rec.ops) < dataset  # nothing dataset-sized is made per epoch


def test_dataset_tensor_is_shared_not_copied():
    x, y = _data()
    a = Loader(x, y, batch_size=16, shuffle=True, augment=True, mean=MEAN, std=STD)
    b = Loader(a.x, a.y, batch_size=16, shuffle=True, augment=False, mean=MEAN, std=STD, seed=1)
    assert a.x.data_ptr() == x.data_ptr() == b.x.data_ptr()  # on its own device: the caller's tensor itself
    for epoch in range(3):
        list(a.batches(epoch))
        assert a.x.data_ptr() == x.data_ptr() and torch.equal(a.x, x)  # never replaced, never modified
