"""python -m trainables.bench: measured speed figures next to their targets.

``--device cpu`` (default): batched augmentation vs DataLoader+PIL, ATen ops and wall time per step, pruning
state memory, the per-epoch evaluation share (issue 2 "Speed").

``--device cuda`` (issue 9): MobileNetV2 (width 1.0, 32x32, batch 256, bf16 autocast, channels-last)
training images/s with the trial's own loop (``trial.train_epoch`` on a ``data.Loader`` over synthetic
CIFAR-shaped uint8 data resident on the GPU) beside a bare PyTorch loop; cuDNN autotuning and torch.compile on
vs off; ADMM, masked and per-step magnitude steps vs a plain step; 1, 2 and 4 trials packed on one GPU
(separate processes started together); the seed experiment's GPU-hours; 2:4 semi-structured inference
latency per architecture and batch size. Targets are printed beside the figures, never asserted. ``--json``
prints every figure as one JSON document on stdout (the human lines then go to stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from trainables.config import DataConfig
from trainables.data import CIFAR10_MEAN, CIFAR10_STD, Loader
from trainables.methods import ADMM, Dense, MaskedFinetune, PerStepMagnitude
from trainables.models import build_model
from trainables.sparsity import make_sparsity_set, prunable_parameters
from trainables.trial import evaluate_recalibrated, make_optimizer, train_epoch


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def _images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g)


def bench_augmentation(n: int, batch_size: int) -> tuple[float, float]:
    """Images/s of data.Loader vs torchvision DataLoader with PIL transforms."""
    import torchvision.transforms as T
    from PIL import Image
    x, y = _images(n)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    loader = Loader(x, y, batch_size=batch_size, shuffle=True, augment=True, mean=mean, std=std)
    t = time.perf_counter()
    for _ in loader.batches(0):
        pass
    ours = n / (time.perf_counter() - t)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            return tf(pil[i]), y[i]

    t = time.perf_counter()
    for _ in torch.utils.data.DataLoader(DS(), batch_size=batch_size, shuffle=True):
        pass
    theirs = n / (time.perf_counter() - t)
    return ours, theirs


def _step(model, params, opt, method, x, y):
    out = model(x)
    loss = F.cross_entropy(out, y)
    opt.zero_grad(set_to_none=False)
    loss.backward()
    method.before_step(params)
    opt.step()
    method.after_step(params, 1)


def bench_steps(arch: str, width: float, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, width=width)
    params = [p for _, p in prunable_parameters(model)]
    x, y = torch.randn(batch_size, 3, 32, 32), torch.randint(0, 10, (batch_size,))
    sset = make_sparsity_set("uniform", 0.5)
    admm = ADMM(sset, rho=0.01, interval=1, unit="epoch")
    admm.on_phase_start(params, steps)
    masks = [m.float() for m in sset.masks([p.detach() for p in params])]
    methods = {"plain": Dense(), "admm": admm, "masked": MaskedFinetune(masks)}
    res = {}
    for name, method in methods.items():
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        _step(model, params, opt, method, x, y)  # warm-up (creates optimizer state)
        counter = _OpCounter()
        with counter:
            _step(model, params, opt, method, x, y)
        t = time.perf_counter()
        for _ in range(steps):
            _step(model, params, opt, method, x, y)
        res[name] = (counter.count, (time.perf_counter() - t) / steps)
    pbytes = sum(p.numel() * p.element_size() for p in params)
    state = sum(t.numel() * t.element_size() for t in admm.Z + admm.U)
    res["memory_ratio"] = state / pbytes
    res["mask_ratio"] = sum(m.numel() * m.element_size() for m in masks) / pbytes
    return res


CIFAR10_TRAIN, CIFAR10_VAL = 45_000, 5_000  # CIFAR-10's 50,000 training images less the 10% validation split


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t) / repeats


def bench_eval_share(arch: str, width: float, batch_size: int = 128, recal_batches: int = 50,
                     repeats: int = 3, device: str = "cpu") -> dict:
    """Per-epoch evaluation cost (BN recalibration + validation pass, DESIGN rule 10) as a share of a
    CIFAR-10-sized epoch, from measured per-batch times: a training step, a train-mode forward without
    gradient (a recalibration batch) and an eval-mode forward of a validation batch."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model(arch, width=width).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch_size, 3, 32, 32, device=dev), torch.randint(0, 10, (batch_size,), device=dev)
    xv = torch.randn(max(batch_size, 256), 3, 32, 32, device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        sync()

    def recal_batch():
        with torch.no_grad():
            model.train()
            model(x)
        sync()

    def val_batch():
        with torch.no_grad():
            model.eval()
            model(xv)
            model.train()
        sync()

    params = [p for _, p in prunable_parameters(model)]
    sset = make_sparsity_set("uniform", 0.9)

    def project():  # the fidelity's extra work besides a second evaluation: Proj_S(W) into a copy and back
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            torch._foreach_copy_(params, sset.project([p.detach() for p in params]))
            torch._foreach_copy_(params, saved)
        sync()

    t_step, t_recal, t_val = _time(step, repeats), _time(recal_batch, repeats), _time(val_batch, repeats)
    t_project = _time(project, repeats)
    steps = -(-CIFAR10_TRAIN // batch_size)
    recal = min(recal_batches, steps)
    val_batches = -(-CIFAR10_VAL // xv.shape[0])
    epoch = steps * t_step
    evaluation = recal * t_recal + val_batches * t_val
    # projected_val_acc (DESIGN rule 14): where the weights are not in the sparse set yet (ADMM's sparsify
    # epochs, gradual magnitude), a projected copy is evaluated the same way once more per epoch
    fidelity = t_project + evaluation
    return {"step_s": t_step, "recal_batch_s": t_recal, "val_batch_s": t_val, "project_s": t_project,
            "epoch_s": epoch, "eval_s": evaluation, "share": evaluation / epoch, "fidelity_s": fidelity,
            "fidelity_share": fidelity / epoch, "recal_batches": recal, "val_batches": val_batches}


# ----------------------------------------------------------------------------------------- CUDA figures (issue 9)

ARCHS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
TARGETS = {
    "trial_images_per_s": 20_000,  # MobileNetV2 w1.0, batch 256, bf16, one H100, the trial's own loop
    "bare_over_trial": 1.1,  # a bare PyTorch loop at most this much faster than the trial's loop
    "step_ratio": 1.05,  # ADMM and masked step time / plain step time, at most
    "packed_gain": 1.5,  # aggregate images/s of 4 packed trials / 1 trial, at least
    "seed_gpu_hours": 1.0,  # the seed experiment, under
}
RESIDENT = CIFAR10_TRAIN + CIFAR10_VAL  # uint8 images one trial keeps on its GPU (training + validation split)
ADMM_INTERVAL_EPOCHS = 0.25  # PruneConfig's default admm_interval: a Z/U update (a projection) per quarter epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_cifar(n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n CIFAR-shaped uint8 images [n, 3, 32, 32] and int64 labels [n], made on ``device`` (random pixels:
    throughput does not depend on them)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device, generator=g)
    return x, torch.randint(0, 10, (n,), device=device, generator=g)


def _loader(x, y, batch_size: int, steps: int, device: torch.device) -> Loader:
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
    """One trial's model, prunable parameters and optimizer on ``device``, set up as trial._Trial sets them up
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
        _sync(self.device)
        t = time.perf_counter()
        train_epoch(self.step_model, self.params, loader, self.optimizer, method, epoch=epoch, step0=step0,
                    label_smoothing=0.0, device=self.device)
        _sync(self.device)
        return time.perf_counter() - t

    def images_per_s(self, x, y, method, *, batch_size: int, warmup: int, steps: int) -> float:
        """Training images/s of the trial's loop: ``warmup`` steps, then ``steps`` timed (same shapes)."""
        self.epoch(_loader(x, y, batch_size, warmup, self.device), method, epoch=0, step0=0)
        secs = self.epoch(_loader(x, y, batch_size, steps, self.device), method, epoch=1, step0=warmup)
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


def bench_trial_steps(arch: str, width: float, batch_size: int, device: torch.device, x, y, *,
                      periods: int = 2, period: int | None = None) -> dict:
    """Images/s of the trial loop per step variant (step_methods), each timed over ``periods`` ADMM update
    periods after one period of warm-up; ratios are plain images/s / variant images/s (= step time ratio).
    ``period``: steps per ADMM update (default: a CIFAR-10 epoch's quarter at ``batch_size``)."""
    period = period or steps_per_admm_update(batch_size)
    rig = Rig(arch, width, device)
    # a plain epoch first, so the first variant timed pays no first-use costs (cuDNN plans, allocator growth)
    rig.epoch(_loader(x, y, batch_size, period, device), Dense(), epoch=0, step0=0)
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
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t)


