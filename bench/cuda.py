"""Every CUDA figure of ``python -m bench --device cuda`` (issue 9), one function per section, each printed
beside its target (never asserted) and saved as it is measured:

1. train: MobileNetV2 (width 1.0, 32x32, batch 256, bf16 autocast, channels-last) training images/s with the
   trial's own loop (``trial.train_epoch`` on a ``data.Loader`` over synthetic CIFAR-shaped uint8 data resident
   on the GPU) beside a bare PyTorch loop, the Loader alone and cuDNN autotuning; ADMM, masked and per-step
   magnitude steps against a plain step;
2. latency: 2:4 semi-structured inference latency per architecture and batch size;
3. packing: 1, 2 and 4 trials packed on one GPU (separate processes started together);
4. estimate: per-architecture rates at the seed's batch size and the seed experiment's GPU-hours;
5. compile: torch.compile on vs off (in a process of its own).
"""

from __future__ import annotations

import math

import torch

from vocabulary.config import DataConfig
from trainables.methods import Dense
from trainables.models import build_model

from .measure import (bare_loop_images_per_s, bench_trial_steps, eval_seconds_per_epoch, loader_images_per_s,
                      seed_gpu_hours)
from .rig import RESIDENT, Rig, steps_per_admm_update, synthetic_cifar
from trainables.semistructured import BATCH_SIZES, latency_rows, prune_2to4_
from .workers import bench_compile, bench_packed

ARCHS = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
TARGETS = {
    "trial_images_per_s": 20_000,  # MobileNetV2 w1.0, batch 256, bf16, one H100, the trial's own loop
    "bare_over_trial": 1.1,  # a bare PyTorch loop at most this much faster than the trial's loop
    "step_ratio": 1.05,  # ADMM and masked step time / plain step time, at most
    "packed_gain": 1.5,  # aggregate images/s of 4 packed trials / 1 trial, at least
    "seed_gpu_hours": 1.0,  # the seed experiment, under
}


def _fmt_target(value: float, target: float, *, at_most: bool) -> str:
    met = value <= target if at_most else value >= target
    return f"(target {'<=' if at_most else '>='} {target:g}: {'met' if met else 'NOT met'})"


def device_info(device: torch.device) -> dict:
    """Name, compute capability, memory and library versions of ``device`` (placeholders off CUDA)."""
    if device.type != "cuda":
        return {"name": device.type, "capability": "", "memory_gib": math.nan, "torch": torch.__version__,
                "cuda": torch.version.cuda, "cudnn": None, "cusparselt": False}
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": props.total_memory / 2**30, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cusparselt": torch.backends.cusparselt.is_available()}


class _Run:
    """What every section shares: the settings, the resident data, the figures so far and the outlets."""

    def __init__(self, *, arch, width, batch_size, quick, device, say, save):
        self.arch, self.width, self.batch_size, self.quick, self.device = arch, width, batch_size, quick, device
        self.dev = torch.device(device)
        self.say, self._save = say, save
        self.periods = 1 if quick else 2
        self.archs = (arch,) if quick else ARCHS  # the latency table's and the estimate's architectures
        self.period = steps_per_admm_update(batch_size)
        self.out: dict = {"complete": False}
        self.x = self.y = None

    def save(self) -> None:
        self._save(self.out)


def _cudnn_benchmark_images_per_s(run: _Run) -> float:
    torch.backends.cudnn.benchmark = True
    try:
        return Rig(run.arch, run.width, run.dev).images_per_s(run.x, run.y, Dense(), batch_size=run.batch_size,
                                                             warmup=run.period, steps=run.periods * run.period)
    finally:
        torch.backends.cudnn.benchmark = False


