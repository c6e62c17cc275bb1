"""The CUDA path run for real (issue 9): trials per method and sparsity set, steps that never wait on the host,
the Loader serving the CPU's batches, exact resume, BN recalibration, a 2-trial sweep at a quarter GPU per
trial, 2:4 sparse inference, and the bench's figures. Skipped where CUDA is absent (conftest.py).

Tiny widths and synthetic data: the whole folder runs in a few minutes on one H100/H200 with no network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from trainables.semistructured import latency_rows, prune_2to4_
from vocabulary.config import TrialConfig
from trainables.data import Loader, load_splits
from trainables.methods import Dense
from trainables.models import build_model
from trainables.dense_store import FileDenseStore
from trainables.evaluate import bn_buffers, evaluate, evaluate_recalibrated, recalibrate_bn
from trainables.trial import Trial, run_trial, train_epoch

CUDA = {"dataset": "synthetic", "synthetic_train": 512, "synthetic_test": 128, "width": 0.25, "dense_epochs": 1,
        "sparsify_epochs": 2, "finetune_epochs": 1, "batch_size": 64, "bn_recal_batches": 2,
        "arch": "mobilenet_v3_small", "device": "cuda"}
# every method with every sparsity set (magnitude: a schedule each; gradual has no meaning for n:m)
CASES = [("admm", "uniform", "per_step"), ("admm", "global", "per_step"), ("admm", "nm", "per_step"),
         ("magnitude", "uniform", "per_step"), ("magnitude", "global", "gradual"), ("magnitude", "nm", "one_shot")]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def splits():
    return load_splits(TrialConfig.from_dict(CUDA).data)


@pytest.fixture(scope="module")
def dense_store(tmp_path_factory):
    return FileDenseStore(str(tmp_path_factory.mktemp("dense")))  # the dense model trained once for all cases


def _cfg(method, sset, schedule, **kw):
    return dict(CUDA, method=method, sparsity_set=sset, schedule=schedule, sparsity=0.5, **kw)


@pytest.mark.parametrize("method, sset, schedule", CASES)
def test_one_trial_per_method_and_sparsity_set(splits, dense_store, method, sset, schedule):
    res = run_trial(_cfg(method, sset, schedule), data=splits, dense_store=dense_store)
    s = res.summary
    assert s["status"] == "ok", s["error"]
    assert s["device"] == "cuda" and json.loads(s["provenance_json"])["device"] == torch.cuda.get_device_name()
    assert abs(s["achieved_sparsity"] - s["target_sparsity"]) < 1e-3
    layers = [r for r in res.layers if r["prunable"]]
    assert all(r["sparsity"] >= r["target_sparsity"] - 1e-9 for r in layers) or sset == "global"
    assert all(math.isfinite(e["train_loss"]) and e["images_per_s"] > 0 for e in res.epochs)
    assert 0.0 <= s["final_val_acc"] <= 1.0 and 0.0 <= s["post_prune_val_acc"] <= 1.0
    # the 2:4 latency columns: figures exactly where no reason is given, and only for N:M trials
    measured = math.isfinite(s["latency_speedup"])
    assert measured == (s["latency_note"] == ""), s["latency_note"]
    assert measured or sset != "nm" or torch.cuda.get_device_capability() < (8, 0) or "no 2:4 layer" in s["latency_note"]
    if measured:
        assert sset == "nm" and s["latency_dense_ms"] > 0 and s["latency_sparse_ms"] > 0


class _SyncGuard:
    """A loader whose batches after the first are served, and stepped on, with CUDA's sync debug mode set to
    "error": any host synchronisation inside a training step raises. The first batch carries the epoch's one
    upload (Loader.epoch_plan), which is allowed once per epoch."""

    def __init__(self, loader: Loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def batches(self, epoch):
        it = self.loader.batches(epoch)
        yield next(it)
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield from it  # each later step runs between two of these yields
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("method, sset, schedule", CASES)
def test_training_steps_never_wait_on_the_host(splits, method, sset, schedule):
    trial = Trial(TrialConfig.from_dict(_cfg(method, sset, schedule)), splits, None, None, "t")
    trial.start_phase("sparsify")  # the method's phase: ADMM projects every quarter epoch, magnitude per step
    loss, _, steps = train_epoch(trial.model, trial.params, _SyncGuard(trial.loaders.train), trial.optimizer,
                                 trial.method, epoch=0, step0=0, label_smoothing=0.0, device=trial.device)
    assert steps == len(trial.loaders.train) > 2 and math.isfinite(loss)


def test_resumed_steps_never_wait_on_the_host(splits, tmp_path):
    """After a resume on the GPU the steps stay free of host syncs too. Adam (not capturable) keeps its step
    counts on the CPU and reads them with .item() every step: moved to the GPU by the checkpoint load, each
    step would wait on the device once per parameter tensor."""
    cfg = TrialConfig.from_dict(_cfg("admm", "uniform", "per_step"))
    trial = Trial(cfg, splits, None, None, "t")
    trial.start_phase("sparsify")
    steps = len(trial.loaders.train)
    train_epoch(trial.model, trial.params, trial.loaders.train, trial.optimizer, trial.method, epoch=0, step0=0,
                label_smoothing=0.0, device=trial.device)
    trial.phase_epoch = 1
    trial.save(str(tmp_path))
    resumed = Trial(cfg, splits, None, None, "t")
    resumed.load(str(tmp_path))
    counts = [s["step"] for s in resumed.optimizer.state.values()]
    assert counts and all(c.device.type == "cpu" for c in counts), {c.device.type for c in counts}
    train_epoch(resumed.model, resumed.params, _SyncGuard(resumed.loaders.train), resumed.optimizer, resumed.method,
                epoch=1, step0=steps, label_smoothing=0.0, device=resumed.device)


def test_loader_on_cuda_serves_the_cpu_batches(splits):
    kw = dict(batch_size=64, shuffle=True, augment=True, mean=splits.mean, std=splits.std, seed=3)
    cpu = Loader(splits.train_x, splits.train_y, **kw)
    gpu = Loader(splits.train_x, splits.train_y, device="cuda", channels_last=True, **kw)
    pairs = list(zip(cpu.batches(2), gpu.batches(2)))
    assert len(pairs) == len(cpu) == len(gpu)
    for (xc, yc), (xg, yg) in pairs:
        assert xg.is_cuda and xg.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)


class _Interrupted(Exception):
    pass


@pytest.fixture
def deterministic():
    """Deterministic cuDNN/cuBLAS choices for the test (warn, not fail, where an op has none), restored after."""
    old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
           torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old[0], old[1]
    torch.use_deterministic_algorithms(old[2], warn_only=old[3])


def _comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")} for r in rows]


def test_exact_resume_on_cuda(splits, tmp_path, deterministic):
    """Interrupt a trial after its first report (an exception out of report, as a killed worker), resume from
    that checkpoint on the GPU: the following epochs equal an uninterrupted run's within float tolerance."""
    cfg = dict(CUDA, method="admm", sparsity=0.5)
    full = run_trial(cfg, data=splits)
    kept = str(tmp_path / "ckpt")

    def report(metrics, ckpt):
        shutil.copytree(ckpt, kept)
        raise _Interrupted

    with pytest.raises(_Interrupted):
        run_trial(cfg, data=splits, report=report)
    resumed = run_trial(cfg, data=splits, resume_from=kept)
    assert resumed.summary["status"] == "ok" and resumed.summary["device"] == "cuda"
    got, want = _comparable(resumed.epochs), _comparable(full.epochs)
    assert [(r["phase"], r["phase_epoch"]) for r in got] == [(r["phase"], r["phase_epoch"]) for r in want]
    for g, w in zip(got, want):
        for k, v in w.items():
            if isinstance(v, float) and math.isnan(v):
                assert math.isnan(g[k]), (k, g, w)
            elif isinstance(v, float):
                assert g[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (k, g["phase"], g["phase_epoch"])
            else:
                assert g[k] == v, k
    for k in ("pre_prune_val_acc", "post_prune_val_acc", "final_val_acc", "achieved_sparsity"):
        assert resumed.summary[k] == pytest.approx(full.summary[k], rel=1e-4, abs=1e-6), k


def test_bn_recalibration_on_cuda(splits):
    cfg = TrialConfig.from_dict(CUDA)
    # training batches only: trials whose validation images differ end the measurement with the same stats
    odd = dataclasses.replace(splits, val_x=(255 - splits.val_x).contiguous())
    stats = []
    for data in (splits, odd):
        trial = Trial(cfg, data, None, None, "t")
        trial.measure("dense")
        stats.append([b.clone() for b in bn_buffers(trial.model)])
    assert all(torch.equal(a, b) for a, b in zip(*stats))
    # it repairs ruined statistics under bf16 autocast and channels-last, as a trial runs
    trial.start_phase("dense")
    for epoch in range(3):
        train_epoch(trial.model, trial.params, trial.loaders.train, trial.optimizer, Dense(), epoch=epoch,
                    step0=0, label_smoothing=0.0, device=trial.device)
    val, recal = trial.loaders.val, trial.loaders.recal
    before = [b.clone() for b in bn_buffers(trial.model)]
    evaluate_recalibrated(trial.model, val, recal, 2, trial.device)
    assert all(torch.equal(a, b) for a, b in zip(before, bn_buffers(trial.model)))  # measuring changes nothing
    for b in trial.model.modules():
        if isinstance(b, torch.nn.BatchNorm2d):
            b.running_mean.fill_(5.0)
            b.running_var.fill_(100.0)
    stale = evaluate(trial.model, val, trial.device)
    recalibrate_bn(trial.model, recal, batches=4)
    fixed = evaluate(trial.model, val, trial.device)
    assert fixed[1] < stale[1] and fixed[0] >= stale[0], (stale, fixed)


def test_sweep_two_trials_on_a_quarter_gpu_each(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed in this Python: the sweep cannot run here")
    pytest.importorskip("optuna", reason="Optuna is not installed in this Python: the sweep cannot run here")
    args = ["run", "--space", "admm", "--local", "--trials", "2", "--gpus-per-trial", "0.25", "--cpus-per-trial", "1",
            "--storage", str(tmp_path), "--name", "g", "--dataset", "synthetic", "--width", "0.1",
            "--dense-epochs", "1", "--sparsify-epochs", "2", "--finetune-epochs", "1",
            "--set", "synthetic_train=256", "--set", "synthetic_test=64", "--set", "batch_size=64",
            "--set", "bn_recal_batches=2"]
    r = subprocess.run([sys.executable, "-m", "sweep", *args], capture_output=True, text=True, timeout=280,
                       cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""})
    assert r.returncode == 0, r.stderr[-4000:]
    trials = pd.read_parquet(tmp_path / "g" / "results" / "trials")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}, trials[["status", "error"]]
    assert set(trials["device"]) == {"cuda"}
    assert {json.loads(p)["device"] for p in trials["provenance_json"]} == {torch.cuda.get_device_name()}