def loader_images_per_s(x, y, batch_size: int, steps: int, device: torch.device) -> float:
    """Images/s of the Loader alone (gather, crop, flip, normalise, channels-last) on ``device``."""
    loader = _loader(x, y, batch_size, steps, device)
    for _ in loader.batches(0):
        pass
    _sync(device)
    t = time.perf_counter()
    for _ in loader.batches(1):
        pass
    _sync(device)
    return steps * batch_size / (time.perf_counter() - t)


def eval_seconds_per_epoch(rig: Rig, x, y, batch_size: int, recal_batches: int = 50) -> float:
    """Seconds of one epoch's evaluation as a trial does it (trial.evaluate_recalibrated: BN recalibration on
    ``recal_batches`` training batches, then a 5,000-image validation pass)."""
    dev = rig.device
    common = dict(mean=CIFAR10_MEAN, std=CIFAR10_STD, device=dev, channels_last=dev.type == "cuda")
    val = Loader(x[:CIFAR10_VAL], y[:CIFAR10_VAL], batch_size=max(batch_size, 256), shuffle=False, augment=False,
                 **common)
    n = recal_batches * batch_size
    recal = Loader(x[CIFAR10_VAL:CIFAR10_VAL + n], y[CIFAR10_VAL:CIFAR10_VAL + n], batch_size=batch_size,
                   shuffle=True, augment=False, seed=1, **common)
    evaluate_recalibrated(rig.model, val, recal, recal_batches, dev)  # warm-up
    _sync(dev)
    t = time.perf_counter()
    evaluate_recalibrated(rig.model, val, recal, recal_batches, dev)
    _sync(dev)
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