def train_section(run: _Run) -> None:
    """The trial's loop per step variant, the bare loop, the Loader alone, cuDNN autotuning."""
    arch, width, batch_size, dev, period, periods = (run.arch, run.width, run.batch_size, run.dev, run.period,
                                                     run.periods)
    steps = bench_trial_steps(arch, width, batch_size, dev, run.x, run.y, periods=periods)
    del steps["rig"]
    ours = steps["images_per_s"]["plain"]
    bare = bare_loop_images_per_s(arch, width, batch_size, dev, warmup=period, steps=periods * period)
    loader = loader_images_per_s(run.x, run.y, batch_size, periods * period, dev)
    tuned = _cudnn_benchmark_images_per_s(run)
    run.out["train"] = {"trial_loop_images_per_s": ours, "bare_loop_images_per_s": bare,
                        "bare_over_trial": bare / ours, "loader_images_per_s": loader,
                        "cudnn_benchmark_images_per_s": tuned, "cudnn_benchmark_gain": tuned / ours,
                        "timed_steps": periods * period}
    run.say(f"train {arch} w{width:g} batch {batch_size} bf16 channels-last: trial loop {ours:,.0f} img/s "
            f"{_fmt_target(ours, TARGETS['trial_images_per_s'], at_most=False)}; bare PyTorch loop {bare:,.0f} "
            f"img/s, bare/trial {bare / ours:.3f} {_fmt_target(bare / ours, TARGETS['bare_over_trial'], at_most=True)}"
            f"; Loader alone {loader:,.0f} img/s; with cudnn.benchmark {tuned:,.0f} img/s ({tuned / ours:.3f}x)")
    run.out["steps"] = steps
    run.save()
    r = steps["ratio_to_plain"]
    run.say(f"step time vs plain (trial loop, {steps['timed_steps']} steps, ADMM projecting every {period} steps): "
            f"admm {r['admm']:.3f} {_fmt_target(r['admm'], TARGETS['step_ratio'], at_most=True)}, masked "
            f"{r['masked']:.3f} {_fmt_target(r['masked'], TARGETS['step_ratio'], at_most=True)}, per-step "
            f"magnitude {r['magnitude_per_step']:.3f} (no target: a projection every step is the seed "
            "baseline's definition)")


def latency_section(run: _Run) -> None:
    """2:4 semi-structured inference latency per architecture and batch size."""
    if run.dev.type == "cuda":
        torch.cuda.empty_cache()
    rows = []
    for name in run.archs:
        torch.manual_seed(0)
        model = prune_2to4_(build_model(name, width=1.0)).eval()
        rows += [r.as_dict() for r in latency_rows(model, name, (1, 256) if run.quick else BATCH_SIZES,
                                                   device=run.dev, iters=20 if run.quick else 50)]
    run.out["latency"] = rows
    run.save()
    run.say("2:4 semi-structured inference, bf16, eval, channels-last (median ms per batch; dense = as trained, "
            "linear = 1x1 convs as dense F.linear, sparse = their 2:4 weights on sparse tensor cores):")
    run.say(f"  {'arch':20s} {'batch':>5s} {'dense':>8s} {'linear':>8s} {'sparse':>8s} {'speedup':>7s} "
            f"{'layers':>6s} {'MACs':>5s}  note")
    for r in rows:
        note = r["reason"] or f"max rel err {r['max_rel_err']:.1e}"
        run.say(f"  {r['arch']:20s} {r['batch_size']:5d} {r['dense_ms']:8.3f} {r['linear_ms']:8.3f} "
                f"{r['sparse_ms']:8.3f} {r['speedup']:7.2f} {r['sparse_layers']:6d} {r['sparse_mac_share']:5.0%}  "
                f"{r['status']}: {note}")


def packing_section(run: _Run, pack_timeout: float) -> None:
    """1, 2, 4 trials in separate processes on this GPU, and the gain of 4 over 1."""
    pack_steps = (run.periods + 1) * run.period
    packing = run.out["packing"] = {}
    for k in (1, 2, 4):
        p = bench_packed(k, arch=run.arch, width=run.width, batch_size=run.batch_size, steps=pack_steps,
                         device=run.device, timeout=pack_timeout)
        packing[str(k)] = p
        run.save()
        if "error" in p:
            run.say(f"packed x{k}: failed: {p['error']}")
        else:
            run.say(f"packed x{k}: aggregate {p['aggregate_images_per_s']:,.0f} img/s, per trial "
                    f"{', '.join(f'{v:,.0f}' for v in p['per_trial_images_per_s'])} img/s; GPU memory per trial "
                    f"{p['device_used_mib_per_trial']:,.0f} MiB in use (context included), peak reserved by "
                    f"PyTorch {max(p['max_reserved_mib']):,.0f} MiB")
    one, four = packing["1"], packing["4"]
    gain = (four["aggregate_images_per_s"] / one["aggregate_images_per_s"]
            if "error" not in one and "error" not in four else math.nan)
    packing["gain_4_over_1"] = gain
    run.say(f"packing gain: 4 trials / 1 trial = {gain:.2f}x "
            f"{_fmt_target(gain, TARGETS['packed_gain'], at_most=False)}")


