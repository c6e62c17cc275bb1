"""One trial's model, data and loop, set up as trainables.trial sets them up, for the measurements: CIFAR-shaped
synthetic data resident on the device, a trial's training Loader over it, and the step variants of the seed
setting (plain, ADMM, masked, per-step magnitude)."""

from __future__ import annotations

import time

import torch

from trainables.data import CIFAR10_MEAN, CIFAR10_STD, Loader
from trainables.methods import ADMM, Dense, MaskedFinetune, PerStepMagnitude
from trainables.models import build_model
from trainables.sparsity import make_sparsity_set, prunable_parameters
from trainables.trial import make_optimizer, train_epoch

CIFAR10_TRAIN, CIFAR10_VAL = 45_000, 5_000  # CIFAR-10's 50,000 training images less the 10% validation split
RESIDENT = CIFAR10_TRAIN + CIFAR10_VAL  # uint8 images one trial keeps on its GPU (training + validation split)
ADMM_INTERVAL_EPOCHS = 0.25  # PruneConfig's default admm_interval: a Z/U update (a projection) per quarter epoch


def sync(device: torch.device) -> None:
    """Wait for the work queued on a CUDA ``device`` (timings end here); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_cifar(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n CIFAR-shaped uint8 images [n, 3, 32, 32] and int64 labels [n], made on ``device`` (random pixels:
    throughput does not depend on them)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device, generator=g)
    return x, torch.randint(0, 10, (n,), device=device, generator=g)


def trial_loader(x, y, batch_size: int, steps: int, device: torch.device) -> Loader:
    """A trial's training Loader over the first steps * batch_size resident images (a view: no copy)."""
    n = steps * batch_size
    if n > len(x):
        raise ValueError(f"{steps} steps of {batch_size} need {n} images; {len(x)} are resident")
    return Loader(x[:n], y[:n], batch_size=batch_size, shuffle=True, augment=True, mean=CIFAR10_MEAN,
                  std=CIFAR10_STD, device=device, channels_last=device.type == "cuda")


def steps_per_admm_update(batch_size: int) -> int:
    """Optimizer steps between ADMM Z/U updates on a CIFAR-10-sized epoch (45,000 images) at the default
    quarter-epoch interval: the bench times whole multiples of it, so projections come at the trial's rate."""
    return max(1, round(ADMM_INTERVAL_EPOCHS * -(-CIFAR10_TRAIN // batch_size)))


class Rig:
    """One trial's model, prunable parameters and optimizer on ``device``, set up as trial.Trial sets them up
    (channels-last on CUDA; Adam at lr 1e-3, the seed's optimizer). ``compile``: steps run torch.compile's
    module (the parameters are shared with the eager one)."""

    def __init__(self, arch: str, width: float, device: torch.device, *, compile: bool = False):
        torch.manual_seed(0)
        self.device = device
        self.model = build_model(arch, width=width).to(device)
        if device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.params = [p for _, p in prunable_parameters(self.model)]
        self.optimizer = make_optimizer(self.model.parameters(), "adam", 1e-3, 0.0)
        self.step_model = torch.compile(self.model) if compile else self.model

    def epoch(self, loader: Loader, method, *, epoch: int, step0: int) -> float:
        """Seconds of one trial.train_epoch over ``loader`` (it synchronises once, at its end)."""
        sync(self.device)
        t = time.perf_counter()
        train_epoch(self.step_model, self.params, loader, self.optimizer, method, epoch=epoch, step0=step0,
                    label_smoothing=0.0, device=self.device)
        sync(self.device)
        return time.perf_counter() - t

    def images_per_s(self, x, y, method, *, batch_size: int, warmup: int, steps: int) -> float:
        """Training images/s of the trial's loop: ``warmup`` steps, then ``steps`` timed (same shapes)."""
        self.epoch(trial_loader(x, y, batch_size, warmup, self.device), method, epoch=0, step0=0)
        secs = self.epoch(trial_loader(x, y, batch_size, steps, self.device), method, epoch=1, step0=warmup)
        return steps * batch_size / secs


def step_methods(params, steps_per_epoch: int, total_steps: int) -> dict:
    """The step variants of the seed setting (uniform s=0.5): plain (dense phase, control), ADMM (every
    ADMM_INTERVAL_EPOCHS a projection), masked fine-tuning, and per-step magnitude (the seed's baseline: a
    projection after every step). Per-step magnitude prunes the weights when built (speed does not care)."""
    sset = make_sparsity_set("uniform", 0.5)
    admm = ADMM(sset, rho=0.01, interval=ADMM_INTERVAL_EPOCHS, unit="epoch")
    admm.on_phase_start(params, total_steps, steps_per_epoch)
    masks = [m.to(p.dtype) for m, p in zip(sset.masks([p.detach() for p in params]), params)]
    per_step = PerStepMagnitude(sset)
    per_step.on_phase_start(params, total_steps, steps_per_epoch)
    return {"plain": Dense(), "admm": admm, "masked": MaskedFinetune(masks), "magnitude_per_step": per_step}

