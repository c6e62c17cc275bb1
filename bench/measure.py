"""The CUDA measurements of ``python -m bench --device cuda`` (issue 9), each a function of its own: the trial's
loop per step variant, a bare PyTorch loop (the ceiling), the Loader alone, one epoch's evaluation, and the
seed experiment's GPU-hours from measured rates (pure arithmetic)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from trainables.data import CIFAR10_MEAN, CIFAR10_STD, Loader
from trainables.methods import Dense
from trainables.models import build_model
from trainables.evaluate import evaluate_recalibrated

from .rig import CIFAR10_TRAIN, CIFAR10_VAL, Rig, step_methods, steps_per_admm_update, sync, trial_loader


def bench_trial_steps(arch: str, width: float, batch_size: int, device: torch.device, x, y, *,
                      periods: int = 2, period: int | None = None) -> dict:
    """Images/s of the trial loop per step variant (step_methods), each timed over ``periods`` ADMM update
    periods after one period of warm-up; ratios are plain images/s / variant images/s (= step time ratio).
    ``period``: steps per ADMM update (default: a CIFAR-10 epoch's quarter at ``batch_size``)."""
    period = period or steps_per_admm_update(batch_size)
    rig = Rig(arch, width, device)
    # a plain epoch first, so the first variant timed pays no first-use costs (cuDNN plans, allocator growth)
    rig.epoch(trial_loader(x, y, batch_size, period, device), Dense(), epoch=0, step0=0)
    methods = step_methods(rig.params, 4 * period, (1 + periods) * period)
    ips = {name: rig.images_per_s(x, y, m, batch_size=batch_size, warmup=period, steps=periods * period)
           for name, m in methods.items()}
    return {"images_per_s": ips, "step_ms": {k: 1e3 * batch_size / v for k, v in ips.items()},
            "ratio_to_plain": {k: ips["plain"] / v for k, v in ips.items()}, "timed_steps": periods * period,
            "rig": rig}


def bare_loop_images_per_s(arch: str, width: float, batch_size: int, device: torch.device, *, warmup: int,
                           steps: int) -> float:
    """A bare PyTorch loop of the same model: one fixed pre-normalised channels-last batch, bf16 autocast,
    cross-entropy, Adam; no data pipeline, no hooks. The ceiling for the trial's loop."""
    torch.manual_seed(0)
    model = build_model(arch, width=width).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - t)


def loader_images_per_s(x, y, batch_size: int, steps: int, device: torch.device) -> float:
    """Images/s of the Loader alone (gather, crop, flip, normalise, channels-last) on ``device``."""
    loader = trial_loader(x, y, batch_size, steps, device)
    for _ in loader.batches(0):
        pass
    sync(device)
    t = time.perf_counter()
    for _ in loader.batches(1):
        pass
    sync(device)
    return steps * batch_size / (time.perf_counter() - t)


def eval_seconds_per_epoch(rig: Rig, x, y, batch_size: int, recal_batches: int = 50) -> float:
    """Seconds of one epoch's evaluation as a trial does it (evaluate.evaluate_recalibrated: BN recalibration on
    ``recal_batches`` training batches, then a 5,000-image validation pass)."""
    dev = rig.device
    common = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, device=dev, channels_last=dev.type == "cuda")
    val = Loader(x[:CIFAR10_VAL], y[:CIFAR10_VAL], batch_size=max(batch_size, 256), shuffle=False, augment=False,
                 **common)
    n = recal_batches * batch_size
    recal = Loader(x[CIFAR10_VAL:CIFAR10_VAL + n], y[CIFAR10_VAL:CIFAR10_VAL + n], batch_size=batch_size,
                   shuffle=True, augment=False, seed=1, **common)
    evaluate_recalibrated(rig.model, val, recal, recal_batches, dev)  # warm-up
    sync(dev)
    t = time.perf_counter()
    evaluate_recalibrated(rig.model, val, recal, recal_batches, dev)
    sync(dev)
    return time.perf_counter() - t


def seed_gpu_hours(per_arch: dict, *, seeds: int = 5, dense_epochs: int = 10, sparsify_epochs: int = 10,
                   finetune_epochs: int = 10, images_per_epoch: int = CIFAR10_TRAIN, packing_gain: float = 1.0,
                   trials_per_gpu: int = 4) -> dict:
    """GPU-hours of ``python -m sweep run --space seed`` (3 archs x 2 methods x ``seeds``), from measured rates.

    ``per_arch[arch]``: {"images_per_s": {plain, admm, masked, magnitude_per_step}, "eval_s_per_epoch"}, one
    trial alone on the GPU. Per (arch, seed), as the sweep runs it: the dense phase once (shared by both
    methods), the dense control (sparsify + fine-tune epochs, plain steps), and per method its sparsify
    phase (ADMM steps, or per-step magnitude: the seed space leaves schedule at per_step) and masked
    fine-tuning; every epoch is followed by its evaluation. Packed ``trials_per_gpu`` to a GPU, the GPU
    does ``packing_gain`` times one trial's work per second. Pure arithmetic.
    """
    seconds_per_arch = {}
    for arch, r in per_arch.items():
        ips, ev = r["images_per_s"], r["eval_s_per_epoch"]
        epochs = {"plain": dense_epochs + sparsify_epochs + finetune_epochs, "admm": sparsify_epochs,
                  "magnitude_per_step": sparsify_epochs, "masked": 2 * finetune_epochs}
        train = sum(e * images_per_epoch / ips[k] for k, e in epochs.items())
        seconds_per_arch[arch] = seeds * (train + sum(epochs.values()) * ev)
    total = sum(seconds_per_arch.values())
    assumptions = (
        f"{len(per_arch)} archs x 2 methods x {seeds} seeds; each trial {dense_epochs} dense + {sparsify_epochs} "
        f"sparsify + {finetune_epochs} fine-tune = {dense_epochs + sparsify_epochs + finetune_epochs} epochs of "
        f"{images_per_epoch:,} images, the dense phase trained once per (arch, seed) and shared by both methods, "
        f"plus the dense control ({sparsify_epochs + finetune_epochs} plain epochs per arch and seed); sparsify "
        f"steps priced at the measured ADMM step (admm) and per-step magnitude step (magnitude), fine-tune at "
        f"the masked step, dense and control at the plain step, each arch at its own measured single-trial "
        f"images/s; every epoch plus its measured evaluation (BN recalibration + validation); {trials_per_gpu} "
        f"trials packed per GPU, the GPU doing {packing_gain:.2f}x one trial's work per second (the measured "
        f"{trials_per_gpu}-packed/1-trial aggregate ratio; 1 where packing does not help); Ray start-up, the "
        f"four stage measurements and the test-set passes left out")
    return {"gpu_hours": total / packing_gain / 3600, "gpu_hours_unpacked": total / 3600,
            "seconds_per_arch_unpacked": seconds_per_arch, "packing_gain": packing_gain,
            "assumptions": assumptions}

