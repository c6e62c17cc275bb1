"""The CPU-verifiable parts of ``python -m bench --device cuda`` (issue 9): the guard where CUDA is
absent, the seed estimate's arithmetic, the packed-trials barrier and aggregation, the step variants through
the trial's own loop. The GPU figures themselves: tests/gpu/test_gpu.py."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest
import torch

from bench import measure, rig, workers

torch.set_num_threads(1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_cuda_bench_without_cuda_exits_2_with_a_reason():
    r = subprocess.run([sys.executable, "-m", "bench", "--device", "cuda", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert "CUDA is not available" in r.stderr and "--device cpu" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_old_command_name_says_where_it_moved_and_forwards():
    r = subprocess.run([sys.executable, "-m", "trainables.bench", "--device", "cuda", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert "moved to python -m bench" in r.stderr and "CUDA is not available" in r.stderr


def test_sweep_bench_command_refuses_bad_counts_before_any_work():
    r = subprocess.run([sys.executable, "-m", "bench.sweep", "--trials", "0"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "--trials" in r.stderr and "python -m bench.sweep" in r.stderr


def test_seed_estimate_arithmetic():
    rates = {"plain": 1000.0, "admm": 800.0, "masked": 900.0, "magnitude_per_step": 500.0}
    per_arch = {"a": {"images_per_s": rates, "eval_s_per_epoch": 2.0}}
    est = measure.seed_gpu_hours(per_arch, seeds=1, dense_epochs=1, sparsify_epochs=2, finetune_epochs=3,
                               images_per_epoch=100, packing_gain=2.0)
    # dense 1 + control 5 plain; admm 2; magnitude 2; masked 3 + 3; 16 epochs of evaluation at 2 s
    train = 6 * 100 / 1000 + 2 * 100 / 800 + 2 * 100 / 500 + 6 * 100 / 900
    assert est["seconds_per_arch_unpacked"]["a"] == pytest.approx(train + 16 * 2.0)
    assert est["gpu_hours_unpacked"] == pytest.approx((train + 32) / 3600)
    assert est["gpu_hours"] == pytest.approx(est["gpu_hours_unpacked"] / 2)
    assert "shared by both methods" in est["assumptions"] and "2.00x one trial" in est["assumptions"]
    five = measure.seed_gpu_hours(dict(per_arch, b=per_arch["a"]), seeds=5, dense_epochs=1, sparsify_epochs=2,
                                finetune_epochs=3, images_per_epoch=100)
    assert five["gpu_hours"] == pytest.approx(10 * est["gpu_hours_unpacked"])


def test_aggregate_counts_the_span_from_first_start_to_last_end():
    res = [{"t0": 10.0, "t1": 12.0, "images": 200, "max_allocated_mib": 1.0, "max_reserved_mib": 2.0},
           {"t0": 10.5, "t1": 14.0, "images": 200, "max_allocated_mib": 1.0, "max_reserved_mib": 3.0}]
    agg = workers.aggregate_packed(res)
    assert agg["aggregate_images_per_s"] == pytest.approx(400 / 4.0)
    assert agg["per_trial_images_per_s"] == pytest.approx([100.0, 200 / 3.5])
    assert agg["max_reserved_mib"] == [2.0, 3.0]


@pytest.mark.slow  # three worker processes
def test_packed_workers_meet_at_the_barrier_on_cpu():
    out = workers.bench_packed(2, arch="mobilenet_v3_small", width=0.1, batch_size=8, steps=2, device="cpu",
                             resident=16, timeout=120)
    assert "error" not in out, out.get("error")
    assert out["trials"] == 2 and out["aggregate_images_per_s"] > 0
    assert len(out["per_trial_images_per_s"]) == 2 and all(v > 0 for v in out["per_trial_images_per_s"])


@pytest.mark.slow
def test_packed_worker_failure_is_a_row_not_a_hang():
    out = workers.bench_packed(1, arch="no_such_arch", width=0.1, batch_size=8, steps=2, device="cpu",
                             resident=16, timeout=60)
    assert "error" in out and "no_such_arch" in out["error"]


def test_step_variants_through_the_trial_loop_on_cpu():
    dev = torch.device("cpu")
    x, y = rig.synthetic_cifar(64, dev)
    t0 = time.perf_counter()
    r = measure.bench_trial_steps("mobilenet_v3_small", 0.1, 8, dev, x, y, periods=1, period=2)
    elapsed = time.perf_counter() - t0
    assert set(r["images_per_s"]) == {"plain", "admm", "masked", "magnitude_per_step"}
    assert r["timed_steps"] == 2 and r["ratio_to_plain"]["plain"] == 1.0
    # the timed steps' images at the reported rates took no longer than the whole call did (a rate off by a
    # unit, or one counting the warm-up images over the timed steps only, breaks it), and every rate is finite
    timed = [r["timed_steps"] * 8 / v for v in r["images_per_s"].values()]
    assert all(0 < t < math.inf for t in timed) and sum(timed) <= elapsed
    ex, ey = rig.synthetic_cifar(5_000 + 16, dev)
    t0 = time.perf_counter()
    seconds = measure.eval_seconds_per_epoch(r["rig"], ex, ey, 8, recal_batches=2)
    assert 0 < seconds <= time.perf_counter() - t0
    assert rig.steps_per_admm_update(256) == 44  # 176 steps per 45,000-image epoch, a quarter of it
