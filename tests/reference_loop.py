"""An independent, plain-PyTorch reference of the project's pruning recipe (dense -> sparsify -> project -> fine-tune).

It shares NO code with the project: only torch, torchvision, numpy and the standard library are imported, so
that the project's numbers can be checked against a second implementation written from the recipe alone.
Read it top to bottom; every step says which part of the recipe it implements:

    1. data      CIFAR-10 python layout, seeded 10% validation split, CIFAR normalisation, crop+flip
    2. model     torchvision MobileNet with the stem and the first stride-2 block at stride 1 (32x32 input)
    3. sparsity  prunable = every Conv2d/Linear weight except the stem; uniform top-|w| projection
    4. dense     SGD + Nesterov, cosine lr per epoch, weight decay 5e-4
    5. BN recal  reset BN stats, cumulative average over <= 50 clean training batches, only BN in train mode
    6. sparsify  Adam 1e-3; magnitude "per_step" (iterative hard thresholding) or scaled-form ADMM
    7. prune     hard projection W <- Proj(W); accuracy with stale and with recalibrated BN
    8. finetune  Adam 1e-3 with a fixed mask on gradients and weights

Randomness: the weights are initialised after ``torch.manual_seed(seed)``; every other random draw (batch
order, crops, flips, BN batches, dropout) comes from a generator or global seed derived from (seed, phase,
epoch), so a run is deterministic and the same whether its dense phase was trained here or handed in.
The streams differ from the project's on purpose: the two implementations agree in distribution, not
bit for bit, and are compared by means over seeds.

Paired runs (``draws=``): the caller may hand in the random draws instead, as plain numbers and tensors (an
object with ``seed(phase)``, ``plan(phase, epoch)`` and ``recal_order()``, see :class:`Draws`). Then the
weights are initialised after ``torch.manual_seed(draws.seed("init"))``, the global generator (dropout) is
seeded once at the start of each training phase with ``draws.seed(phase)``, and every epoch's order, crop
offsets and flips, and the recalibration order, are the given ones. Everything else is computed here as
before, so with another implementation's draws the two runs must agree to floating-point noise: any
difference in the recipe shows up at once instead of hiding in the seed-to-seed spread.

    result = run_reference("data/photo", method="admm", seed=0, rho=0.01)
    again = run_reference("data/photo", method="magnitude", seed=0, dense_state=result["dense_state"])
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import pickle
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the usual CIFAR-10 channel statistics (recipe: "Data")
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
STAGES = ("dense", "pre_prune", "post_prune_stale_bn", "post_prune", "final")


# =============================================================================================== 1. data

def read_cifar_python(data_dir: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y): uint8 NCHW images and int64 labels from CIFAR-10's python layout.

    Recipe: train = data_batch_1..5 concatenated in that order, test = test_batch. ``data_dir`` may be the
    folder holding ``cifar-10-batches-py`` or that folder itself.
    """
    inner = os.path.join(data_dir, "cifar-10-batches-py")
    folder = inner if os.path.isdir(inner) else data_dir

    def read(name):
        with open(os.path.join(folder, name), "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        # each row is 3072 bytes: the 1024 red values, then green, then blue (row-major 32x32 planes)
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return torch.from_numpy(x.copy()), torch.tensor(list(batch[b"labels"]), dtype=torch.int64)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = read("test_batch")
    return torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y


def validation_split(n_train: int, fraction: float = 0.1, split_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_indices, val_indices). Recipe: perm = randperm(N, Generator().manual_seed(0)); the first
    round(0.1 N) indices are validation, the rest training."""
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(split_seed))
    n_val = round(fraction * n_train)
    return perm[n_val:], perm[:n_val]


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    """Recipe: (x / 255 - mean) / std per channel, in float32."""
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def _derived_seed(*parts) -> int:
    """A 63-bit seed from a tuple such as (seed, "dense", epoch): independent streams per phase/epoch."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def crop_and_flip(x_uint8: torch.Tensor, gen: torch.Generator | None, pad: int = 4, given=None) -> torch.Tensor:
    """Recipe augmentation, per image: a random 32x32 crop of the image zero-padded by 4 on each side, then a
    horizontal flip with probability 0.5. Written as a plain per-image loop (clear rather than fast).
    ``given``: (tops, lefts, flips) per image instead of drawing them from ``gen`` (paired runs)."""
    n, _, h, w = x_uint8.shape
    padded = F.pad(x_uint8, (pad, pad, pad, pad))  # zeros around every side
    if given is not None:
        tops, lefts, flips = (torch.as_tensor(v).tolist() for v in given)
    else:
        tops = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        lefts = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
        flips = (torch.rand(n, generator=gen) < 0.5).tolist()
    out = []
    for i in range(n):
        img = padded[i, :, tops[i]:tops[i] + h, lefts[i]:lefts[i] + w]
        out.append(img.flip(-1) if flips[i] else img)
    return torch.stack(out)


def training_batches(x, y, *, batch_size: int, seed: int, augment: bool, plan=None):
    """Recipe: batches of 128, reshuffled each epoch (new generator per call), last partial batch kept;
    optionally augmented; always normalised. ``plan``: (order, offsets [N, 2] as (top, left) or None,
    flips [N] or None), entry i for the i-th image served, instead of drawing them (paired runs)."""
    gen = torch.Generator().manual_seed(seed)
    if plan is None:
        order, offsets, flips = torch.randperm(len(x), generator=gen), None, None
    else:
        order, offsets, flips = (None if v is None else torch.as_tensor(v).cpu() for v in plan)
        assert sorted(order.tolist()) == list(range(len(x))), "a plan's order must be a permutation"
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        if not augment:
            xb = x[idx]
        elif offsets is None:
            xb = crop_and_flip(x[idx], gen)
        else:
            span = slice(start, start + batch_size)
            xb = crop_and_flip(x[idx], None, given=(offsets[span, 0], offsets[span, 1], flips[span]))
        yield normalise(xb), y[idx]


# ============================================================================================== 2. model

def build_cifar_mobilenet(arch: str, width: float, num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNet (random init) for 32x32 input. Recipe: the stem conv ``features.0.0`` gets
    stride 1, and so does the single stride-2 Conv2d inside features.1 (v3_small) / features.2 (v2, v3_large),
    leaving 8x downsampling (a 4x4 last feature map)."""
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, width_mult=width)
    stem = model.features[0][0]
    block = model.features[1] if arch == "mobilenet_v3_small" else model.features[2]
    block_convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2)]
    assert isinstance(stem, nn.Conv2d) and tuple(stem.stride) == (2, 2), "unexpected torchvision stem"
    assert len(block_convs) == 1, f"{arch}: expected one stride-2 conv in the first strided block"
    for conv in (stem, block_convs[0]):
        conv.stride = (1, 1)
    return model


# =========================================================================================== 3. sparsity

def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Recipe: the weight of every Conv2d and Linear except the first Conv2d (the stem); never BN, never a bias."""
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first_conv = next(name for name, m in layers if isinstance(m, nn.Conv2d))
    return [(f"{name}.weight", m.weight) for name, m in layers if name != first_conv]


def keep_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Bool mask of the entries the uniform projection keeps. Recipe: exactly n - floor(s n) entries, the
    largest by |w|; among equal magnitudes the lower flat index is kept.

    Written as "everything above the k-th largest magnitude, plus the first few entries equal to it" (not a
    sort), so that it checks the project's implementation rather than mirroring it.
    """
    a = w.detach().abs().flatten()
    n = a.numel()
    k = n - math.floor(sparsity * n)
    if k >= n:
        return torch.ones_like(w, dtype=torch.bool)
    kth = torch.topk(a, k).values[-1]  # the k-th largest magnitude (k >= 1 because sparsity < 1)
    mask = a > kth
    ties = torch.nonzero(a == kth).flatten()  # ascending flat indices
    mask[ties[: k - int(mask.sum())]] = True
    return mask.view_as(w)


def project(tensors: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Proj_S: the Euclidean projection onto the uniform sparsity set (zero all but the kept entries)."""
    return [t * keep_mask(t, sparsity) for t in tensors]


# ========================================================================================= training tools

def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def accuracy_and_loss(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor,
                      batch_size: int = 500) -> tuple[float, float]:
    """(accuracy, mean cross-entropy). Recipe: eval mode, batches in order, no augmentation."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(x_uint8), batch_size):
        logits = model(normalise(x_uint8[start:start + batch_size]))
        correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
        loss += float(F.cross_entropy(logits, y[start:start + batch_size], reduction="sum"))
    return correct / max(len(x_uint8), 1), loss / max(len(x_uint8), 1)


def accuracy(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    return accuracy_and_loss(model, x_uint8, y, batch_size)[0]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, train_x, train_y, *, seed: int, batches: int = 50,
                          batch_size: int = 128, order=None) -> None:
    """5. Recipe "BatchNorm recalibration": reset every BN's running stats, momentum=None (cumulative average),
    forward under no_grad with the BN layers in train mode and every other layer in eval mode (no dropout)
    on <= 50 shuffled (or ``order``ed), non-augmented, normalised training batches, then restore the momenta."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.eval()
    for bn in bns:
        bn.train()
    plan = None if order is None else (order, None, None)
    for i, (xb, _) in enumerate(training_batches(train_x, train_y, batch_size=batch_size, seed=seed,
                                                 augment=False, plan=plan)):
        if i >= batches:
            break
        model(xb)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum


# ================================================================================================ the run

class Draws:
    """The random draws of a paired run, handed in as plain values (nothing here draws them).

    seeds: {"init" | "dense" | "sparsify" | "finetune": int}, the global torch seed at the model's
    construction and at the start of each training phase; plans: {(phase, 0-based epoch): (order [N],
    offsets [N, 2] as (top, left), flips [N])} in serving order; recal: the recalibration batches' order [N].
    """

    def __init__(self, seeds: dict, plans: dict, recal) -> None:
        self.seeds, self.plans, self.recal = dict(seeds), dict(plans), recal

    def seed(self, phase: str) -> int:
        return self.seeds[phase]

    def plan(self, phase: str, epoch: int):
        return self.plans[(phase, epoch)]

    def recal_order(self):
        return self.recal



def run_reference(data_dir: str, *, method: str, seed: int, rho: float = 0.01, sparsity: float = 0.5,
                  arch: str = "mobilenet_v3_small", width: float = 0.5, dense_epochs: int = 8,
                  sparsify_epochs: int = 4, finetune_epochs: int = 2, batch_size: int = 128,
                  dense_state: dict | None = None, threads: int | None = None, log=None, draws=None,
                  optimizer: str = "adam", lr: float = 1e-3) -> dict:
    """Run the recipe once; returns the stage accuracies (``<stage>_val_acc`` / ``<stage>_test_acc`` for the
    stages in STAGES), ``primal_residuals`` (ADMM: one per Z/U update; magnitude: []), ``dense_distance`` and
    ``pre_prune_distance`` (sum ||W - Proj(W)||^2 as the sparsify phase starts and right before the hard
    projection), ``train_loss`` per epoch, ``seconds`` and ``dense_state`` (hand it to a run of another method with the same seed, data and
    model to skip the dense phase, as the project's shared dense checkpoint does).

    method: "magnitude" (schedule per_step) or "admm" (constant rho, Z/U update every epoch).
    optimizer, lr: of the sparsify and fine-tune phases ("adam", or "sgd" with Nesterov momentum 0.9, no
    weight decay). draws: the random draws of a paired run (module docstring), or None.
    """
    if method not in ("magnitude", "admm"):
        raise ValueError(f"method: {method!r} is not magnitude or admm")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer: {optimizer!r} is not adam or sgd")
    if threads:
        torch.set_num_threads(threads)
    say = log or (lambda msg: None)
    t0 = time.monotonic()
    out: dict = {"method": method, "seed": seed, "rho": rho if method == "admm" else math.nan,
                 "primal_residuals": [], "train_loss": []}

    # ---- 1. data: CIFAR layout, fixed validation split (seed 0, independent of the trial seed)
    all_x, all_y, test_x, test_y = read_cifar_python(data_dir)
    tr, va = validation_split(len(all_x))
    train_x, train_y, val_x, val_y = all_x[tr], all_y[tr], all_x[va], all_y[va]

    def measure(stage: str, *, recalibrate: bool = True) -> None:
        if recalibrate:  # 5. every reported accuracy except the stale one follows a BN recalibration
            recalibrate_batchnorm(model, train_x, train_y, seed=_derived_seed(seed, "bn", stage),
                                  batch_size=batch_size, order=None if draws is None else draws.recal_order())
        out[f"{stage}_val_acc"], out[f"{stage}_val_loss"] = accuracy_and_loss(model, val_x, val_y)
        out[f"{stage}_test_acc"] = accuracy(model, test_x, test_y)
        say(f"{method} seed {seed} {stage}: val {out[f'{stage}_val_acc']:.4f} test {out[f'{stage}_test_acc']:.4f}")

    def train_one_epoch(phase: str, epoch: int, optimizer, before_step=None, after_step=None) -> float:
        """Cross-entropy over one shuffled, augmented pass; hooks run around optimizer.step()."""
        if draws is None:
            torch.manual_seed(_derived_seed(seed, phase, epoch, "dropout"))  # the classifier's dropout
        elif epoch == 0:
            torch.manual_seed(draws.seed(phase))  # paired: once per phase, as the other implementation does
        model.train()
        total, steps = 0.0, 0
        for xb, yb in training_batches(train_x, train_y, batch_size=batch_size, augment=True,
                                       seed=_derived_seed(seed, phase, epoch, "batches"),
                                       plan=None if draws is None else draws.plan(phase, epoch)):
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if before_step is not None:
                before_step()
            optimizer.step()
            if after_step is not None:
                after_step()
            total += float(loss.detach())
            steps += 1
        out["train_loss"].append((phase, epoch, total / max(steps, 1)))
        return total / max(steps, 1)

    # ---- 2. model: seed torch with the trial seed, then build (float32, CPU)
    torch.manual_seed(seed if draws is None else draws.seed("init"))
    model = build_cifar_mobilenet(arch, width)
    weights = [p for _, p in prunable_weights(model)]  # 3. the tensors S constrains

    # ---- 4. dense phase (or the shared dense model of this seed)
    if dense_state is None:
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        for e in range(dense_epochs):
            set_lr(opt, 0.05 * 0.5 * (1 + math.cos(math.pi * e / dense_epochs)))  # cosine, per 0-based epoch
            loss = train_one_epoch("dense", e, opt)
            say(f"{method} seed {seed} dense epoch {e + 1}/{dense_epochs} loss {loss:.4f}")
        measure("dense")  # dense_acc: recalibrate BN, evaluate val and test
        dense_state = {"model": copy.deepcopy(model.state_dict()), "arch": arch, "width": width, "seed": seed,
                       "dense_epochs": dense_epochs, "dense_val_acc": out["dense_val_acc"],
                       "dense_test_acc": out["dense_test_acc"]}
    else:
        assert (dense_state["arch"], dense_state["width"], dense_state["seed"]) == (arch, width, seed), \
            "dense_state belongs to another arch/width/seed"
        model.load_state_dict(dense_state["model"])
        out["dense_val_acc"], out["dense_test_acc"] = dense_state["dense_val_acc"], dense_state["dense_test_acc"]
    out["dense_state"] = dense_state

    def fresh_optimizer():  # 6./8. a fresh optimizer per phase, constant lr, no weight decay
        if optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)

    def distance_to_set() -> float:  # sum ||W - Proj(W)||^2: how far W is from the sparse set
        with torch.no_grad():
            return sum(float(((w - pw) ** 2).sum()) for w, pw in zip(weights, project(weights, sparsity)))

    # ---- 6. sparsify phase: a fresh Adam (lr 1e-3, no weight decay, constant lr)
    out["dense_distance"] = distance_to_set()
    opt = fresh_optimizer()
    if method == "magnitude":
        # iterative hard thresholding: W <- Proj(W) at the start and after EVERY optimizer step, with the mask
        # recomputed from the current weights; gradients are not masked, so pruned weights may come back
        def hard_threshold():
            with torch.no_grad():
                for w, pw in zip(weights, project(weights, sparsity)):
                    w.copy_(pw)

        hard_threshold()
        for e in range(sparsify_epochs):
            loss = train_one_epoch("sparsify", e, opt, after_step=hard_threshold)
            say(f"magnitude seed {seed} sparsify epoch {e + 1}/{sparsify_epochs} loss {loss:.4f}")
    else:
        # scaled-form ADMM (Boyd et al. 2011, sec. 3.1.1): min f(W) + (rho/2) ||W - Z + U||^2 over W,
        # Z <- Proj(W + U), U <- U + W - Z; at the start Z = Proj(W), U = 0
        with torch.no_grad():
            Z = project([w.detach().clone() for w in weights], sparsity)
            U = [torch.zeros_like(w) for w in weights]

        # Floating-point association: the gradient is added as grad.add_(., alpha=rho) (one rounding, as a
        # fused multiply-add; grad + rho * (.) rounds twice) and U is updated as U + (W - Z). The maths is the
        # same either way; evaluating it in the same association as the project makes a paired run exact
        # instead of diverging by a rounding that, at rho 0.01, flips which near-threshold weights are pruned.
        def add_penalty_gradient():  # d/dW of (rho/2) ||W - Z + U||_F^2 = rho (W - Z + U)
            with torch.no_grad():
                for w, z, u in zip(weights, Z, U):
                    w.grad.add_(w - z + u, alpha=rho)

        for e in range(sparsify_epochs):
            loss = train_one_epoch("sparsify", e, opt, before_step=add_penalty_gradient)
            with torch.no_grad():  # the Z/U update at the end of every epoch (admm_interval = 1 epoch)
                Z = project([w + u for w, u in zip(weights, U)], sparsity)
                U = [u + (w - z) for u, w, z in zip(U, weights, Z)]
                primal = sum(float(((w - z) ** 2).sum()) for w, z in zip(weights, Z))  # with the new Z
            out["primal_residuals"].append(primal)
            say(f"admm seed {seed} sparsify epoch {e + 1}/{sparsify_epochs} loss {loss:.4f} primal {primal:.4g}")
    measure("pre_prune")  # pre_prune_acc: recalibrate BN, evaluate W as it is

    # ---- 7. hard projection W <- Proj(W); stale-BN accuracy first, then with recalibrated BN
    out["pre_prune_distance"] = distance_to_set()  # what the projection removes
    with torch.no_grad():
        for w, pw in zip(weights, project(weights, sparsity)):
            w.copy_(pw)
    measure("post_prune_stale_bn", recalibrate=False)
    measure("post_prune")

    # ---- 8. fine-tune: fresh Adam (lr 1e-3), mask = (W != 0) after the projection, fixed for the phase
    masks = [(w.detach() != 0).to(w.dtype) for w in weights]
    opt = fresh_optimizer()

    def mask_gradients():
        for w, m in zip(weights, masks):
            w.grad.mul_(m)

    def mask_weights():
        with torch.no_grad():
            for w, m in zip(weights, masks):
                w.mul_(m)

    for e in range(finetune_epochs):
        loss = train_one_epoch("finetune", e, opt, before_step=mask_gradients, after_step=mask_weights)
        say(f"{method} seed {seed} finetune epoch {e + 1}/{finetune_epochs} loss {loss:.4f}")
    measure("final")  # final_acc: recalibrate BN, evaluate val and test

    kept = sum(int((w != 0).sum()) for w in weights)
    out["achieved_sparsity"] = 1.0 - kept / sum(w.numel() for w in weights)
    out["seconds"] = time.monotonic() - t0
    return out
