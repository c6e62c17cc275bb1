"""Measurements in processes of their own, started as ``python -m bench --worker pack|compile``: 1, 2 or 4
trials packed on one GPU (started together at a barrier), and eager vs torch.compile'd steps (a compile can
take minutes, or fail for want of a toolchain)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from trainables.methods import Dense

from .rig import RESIDENT, Rig, steps_per_admm_update, synthetic_cifar, trial_loader


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


class _PeakSampler:
    """The peak device memory in use (MiB, every process: CUDA contexts included) while it runs, sampled every
    20 ms on a thread; on the CPU it samples nothing and reports NaN."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.base = self.peak = _device_used_mib() if cuda else math.nan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _device_used_mib())
            time.sleep(0.02)

    def __enter__(self) -> "_PeakSampler":
        if self.cuda:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.cuda:
            self._thread.join()


def _release_and_wait(procs: list, folder: str, deadline: float, timeout: float) -> str:
    """Wait until every worker is ready (file ``ready<rank>`` in ``folder``), release them together (file
    ``go``) and wait for their exits; returns "" or what went wrong. Kills any worker still running."""
    k = len(procs)
    try:
        while not all(os.path.exists(os.path.join(folder, f"ready{i}")) for i in range(k)):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                return "a worker failed or timed out before the barrier"
            time.sleep(0.05)
        open(os.path.join(folder, "go"), "w").close()
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        return "a worker failed" if any(p.returncode for p in procs) else ""
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def bench_packed(k: int, *, arch: str, width: float, batch_size: int, steps: int, device: str,
                 resident: int = RESIDENT, timeout: float = 300.0) -> dict:
    """Run ``k`` trial-loop workers (``python -m bench --worker pack``) as separate processes.

    Each holds ``resident`` uint8 images on the device (as a trial does), warms up, and waits at a barrier;
    all are released together and each times ``steps`` steps. On CUDA the device memory in use is sampled
    while they run (peak minus what was in use before they started: CUDA contexts included). Returns
    aggregate_packed's figures, or {"error": ...} (workers killed) when one fails or ``timeout`` passes.
    """
    cuda = device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="pack-") as folder:
        if cuda:
            torch.cuda.empty_cache()
        cmd = [sys.executable, "-m", "bench", "--worker", "pack", "--arch", arch, "--width", str(width),
               "--batch-size", str(batch_size), "--steps", str(steps), "--device", device,
               "--resident", str(resident), "--sync-dir", folder]
        errs = [open(os.path.join(folder, f"err{i}"), "w") for i in range(k)]
        with _PeakSampler(cuda) as memory:
            procs = [subprocess.Popen([*cmd, "--rank", str(i)], stdout=subprocess.DEVNULL, stderr=errs[i])
                     for i in range(k)]
            error = _release_and_wait(procs, folder, time.monotonic() + timeout, timeout)
        for f in errs:
            f.close()
        if error:
            tails = [open(os.path.join(folder, f"err{i}")).read()[-1500:] for i in range(k)]
            return {"trials": k, "error": error + ": " + " | ".join(t for t in tails if t.strip())}
        out = aggregate_packed([json.load(open(os.path.join(folder, f"result{i}.json"))) for i in range(k)])
        out["device_used_mib"] = memory.peak - memory.base  # the whole group, CUDA contexts included
        out["device_used_mib_per_trial"] = (memory.peak - memory.base) / k
        return out


def die_with_parent() -> None:
    """Linux: this worker gets SIGKILL when the bench that started it dies (a timeout must not leave workers
    holding the GPU)."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pack_worker(a) -> int:
    """``--worker pack``: one packed trial (bench_packed): warm up, wait for ``go``, time ``a.steps`` steps, write
    ``result<rank>.json`` into ``a.sync_dir``."""
    device = torch.device(a.device)
    x, y = synthetic_cifar(max(a.resident, a.steps * a.batch_size), device, seed=a.rank)
    rig = Rig(a.arch, a.width, device)
    method = Dense()
    warmup = min(a.steps, 20)
    rig.epoch(trial_loader(x, y, a.batch_size, warmup, device), method, epoch=0, step0=0)
    loader = trial_loader(x, y, a.batch_size, a.steps, device)
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


def compile_worker(a) -> int:
    """``--worker compile``: eager then torch.compile'd plain steps (bench_compile); figures into ``a.out``."""
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
    out["compile_s"] = compiled.epoch(trial_loader(x, y, a.batch_size, period, device), Dense(), epoch=0, step0=0)
    secs = compiled.epoch(trial_loader(x, y, a.batch_size, 2 * period, device), Dense(), epoch=1, step0=period)
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
        cmd = [sys.executable, "-m", "bench", "--worker", "compile", "--arch", arch, "--width", str(width),
               "--batch-size", str(batch_size), "--device", device, "--out", out]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s (compile included)"}
        if r.returncode or not os.path.exists(out):
            return {"error": f"exit {r.returncode}: {r.stderr.strip()[-1500:]}"}
        return json.load(open(out))

