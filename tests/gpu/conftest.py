"""tests/gpu: the CUDA path run for real (issue 9). Every test here is skipped, with the reason, where
torch.cuda.is_available() is False, so the default CPU suite is unaffected. On a GPU machine run them with
tests/gpu/run_gpu_check.sh (the bench too), or ``python -m pytest tests/gpu``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# cuBLAS reads this when its first handle is made: it lets the exact-resume test ask for deterministic
# algorithms (torch.use_deterministic_algorithms) without an error from cuBLAS matmuls
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

HERE = Path(__file__).parent
SKIP_REASON = ("tests/gpu needs CUDA: torch.cuda.is_available() is False on this machine (no NVIDIA GPU, driver or "
               "CUDA build of torch); run tests/gpu/run_gpu_check.sh on a GPU machine")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)