def estimate_section(run: _Run) -> None:
    """Per-architecture rates at the seed's batch size, then the seed experiment's GPU-hours."""
    seed_batch = DataConfig().batch_size  # the seed space leaves batch_size at its default
    run.out["archs"] = {}
    for name in run.archs:
        s = bench_trial_steps(name, 1.0, seed_batch, run.dev, run.x, run.y, periods=run.periods)
        ev = eval_seconds_per_epoch(s.pop("rig"), run.x, run.y, seed_batch)
        run.out["archs"][name] = {"images_per_s": s["images_per_s"], "ratio_to_plain": s["ratio_to_plain"],
                                  "eval_s_per_epoch": ev, "batch_size": seed_batch}
        run.say(f"{name} w1 batch {seed_batch}: " + ", ".join(f"{k} {v:,.0f}" for k, v in s["images_per_s"].items())
                + f" img/s; per-epoch evaluation {ev:.2f} s")
    gain = run.out["packing"]["gain_4_over_1"]
    est = seed_gpu_hours(run.out["archs"], packing_gain=gain if gain == gain and gain > 1 else 1.0)
    run.out["seed_estimate"] = est
    run.save()
    run.say(f"seed experiment (--space seed): {est['gpu_hours']:.2f} GPU-hours packed, "
            f"{est['gpu_hours_unpacked']:.2f} one trial per GPU "
            f"{_fmt_target(est['gpu_hours'], TARGETS['seed_gpu_hours'], at_most=True)}; "
            f"assumed: {est['assumptions']}")


def compile_section(run: _Run, compile: bool, compile_timeout: float) -> None:
    """Eager vs torch.compile'd steps (skipped on a quick run or with --no-compile)."""
    if compile and not run.quick:
        c = bench_compile(run.arch, run.width, run.batch_size, run.device, compile_timeout)
        if "error" in c:
            run.say(f"torch.compile: could not be measured: {c['error']}")
        else:
            run.say(f"torch.compile: eager {c['eager_images_per_s']:,.0f} img/s, compiled "
                    f"{c['compiled_images_per_s']:,.0f} img/s ({c['speedup']:.3f}x; compile {c['compile_s']:.0f} s): "
                    f"{c['winner']} wins")
    else:
        c = {"skipped": "quick run" if run.quick else "--no-compile"}
    run.out["compile"] = c


def cuda_figures(*, arch: str = "mobilenet_v2", width: float = 1.0, batch_size: int = 256, quick: bool = False,
                 compile: bool = True, compile_timeout: float = 240.0, pack_timeout: float = 120.0, say=print,
                 save=lambda figures: None, device: str = "cuda") -> dict:
    """Every CUDA figure (module docstring); ``say`` receives the human-readable lines, ``save`` the figures so
    far after each section (``complete`` is True only at the end), so a run cut short still leaves what it
    measured. ``quick``: fewer steps, one architecture for the estimate, two batch sizes, no compile (a smoke
    run). ``device``: another device only for a dry run of this code (figures meaningless)."""
    run = _Run(arch=arch, width=width, batch_size=batch_size, quick=quick, device=device, say=say, save=save)
    info = device_info(run.dev)
    say(f"GPU: {info['name']} (compute capability {info['capability']}, {info['memory_gib']:.0f} GiB), torch "
        f"{info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, cuSPARSELt {info['cusparselt']}")
    run.out.update(device=info, targets=TARGETS, quick=quick,
                   config={"arch": arch, "width": width, "batch_size": batch_size, "precision": "bf16 autocast",
                           "memory_format": "channels_last", "data": "synthetic CIFAR-shaped uint8, resident"})
    run.x, run.y = synthetic_cifar(RESIDENT, run.dev)
    train_section(run)
    latency_section(run)
    packing_section(run, pack_timeout)
    estimate_section(run)
    compile_section(run, compile, compile_timeout)
    run.out["complete"] = True
    run.save()
    return run.out