# ---- packed trials: separate processes, started together

def aggregate_packed(results: list[dict]) -> dict:
    """Aggregate images/s of workers that ran together: all their images over the span from the first
    start to the last end (wall clock: one machine), so a worker that finishes early earns nothing."""
    span = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return {"trials": len(results), "aggregate_images_per_s": sum(r["images"] for r in results) / span,
            "per_trial_images_per_s": [r["images"] / (r["t1"] - r["t0"]) for r in results],
            "span_s": span, "max_allocated_mib": [r["max_allocated_mib"] for r in results],
            "max_reserved_mib": [r["max_reserved_mib"] for r in results]}


def _device_used_mib() -> float:
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def bench_packed(k: int, *, arch: str, width: float, batch_size: int, steps: int, device: str,
                 resident: int = RESIDENT, timeout: float = 300.0) -> dict:
    """Run ``k`` trial-loop workers (``python -m trainables.bench --worker pack``) as separate processes.

    Each holds ``resident`` uint8 images on the device (as a trial does), warms up, and waits at a barrier;
    all are released together and each times ``steps`` steps. On CUDA the device memory in use is sampled
    while they run (peak minus what was in use before they started: CUDA contexts included). Returns
    aggregate_packed's figures, or {"error": ...} (workers killed) when one fails or ``timeout`` passes.
    """
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="pack-") as sync:
        if cuda:
            torch.cuda.empty_cache()
        base = _device_used_mib() if cuda else math.nan
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _device_used_mib())
                time.sleep(0.02)

        cmd = [sys.executable, "-m", "trainables.bench", "--worker", "pack", "--arch", arch, "--width", str(width),
               "--batch-size", str(batch_size), "--steps", str(steps), "--device", device,
               "--resident", str(resident), "--sync-dir", sync]
        errs = [open(os.path.join(sync, f"err{i}"), "w") for i in range(k)]
        procs = [subprocess.Popen([*cmd, "--rank", str(i)], stdout=subprocess.DEVNULL, stderr=errs[i])
                 for i in range(k)]
        sampler = threading.Thread(target=sample, daemon=True)
        if cuda:
            sampler.start()
        deadline = time.monotonic() + timeout
        error = ""
        try:
            while not all(os.path.exists(os.path.join(sync, f"ready{i}")) for i in range(k)):
                if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                    error = "a worker failed or timed out before the barrier"
                    break
                time.sleep(0.05)
            if not error:
                open(os.path.join(sync, "go"), "w").close()
                for p in procs:
                    p.wait(timeout=max(1.0, deadline - time.monotonic()))
                if any(p.returncode for p in procs):
                    error = "a worker failed"
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
        finally:
            stop.set()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for f in errs:
                f.close()
        if cuda:
            sampler.join()
        if error:
            tails = [open(os.path.join(sync, f"err{i}")).read()[-1500:] for i in range(k)]
            return {"trials": k, "error": error + ": " + " | ".join(t for t in tails if t.strip())}
        out = aggregate_packed([json.load(open(os.path.join(sync, f"result{i}.json"))) for i in range(k)])
        out["device_used_mib"] = peak[0] - base  # the whole group, CUDA contexts included
        out["device_used_mib_per_trial"] = (peak[0] - base) / k
        return out


