"""``python -m bench``: measured speed figures of a trial's loop next to their targets.

``--device cpu`` (default): batched augmentation vs DataLoader+PIL, ATen ops and wall time per step, pruning
state memory, the per-epoch evaluation share (issue 2 "Speed"; bench.cpu).

``--device cuda`` (issue 9; bench.cuda): training images/s of the trial's own loop beside a bare PyTorch loop,
cuDNN autotuning and torch.compile on vs off, ADMM/masked/per-step magnitude steps vs a plain step, 1, 2 and 4
trials packed on one GPU, the seed experiment's GPU-hours, 2:4 semi-structured inference latency. Targets are
printed beside the figures, never asserted. ``--json`` prints every figure as one JSON document on stdout (the
human lines then go to stderr) or writes it to a file after every section.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .rig import RESIDENT


def _parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog)
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
    # internal: the worker processes of the packing and compile measurements (bench.workers)
    ap.add_argument("--worker", choices=("pack", "compile"), help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sync-dir", help=argparse.SUPPRESS)
    ap.add_argument("--resident", type=int, default=RESIDENT, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap


def _run_cuda(a) -> int:
    import torch

    from .cuda import cuda_figures

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


def main(argv=None, prog: str = "python -m bench") -> int:
    a = _parser(prog).parse_args(argv)
    cuda = a.device.startswith("cuda")
    a.width = a.width if a.width is not None else (1.0 if cuda else 0.5)
    a.batch_size = a.batch_size if a.batch_size is not None else (256 if cuda else 64)
    if a.worker:
        from . import workers

        workers.die_with_parent()
        return workers.pack_worker(a) if a.worker == "pack" else workers.compile_worker(a)
    if cuda:
        return _run_cuda(a)
    from .cpu import print_cpu_figures

    print_cpu_figures(a.arch, a.width, a.batch_size, a.steps, a.images, a.device)
    return 0
