"""run_trial end to end on tiny real data: resume equality, shared dense store, BN recalibration."""

import dataclasses
import math
import os
import shutil

import pandas as pd
import pytest
import torch

from vocabulary.config import ConfigError, TrialConfig
from trainables.data import Loader
from trainables.models import build_model
from trainables.dense_store import FileDenseStore
from trainables.evaluate import bn_buffers, evaluate, recalibrate_bn
from trainables.trial import Trial, run_trial

from helpers import TINY

torch.set_num_threads(1)


@pytest.fixture
def splits(tiny_splits):
    return tiny_splits


def _strip(rows):
    # NaN != NaN: map NaN to None so equal rows compare equal
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()
             if k not in ("seconds", "images_per_s")} for r in rows]


@pytest.mark.slow
def test_resumed_trial_equals_uninterrupted(splits, tmp_path):
    cfg = dict(TINY, method="admm", sparsity=0.5)
    full = run_trial(cfg, data=splits)
    kept = str(tmp_path / "ckpt")
    calls = []

    def report(metrics, ckpt):
        calls.append(metrics)
        if len(calls) == 1:
            shutil.copytree(ckpt, kept)

    run_trial(cfg, data=splits, report=report)
    # one report per sparsify/fine-tune epoch, the last epoch's row merged into the final (done) report
    assert [c["done"] for c in calls] == [False, False, True]
    assert calls[-1]["epoch"] == len(full.epochs) and calls[-1]["phase"] == "finetune"
    resumed = run_trial(cfg, data=splits, resume_from=kept)
    assert _strip(resumed.epochs) == _strip(full.epochs)
    assert resumed.summary["final_val_acc"] == full.summary["final_val_acc"]
    assert resumed.summary["achieved_sparsity"] == 0.5


def test_resume_with_other_arch_raises(splits, tmp_path):
    kept = str(tmp_path / "ckpt")

    def report(metrics, ckpt):
        if ckpt and not os.path.exists(kept):
            shutil.copytree(ckpt, kept)

    run_trial(dict(TINY, sparsify_epochs=1, finetune_epochs=0), data=splits, report=report)
    with pytest.raises(ConfigError) as err:
        run_trial(dict(TINY, arch="mobilenet_v2"), data=splits, resume_from=kept)
    assert err.value.field == "resume_from"


def test_methods_share_byte_identical_dense_weights(splits, tmp_path):
    store = FileDenseStore(str(tmp_path / "dense"))
    built = []
    orig = store.get_or_build

    def counting(key, build, wait=True):
        return orig(key, lambda: built.append(key) or build(), wait=wait)

    store.get_or_build = counting
    cfg = dict(TINY, sparsify_epochs=1, finetune_epochs=1)
    a = run_trial(dict(cfg, method="admm"), data=splits, dense_store=store)
    m = run_trial(dict(cfg, method="magnitude", schedule="one_shot"), data=splits, dense_store=store)
    # one dense model, built once: payload + lock (the dense control is shared the same way: test_trustworthy's
    # test_dense_control_gets_the_pruned_models_budget_and_is_shared)
    assert built == [a.summary["dense_key"]]
    assert len(os.listdir(tmp_path / "dense")) == 2
    assert a.summary["dense_key"] == m.summary["dense_key"]
    assert a.summary["dense_val_acc"] == m.summary["dense_val_acc"]
    # pre-prune is the end of the sparsify phase (DESIGN.md), so it is each method's own, not the dense one
    for r in (a, m):
        dense = [w for w in r.weights if w["stage"] == "dense"]
        pre = [w for w in r.weights if w["stage"] == "pre_prune"]
        assert len(pre) == len(dense) and [w["count"] for w in pre] != [w["count"] for w in dense]
    zeros = {r.summary["method"]: next(w["count"] for w in r.weights if w["stage"] == "pre_prune"
                                       and w["bin_lo"] == w["bin_hi"] == 0.0) for r in (a, m)}
    total = sum(w["count"] for w in a.weights if w["stage"] == "pre_prune")
    assert zeros["admm"] < 0.01 * total  # ADMM's W is only near the sparse set before the projection
    assert zeros["magnitude"] >= 0.5 * total - 1  # one-shot masks from the first sparsify step on
    assert _strip(a.epochs[:1]) == _strip(m.epochs[:1])
    for r in (a, m):
        assert r.summary["status"] == "ok" and r.summary["achieved_sparsity"] == 0.5
    out = tmp_path / "out"
    paths = a.write(str(out), trial_id="a1")
    assert len(pd.read_parquet(paths["epochs"])) == 3
    assert pd.read_parquet(paths["trials"])["achieved_sparsity"].iloc[0] == 0.5


def test_divergence_is_reported_not_raised(splits):
    # SGD at lr 10 with momentum 0.99 and weight decay 1 (x100 in fine-tuning) blows up within an epoch
    res = run_trial(dict(TINY, dense_epochs=0, sparsify_epochs=1, finetune_epochs=1, lr=10.0, method="magnitude",
                         optimizer="sgd", momentum=0.99, weight_decay=1.0, finetune_lr_scale=100.0), data=splits)
    assert res.summary["status"] == "diverged", res.summary["error"]
    assert "non-finite" in res.summary["error"]
    assert math.isnan(res.summary["final_val_acc"])  # never scored as zero (DESIGN rule 8)