def _die_with_parent() -> None:
    """Linux: this worker gets SIGKILL when the bench that started it dies (a timeout must not leave workers
    holding the GPU)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pack_worker(a) -> int:
    device = torch.device(a.device)
    x, y = synthetic_cifar(max(a.resident, a.steps * a.batch_size), device, seed=a.rank)
    rig = Rig(a.arch, a.width, device)
    method = Dense()
    warmup = min(a.steps, 20)
    rig.epoch(_loader(x, y, a.batch_size, warmup, device), method, epoch=0, step0=0)
    loader = _loader(x, y, a.batch_size, a.steps, device)
    open(os.path.join(a.sync_dir, f"ready{a.rank}"), "w").close()
    while not os.path.exists(os.path.join(a.sync_dir, "go")):
        time.sleep(0.002)
    t0 = time.time()
    rig.epoch(loader, method, epoch=1, step0=warmup)
    t1 = time.time()
    cuda = device.type == "cuda"
    result = {"rank": a.rank, "t0": t0, "t1": t1, "images": a.steps * a.batch_size,
              "max_allocated_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else math.nan,
              "max_reserved_mib": torch.cuda.max_memory_reserved(device) / 2**20 if cuda else math.nan}
    tmp = os.path.join(a.sync_dir, f".result{a.rank}")
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, os.path.join(a.sync_dir, f"result{a.rank}.json"))
    return 0


# ---- torch.compile, in a process of its own (a compile can take minutes, or fail for want of a toolchain)

def _compile_worker(a) -> int:
    device = torch.device(a.device)
    period = steps_per_admm_update(a.batch_size)
    x, y = synthetic_cifar(2 * period * a.batch_size, device)
    out = {}
    eager = Rig(a.arch, a.width, device)
    out["eager_images_per_s"] = eager.images_per_s(x, y, Dense(), batch_size=a.batch_size, warmup=period,
                                                   steps=2 * period)
    del eager
    compiled = Rig(a.arch, a.width, device, compile=True)
    # the first epoch compiles the forward and backward graphs (one batch shape: no recompiles after)
    out["compile_s"] = compiled.epoch(_loader(x, y, a.batch_size, period, device), Dense(), epoch=0, step0=0)
    secs = compiled.epoch(_loader(x, y, a.batch_size, 2 * period, device), Dense(), epoch=1, step0=period)
    out["compiled_images_per_s"] = 2 * period * a.batch_size / secs
    out["speedup"] = out["compiled_images_per_s"] / out["eager_images_per_s"]
    out["winner"] = "compile" if out["speedup"] > 1 else "eager"
    with open(a.out, "w") as f:
        json.dump(out, f)
    return 0


def bench_compile(arch: str, width: float, batch_size: int, device: str, timeout: float) -> dict:
    """Eager vs torch.compile'd trial loop (plain steps), measured in one subprocess; {"error": ...} when the
    compile fails or outlasts ``timeout`` seconds."""
    with tempfile.TemporaryDirectory(prefix="compile-") as d:
        out = os.path.join(d, "compile.json")
        cmd = [sys.executable, "-m", "trainables.bench", "--worker", "compile", "--arch", arch, "--width", str(width),
               "--batch-size", str(batch_size), "--device", device, "--out", out]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s (compile included)"}
        if r.returncode or not os.path.exists(out):
            return {"error": f"exit {r.returncode}: {r.stderr.strip()[-1500:]}"}
        return json.load(open(out))


# ---- everything, with targets

def _fmt_target(value: float, target: float, *, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return f"(target {'<=' if at_most else '>='} {target:g}: {'met' if met else 'NOT met'})"


def device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"name": device.type, "capability": "", "memory_gib": math.nan, "torch": torch.__version__,
                "cuda": torch.version.cuda, "cudnn": None, "cusparselt": False}
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / 2**30, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cusparselt": torch.backends.cusparselt.is_available()}


def cuda_figures(*, arch: str = "mobilenet_v2", width: float = 1.0, batch_size: int = 256, quick: bool = False,
                 compile: bool = True, compile_timeout: float = 240.0, pack_timeout: float = 120.0, say=print,
                 save=lambda figures: None, device: str = "cuda") -> dict:
    """Every CUDA figure of the issue (module docstring); ``say`` receives the human-readable lines, ``save``
    the figures so far after each section (``complete`` is True only at the end), so a run cut short still
    leaves what it measured. ``quick``: fewer steps, one architecture for the estimate, two batch sizes, no
    compile (a smoke run). ``device``: another device only for a dry run of this code (figures meaningless)."""
    from trainables.semistructured import BATCH_SIZES, latency_rows, prune_2to4_
    dev = torch.device(device)
    info = device_info(dev)
    say(f"GPU: {info['name']} (compute capability {info['capability']}, {info['memory_gib']:.0f} GiB), torch "
        f"{info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, cuSPARSELt {info['cusparselt']}")
    out: dict = {"complete": False, "device": info, "targets": TARGETS, "quick": quick,
                 "config": {"arch": arch, "width": width, "batch_size": batch_size, "precision": "bf16 autocast",
                            "memory_format": "channels_last", "data": "synthetic CIFAR-shaped uint8, resident"}}
    periods = 1 if quick else 2
    archs = (arch,) if quick else ARCHS  # the latency table's and the estimate's architectures
    period = steps_per_admm_update(batch_size)
    x, y = synthetic_cifar(RESIDENT, dev)

    # the trial's loop per step variant, the bare loop, the Loader alone
    steps = bench_trial_steps(arch, width, batch_size, dev, x, y, periods=periods)
    rig = steps.pop("rig")
    ours = steps["images_per_s"]["plain"]
    bare = bare_loop_images_per_s(arch, width, batch_size, dev, warmup=period, steps=periods * period)
    loader = loader_images_per_s(x, y, batch_size, periods * period, dev)
    torch.backends.cudnn.benchmark = True
    try:
        tuned = Rig(arch, width, dev).images_per_s(x, y, Dense(), batch_size=batch_size, warmup=period,
                                                   steps=periods * period)
    finally:
        torch.backends.cudnn.benchmark = False
    out["train"] = {"trial_loop_images_per_s": ours, "bare_loop_images_per_s": bare, "bare_over_trial": bare / ours,
                    "loader_images_per_s": loader, "cudnn_benchmark_images_per_s": tuned,
                    "cudnn_benchmark_gain": tuned / ours, "timed_steps": periods * period}
    say(f"train {arch} w{width:g} batch {batch_size} bf16 channels-last: trial loop {ours:,.0f} img/s "
        f"{_fmt_target(ours, TARGETS['trial_images_per_s'], at_most=False)}; bare PyTorch loop {bare:,.0f} img/s, "
        f"bare/trial {bare / ours:.3f} {_fmt_target(bare / ours, TARGETS['bare_over_trial'], at_most=True)}; "
        f"Loader alone {loader:,.0f} img/s; with cudnn.benchmark {tuned:,.0f} img/s ({tuned / ours:.3f}x)")
    out["steps"] = steps
    save(out)
    r = steps["ratio_to_plain"]
    say(f"step time vs plain (trial loop, {steps['timed_steps']} steps, ADMM projecting every {period} steps): "
        f"admm {r['admm']:.3f} {_fmt_target(r['admm'], TARGETS['step_ratio'], at_most=True)}, masked "
        f"{r['masked']:.3f} {_fmt_target(r['masked'], TARGETS['step_ratio'], at_most=True)}, per-step magnitude "
        f"{r['magnitude_per_step']:.3f} (no target: a projection every step is the seed baseline's definition)")

    # 2:4 semi-structured inference latency
    del rig
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    rows = []
    for name in archs:
        torch.manual_seed(0)
        model = prune_2to4_(build_model(name, width=1.0)).eval()
        rows += [r.as_dict() for r in latency_rows(model, name, (1, 256) if quick else BATCH_SIZES, device=dev,
                                                   iters=20 if quick else 50)]
    out["latency"] = rows
    save(out)
    say("2:4 semi-structured inference, bf16, eval, channels-last (median ms per batch; dense = as trained, "
        "linear = 1x1 convs as dense F.linear, sparse = their 2:4 weights on sparse tensor cores):")
    say(f"  {'arch':20s} {'batch':>5s} {'dense':>8s} {'linear':>8s} {'sparse':>8s} {'speedup':>7s} "
        f"{'layers':>6s} {'MACs':>5s}  note")
    for r in rows:
        note = r["reason"] or f"max rel err {r['max_rel_err']:.1e}"
        say(f"  {r['arch']:20s} {r['batch_size']:5d} {r['dense_ms']:8.3f} {r['linear_ms']:8.3f} {r['sparse_ms']:8.3f} "
            f"{r['speedup']:7.2f} {r['sparse_layers']:6d} {r['sparse_mac_share']:5.0%}  {r['status']}: {note}")

    # packing: 1, 2, 4 trials in separate processes on this GPU
    pack_steps = (periods + 1) * period
    out["packing"] = {}
    for k in (1, 2, 4):
        p = bench_packed(k, arch=arch, width=width, batch_size=batch_size, steps=pack_steps, device=device,
                         timeout=pack_timeout)
        out["packing"][str(k)] = p
        save(out)
        if "error" in p:
            say(f"packed x{k}: failed: {p['error']}")
        else:
            say(f"packed x{k}: aggregate {p['aggregate_images_per_s']:,.0f} img/s, per trial "
                f"{', '.join(f'{v:,.0f}' for v in p['per_trial_images_per_s'])} img/s; GPU memory per trial "
                f"{p['device_used_mib_per_trial']:,.0f} MiB in use (context included), peak reserved by PyTorch "
                f"{max(p['max_reserved_mib']):,.0f} MiB")
    one, four = out["packing"]["1"], out["packing"]["4"]
    gain = (four["aggregate_images_per_s"] / one["aggregate_images_per_s"]
            if "error" not in one and "error" not in four else math.nan)
    out["packing"]["gain_4_over_1"] = gain
    say(f"packing gain: 4 trials / 1 trial = {gain:.2f}x {_fmt_target(gain, TARGETS['packed_gain'], at_most=False)}")

    # per-architecture rates at the seed's batch size, the estimate
    seed_batch = DataConfig().batch_size  # the seed space leaves batch_size at its default
    out["archs"] = {}
    for name in archs:
        s = bench_trial_steps(name, 1.0, seed_batch, dev, x, y, periods=periods)
        ev = eval_seconds_per_epoch(s.pop("rig"), x, y, seed_batch)
        out["archs"][name] = {"images_per_s": s["images_per_s"], "ratio_to_plain": s["ratio_to_plain"],
                              "eval_s_per_epoch": ev, "batch_size": seed_batch}
        say(f"{name} w1 batch {seed_batch}: " + ", ".join(f"{k} {v:,.0f}" for k, v in s["images_per_s"].items())
            + f" img/s; per-epoch evaluation {ev:.2f} s")
    est = seed_gpu_hours(out["archs"], packing_gain=gain if gain == gain and gain > 1 else 1.0)
    out["seed_estimate"] = est
    save(out)
    say(f"seed experiment (--space seed): {est['gpu_hours']:.2f} GPU-hours packed, {est['gpu_hours_unpacked']:.2f} "
        f"one trial per GPU {_fmt_target(est['gpu_hours'], TARGETS['seed_gpu_hours'], at_most=True)}; "
        f"assumed: {est['assumptions']}")

    # torch.compile
    if compile and not quick:
        c = bench_compile(arch, width, batch_size, device, compile_timeout)
        if "error" in c:
            say(f"torch.compile: could not be measured: {c['error']}")
        else:
            say(f"torch.compile: eager {c['eager_images_per_s']:,.0f} img/s, compiled {c['compiled_images_per_s']:,.0f} "
                f"img/s ({c['speedup']:.3f}x; compile {c['compile_s']:.0f} s): {c['winner']} wins")
    else:
        c = {"skipped": "quick run" if quick else "--no-compile"}
    out["compile"] = c
    out["complete"] = True
    save(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainables.bench")
    ap.add_argument("--arch", default="mobilenet_v2")
    ap.add_argument("--width", type=float, default=None, help="width multiplier (default: 0.5 on cpu, 1.0 on cuda)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 64 on cpu, 256 on cuda")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--device", default="cpu", help="cpu (CPU figures) | cuda (the GPU figures of issue 9)")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="cuda: every figure as JSON, on stdout (the human lines go to stderr) or into PATH")
    ap.add_argument("--quick", action="store_true", help="cuda: a short smoke run (fewer steps, no compile)")
    ap.add_argument("--no-compile", action="store_true", help="cuda: skip the torch.compile measurement")
    ap.add_argument("--compile-timeout", type=float, default=240.0, help="cuda: seconds allowed for the "
                    "torch.compile measurement, compile included")
    ap.add_argument("--pack-timeout", type=float, default=120.0, help="cuda: seconds allowed for each packed "
                    "group (1, 2, 4 trials), process start-up included")
    # internal: the worker processes of the packing and compile measurements
    ap.add_argument("--worker", choices=("pack", "compile"), help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sync-dir", help=argparse.SUPPRESS)
    ap.add_argument("--resident", type=int, default=RESIDENT, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    cuda = a.device.startswith("cuda")
    if a.worker:
        _die_with_parent()
    a.width = a.width if a.width is not None else (1.0 if cuda else 0.5)
    a.batch_size = a.batch_size if a.batch_size is not None else (256 if cuda else 64)
    if a.worker == "pack":
        return _pack_worker(a)
    if a.worker == "compile":
        return _compile_worker(a)
    if cuda:
        if not torch.cuda.is_available():
            print("error: --device cuda: CUDA is not available here (torch.cuda.is_available() is False: no "
                  "NVIDIA GPU, driver or CUDA build of torch); run it on a GPU machine, or use --device cpu",
                  file=sys.stderr)
            return 2
        to_stdout = a.json == "-"
        say = (lambda line: print(line, file=sys.stderr, flush=True)) if to_stdout else (
            lambda line: print(line, flush=True))

        def save(figures: dict) -> None:  # after every section, atomically: a cut-short run keeps its figures
            if a.json and not to_stdout:
                with open(a.json + ".tmp", "w") as f:
                    json.dump(figures, f, indent=2, default=float)
                os.replace(a.json + ".tmp", a.json)

        figures = cuda_figures(arch=a.arch, width=a.width, batch_size=a.batch_size, quick=a.quick,
                               compile=not a.no_compile, compile_timeout=a.compile_timeout,
                               pack_timeout=a.pack_timeout, say=say, save=save)
        if to_stdout:
            print(json.dumps(figures, indent=2, default=float))
        return 0
    torch.set_num_threads(1)
    ours, theirs = bench_augmentation(a.images, 256)
    print(f"augmentation: Loader {ours:.0f} img/s, torchvision+PIL {theirs:.0f} img/s, "
          f"ratio {ours / theirs:.1f}x (target >= 4x)")
    r = bench_steps(a.arch, a.width, a.batch_size, a.steps)
    plain_ops, plain_t = r["plain"]
    for name, target in (("admm", 1.02), ("masked", 1.01)):
        ops, t = r[name]
        print(f"{name} step: ATen ops {ops} vs plain {plain_ops}, ratio {ops / plain_ops:.3f} (target <= {target}); "
              f"wall {t * 1e3:.1f} ms vs {plain_t * 1e3:.1f} ms, ratio {t / plain_t:.3f}")
    print(f"pruning state memory: ADMM Z+U {r['memory_ratio']:.2f} x prunable bytes, masks {r['mask_ratio']:.2f} x "
          f"(target <= 2.5)")
    e = bench_eval_share(a.arch, a.width, device=a.device)
    print(f"per-epoch evaluation (BN recalibration on {e['recal_batches']} batches + {e['val_batches']} validation "
          f"batches) on a CIFAR-10-sized epoch: {e['eval_s']:.1f} s of {e['epoch_s']:.1f} s, share "
          f"{100 * e['share']:.1f}% (target <= 10%); per batch: step {e['step_s'] * 1e3:.0f} ms, recalibration "
          f"forward {e['recal_batch_s'] * 1e3:.0f} ms, validation forward {e['val_batch_s'] * 1e3:.0f} ms")
    print(f"early-stopping fidelity (projected_val_acc: projection {e['project_s'] * 1e3:.0f} ms + the same "
          f"evaluation of the projected copy), in ADMM's sparsify epochs only: {e['fidelity_s']:.1f} s of "
          f"{e['epoch_s']:.1f} s, share {100 * e['fidelity_share']:.1f}% (target <= 10%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
