"""A small real-photo dataset in CIFAR-10's on-disk python layout, built offline from bundled photographs.

Ten colour photographs ship inside installed packages (no download): eight with scikit-image
(``skimage.data``) and two with scikit-learn (``load_sample_images``). Class c is "a patch of photo c".
Training patches come from the left 70% of each photo and test patches from the right 30%, so no test
pixel was ever seen in training; every patch is a random square crop (48-160 px, clipped to its region),
resized to 32x32 with antialiasing and given a mild random brightness/contrast/colour change. Telling the
photos apart from unseen regions is learnable but not trivial (several photos share dark or skin-toned
areas).

    python -c "from tests.photo_cifar import write_photo_cifar; print(write_photo_cifar('data/photo'))"
"""

from __future__ import annotations

import os
import pickle

import numpy as np
from PIL import Image

TRAIN_FRACTION = 0.7  # left part of each photo: training patches; the rest (right): test patches
PATCH_MIN, PATCH_MAX = 48, 160
CLASSES = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "motorcycle",
           "retina", "rocket", "china", "flower")


def load_photos() -> list[np.ndarray]:
    """The ten photographs as uint8 [H, W, 3] arrays, in CLASSES order (all bundled, nothing downloaded)."""
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    photos = [sk.astronaut(), sk.chelsea(), sk.coffee(), sk.hubble_deep_field(), sk.immunohistochemistry(),
              sk.stereo_motorcycle()[0], sk.retina(), sk.rocket()]
    photos += list(load_sample_images().images)  # china.jpg, flower.jpg
    return [np.ascontiguousarray(p[..., :3], dtype=np.uint8) for p in photos]


def _patch(photo: np.ndarray, x0: int, x1: int, rng: np.random.Generator) -> np.ndarray:
    """One random square crop inside columns [x0, x1) of ``photo``, as a jittered uint8 [3, 32, 32] image."""
    h = photo.shape[0]
    size = min(int(rng.integers(PATCH_MIN, PATCH_MAX + 1)), h, x1 - x0)
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(x0, x1 - size + 1))  # the whole crop lies inside the region
    crop = photo[top:top + size, left:left + size]
    # PIL's bilinear resize widens its kernel when shrinking, i.e. it antialiases
    small = np.asarray(Image.fromarray(crop).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
    mean = small.mean()
    small = (small - mean) * rng.uniform(0.8, 1.2) + mean  # contrast
    small = small * rng.uniform(0.75, 1.25) * rng.uniform(0.92, 1.08, size=3)  # brightness, colour balance
    return np.clip(np.rint(small), 0, 255).astype(np.uint8).transpose(2, 0, 1)  # HWC -> CHW


def _patches(photos, n: int, train: bool, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = (np.arange(n) % len(photos))
    rng.shuffle(labels)  # balanced classes in random order
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    for i, c in enumerate(labels):
        w = photos[c].shape[1]
        border = int(round(TRAIN_FRACTION * w))
        x0, x1 = (0, border) if train else (border, w)
        images[i] = _patch(photos[c], x0, x1, rng)
    return images.reshape(n, 3072), [int(c) for c in labels]


def _dump(path: str, data: np.ndarray, labels: list[int], batch_label: str, tag: str) -> None:
    batch = {b"batch_label": batch_label.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"{CLASSES[c]}_{tag}_{i:05d}.png".encode() for i, c in enumerate(labels)]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_photo_cifar(root: str, n_train: int = 2000, n_test: int = 500, seed: int = 0) -> str:
    """Write ``root/cifar-10-batches-py`` (data_batch_1..5, test_batch, batches.meta); return that folder.

    Deterministic in ``seed``. The training images are spread over the five batch files as evenly as possible.
    """
    if n_train < 5 or n_test < 1:
        raise ValueError("need n_train >= 5 (five batch files) and n_test >= 1")
    photos = load_photos()
    rng = np.random.default_rng(seed)
    train_x, train_y = _patches(photos, n_train, True, rng)
    test_x, test_y = _patches(photos, n_test, False, rng)
    folder = os.path.join(str(root), "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    bounds = np.linspace(0, n_train, 6).round().astype(int)
    for b in range(5):
        lo, hi = bounds[b], bounds[b + 1]
        _dump(os.path.join(folder, f"data_batch_{b + 1}"), train_x[lo:hi], train_y[lo:hi],
              f"training batch {b + 1} of 5", f"train{b + 1}")
    _dump(os.path.join(folder, "test_batch"), test_x, test_y, "testing batch 1 of 1", "test")
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": int(bounds[1]),
                     b"num_vis": 3072}, f, protocol=2)
    return folder


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write_photo_cifar(a.root, a.n_train, a.n_test, a.seed))