def test_bn_recalibration_uses_training_batches_only(splits):
    """Two trials whose data differ only in the validation images (one set inverted: another distribution)
    end the same measurement with the same BN statistics: recalibration never reads validation data."""
    cfg = TrialConfig.from_dict(TINY)
    odd = dataclasses.replace(splits, val_x=(255 - splits.val_x).contiguous())
    stats = []
    for data in (splits, odd):
        trial = Trial(cfg, data, None, None, "t")
        trial.measure("dense")  # recalibrate, then evaluate on the validation split
        stats.append([b.clone() for b in bn_buffers(trial.model)])
        # the stage metric is the validation accuracy of the model with the recalibrated statistics
        assert trial.accs["dense_val_acc"] == evaluate(trial.model, trial.loaders.val, trial.device)[0]
    assert all(torch.equal(a, b) for a, b in zip(*stats))
    # and the statistics are those of the training batches: recomputed by hand
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", width=0.25)
    train = Loader(splits.train_x, splits.train_y, batch_size=64, shuffle=False, augment=False, mean=splits.mean,
                   std=splits.std)
    recalibrate_bn(model, train, batches=2)
    stats = [b.running_mean.clone() for b in model.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    torch.manual_seed(0)
    ref = build_model("mobilenet_v3_small", width=0.25)
    ref.train()
    bns = [b for b in ref.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    momenta = [b.momentum for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    with torch.no_grad():
        for i, (x, _) in enumerate(train.batches(0)):
            if i == 2:
                break
            ref(x)
    for s, b in zip(stats, bns):
        assert torch.allclose(s, b.running_mean, atol=1e-6)
    assert [b.momentum for b in model.modules() if isinstance(b, torch.nn.BatchNorm2d)] == momenta


def test_bn_recalibration_repairs_stale_statistics(splits):
    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", width=0.25)
    train = Loader(splits.train_x, splits.train_y, batch_size=64, shuffle=True, augment=False, mean=splits.mean,
                   std=splits.std)
    val = Loader(splits.val_x, splits.val_y, batch_size=256, shuffle=False, augment=False, mean=splits.mean,
                 std=splits.std)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(3):
        for x, y in train.batches(epoch):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    good = evaluate(model, val, torch.device("cpu"))
    for b in model.modules():  # ruin the statistics
        if isinstance(b, torch.nn.BatchNorm2d):
            b.running_mean.fill_(5.0)
            b.running_var.fill_(100.0)
    stale = evaluate(model, val, torch.device("cpu"))
    recalibrate_bn(model, train, batches=4)
    fixed = evaluate(model, val, torch.device("cpu"))
    assert stale[0] < good[0]  # ruining the statistics really costs accuracy
    assert fixed[1] < stale[1]  # val loss: repaired
    assert fixed[0] >= stale[0]
    # at least as good as the statistics training left: BN momentum 0.01 leaves them stale after 3 short epochs
    assert fixed[0] >= good[0] and fixed[1] < good[1]


@pytest.mark.parametrize("method, sset, schedule", [
    ("admm", "global", "per_step"), ("magnitude", "global", "gradual"),
    ("admm", "nm", "per_step"), ("magnitude", "nm", "one_shot"), ("magnitude", "uniform", "gradual"),
])
def test_every_sparsity_set_and_schedule_through_run_trial(splits, tiny_dense_store, method, sset, schedule):
    cfg = dict(TINY, method=method, sparsity_set=sset, sparsity=0.5, schedule=schedule,
               sparsify_epochs=2, finetune_epochs=1)
    res = run_trial(cfg, data=splits, dense_store=tiny_dense_store)  # one dense model for all five
    assert res.summary["status"] == "ok" and res.summary["sparsity_set"] == sset
    layers = [r for r in res.layers if r["prunable"]]
    zeros = sum(r["numel"] - r["nonzero"] for r in layers)  # measured from the final weights
    assert zeros / sum(r["numel"] for r in layers) == pytest.approx(res.summary["achieved_sparsity"])
    numel = sum(r["numel"] for r in layers)
    wanted = sum(r["target_sparsity"] * r["numel"] for r in layers) / numel  # < 0.5 for nm: dense layers
    assert res.summary["achieved_sparsity"] >= wanted - 1e-3  # zeros kept through fine-tuning
    targets = {round(r["target_sparsity"], 6) for r in layers}
    measured = {round(r["sparsity"], 2) for r in layers}
    if sset == "global":  # one threshold over all layers: the layers' sparsities differ, the total is 0.5
        assert targets == {0.5} and len(measured) > 3
    else:  # every layer at least as sparse as its own target; 2:4 leaves layers with in % 4 != 0 dense
        assert all(r["sparsity"] >= r["target_sparsity"] - 1e-9 for r in layers)
        assert targets == ({0.0, 0.5} if sset == "nm" else {0.5})
    # the 2:4 latency columns are in every trial's row: empty on a CPU trial, with the reason
    if not torch.cuda.is_available():
        note = res.summary["latency_note"]
        assert math.isnan(res.summary["latency_speedup"])
        assert note.startswith("no CUDA device") if sset == "nm" else f"sparsity_set {sset}" in note