def test_2to4_sparse_inference_matches_dense():
    model = prune_2to4_(build_model("mobilenet_v2")).eval()
    row = latency_rows(model, "mobilenet_v2", [8], warmup=1, iters=3)[0]
    if torch.cuda.get_device_capability() < (8, 0):
        assert row.status == "unsupported" and "compute capability" in row.reason
        return
    assert row.status == "ok", row.reason
    assert row.sparse_layers == 30 and 0 < row.sparse_mac_share < 1
    assert row.max_rel_err < 0.05 and row.dense_ms > 0 and row.sparse_ms > 0
    fp32 = latency_rows(model, "mobilenet_v2", [8], dtype=torch.float32)[0]
    assert fp32.status == "unsupported" and "dtype float32 unsupported" in fp32.reason


def _bench_figures() -> dict:
    path = os.environ.get("PRUNESWEEP_BENCH_JSON")
    if path:  # run_gpu_check.sh ran the full bench first: read its figures rather than measure twice
        assert os.path.exists(path), f"{path} missing: the bench did not finish (see bench.log beside it)"
        return json.load(open(path))
    r = subprocess.run([sys.executable, "-m", "bench", "--device", "cuda", "--quick", "--json"],
                       capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout)


def test_bench_figures_present_and_positive():
    f = _bench_figures()
    assert f["complete"], f"the bench stopped early; it measured only: {sorted(f)}"
    assert f["device"]["name"] == torch.cuda.get_device_name()
    t = f["train"]
    for k in ("trial_loop_images_per_s", "bare_loop_images_per_s", "loader_images_per_s",
              "cudnn_benchmark_images_per_s"):
        assert t[k] > 0, k
    assert set(f["steps"]["images_per_s"]) == {"plain", "admm", "masked", "magnitude_per_step"}
    assert all(v > 0 for v in f["steps"]["images_per_s"].values())
    c = f["compile"]  # measured, failed with its reason, or skipped (quick run): never silently absent
    assert c.get("compiled_images_per_s", 0) > 0 or c.get("error") or c.get("skipped"), c
    for k in ("1", "2", "4"):
        p = f["packing"][k]
        assert "error" not in p, p.get("error")
        assert p["aggregate_images_per_s"] > 0 and p["device_used_mib"] > 0 and len(p["per_trial_images_per_s"]) == int(k)
    assert f["packing"]["gain_4_over_1"] > 0
    assert f["archs"] and all(a["eval_s_per_epoch"] > 0 for a in f["archs"].values())
    est = f["seed_estimate"]
    assert est["gpu_hours"] > 0 and "seeds" in est["assumptions"]
    rows = f["latency"]
    assert {r["arch"] for r in rows} == set(f["archs"])
    if torch.cuda.get_device_capability() >= (8, 0):
        assert all(r["status"] == "ok" and r["speedup"] > 0 for r in rows), [r["reason"] for r in rows]
