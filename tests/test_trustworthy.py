"""Regression tests for the defects that silently changed what a sweep concludes (issue: trustworthy results).

Each test names its defect and fails on the code that had it.
"""

from __future__ import annotations

import io
import math
import threading

import pytest
import torch
from torch import nn

from vocabulary import config as C
from vocabulary import registry
from vocabulary.config import ConfigError, TrialConfig
from trainables.data import load_splits
from trainables.methods import (ADMM, admm_schedule, check_admm_schedule, effective_admm_updates,
                                rescale_dual)
from trainables.sparsity import make_sparsity_set
from trainables.checkpoint import load_checkpoint
from trainables.dense_store import FileDenseStore, dense_payload
from trainables.evaluate import bn_buffers, evaluate_recalibrated, recalibrate_bn
from trainables.trial import Trial, run_trial

from helpers import TINY
from method_contract import other_value

torch.set_num_threads(1)


@pytest.fixture
def splits(tiny_splits):
    return tiny_splits


# ------------------------------------------------------------------ 1: global sparsity trials crashed at the end

def test_global_trial_at_a_fractional_kept_count_finishes(splits):
    """mobilenet_v3_small width 0.25, global s=0.9: frac(s*N) >= 0.5, which the old round() check refused."""
    res = run_trial(dict(TINY, dense_epochs=0, sparsify_epochs=1, finetune_epochs=0, method="magnitude",
                         schedule="one_shot", sparsity_set="global", sparsity=0.9), data=splits)
    s = res.summary
    assert s["status"] == "ok"
    assert s["prunable_nonzero"] == s["prunable_params"] - math.floor(0.9 * s["prunable_params"])
    assert s["achieved_sparsity"] == pytest.approx(s["target_sparsity"])


# ------------------------------------------------------------------ 2: resume crashed on CUDA

def test_checkpoint_tensors_on_another_device_leave_rng_on_the_cpu(tmp_path):
    """The old load used map_location=device: the RNG ByteTensors moved too and set_rng_state raised. The
    'meta' device stands in for CUDA here (any non-CPU device shows the same failure)."""
    path = str(tmp_path / "checkpoint.pt")
    torch.save({"model": {"w": torch.ones(3)}, "method": {"Z": [torch.zeros(2)], "rho": 0.1},
                "rng": {"torch": torch.get_rng_state(), "cuda": [torch.get_rng_state()]}}, path)
    bad = torch.load(path, map_location="meta", weights_only=False)
    with pytest.raises((TypeError, RuntimeError)):
        torch.set_rng_state(bad["rng"]["torch"])  # the failure mode this guards against is real
    state = load_checkpoint(path, "meta")
    assert state["model"]["w"].device.type == "meta" and state["method"]["Z"][0].device.type == "meta"
    assert state["method"]["rho"] == 0.1
    rng = state["rng"]["torch"]
    assert rng.device.type == "cpu" and rng.dtype == torch.uint8
    torch.set_rng_state(rng)


def test_resumed_optimizer_state_is_left_to_load_state_dict(tmp_path):
    """Adam's step counts must stay host tensors after a resume on a GPU (load_state_dict places the moments)."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    path = str(tmp_path / "checkpoint.pt")
    torch.save({"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}}, path)
    state = load_checkpoint(path, "meta")
    assert state["optimizer"]["state"][0]["step"].device.type == "cpu"


# ------------------------------------------------------------------ 4: ADMM with U never updated

def test_admm_schedule_counts_only_updates_that_act_on_w():
    assert admm_schedule(1, "epoch", 10, 20) == [10, 20]
    assert effective_admm_updates(1, "epoch", 10, 20) == 1  # the update after the last step changes nothing
    assert effective_admm_updates(3, "epoch", 10, 20) == 0
    assert admm_schedule(0.25, "epoch", 8, 16) == [2, 4, 6, 8, 10, 12, 14, 16]
    assert admm_schedule(0.25, "epoch", 2, 4) == [1, 2, 3, 4]  # sub-step intervals round to whole steps
    assert admm_schedule(5, "step", 10, 12) == [5, 10]


@pytest.mark.parametrize("interval, unit, epochs", [(3, "epoch", 2), (2, "epoch", 2), (1, "epoch", 2),
                                                    (100, "step", 1)])
def test_admm_configs_with_fewer_than_two_updates_are_refused(interval, unit, epochs):
    p = TrialConfig.from_dict({"method": "admm", "admm_interval": interval, "admm_interval_unit": unit}).prune
    with pytest.raises(ConfigError) as err:
        check_admm_schedule(p, epochs, 50)
    assert err.value.field == "admm_interval" and "at least 2" in str(err.value)


def test_run_trial_refuses_a_degenerate_admm_config_before_training(splits):
    with pytest.raises(ConfigError) as err:
        run_trial(dict(TINY, method="admm", admm_interval=2, admm_interval_unit="epoch", dense_epochs=50),
                  data=splits)
    assert err.value.field == "admm_interval"


def test_default_admm_trial_updates_u_and_reports_residuals(splits, tiny_dense_store):
    res = run_trial(dict(TINY, method="admm"), data=splits, dense_store=tiny_dense_store)
    sparsify = [r for r in res.epochs if r["phase"] == "sparsify"]
    assert len(sparsify) == TINY["sparsify_epochs"]
    assert all(math.isfinite(r["primal_residual"]) for r in sparsify)  # an update in every epoch


def test_sweep_space_draws_only_valid_admm_intervals(tmp_path):
    """The admm space searched admm_interval 1..3 epochs while the sweep ran 2 sparsify epochs."""
    from sweep import options as cli, spaces

    args = cli.build_parser().parse_args(["run", "--space", "admm", "--dataset", "synthetic"])
    space, archs, base = cli.validate_run(args)
    splits = load_splits(TrialConfig.from_dict({**base, "arch": archs[0]}).data)
    cli.check_data(space, archs, base, set(), splits)  # raises on any invalid combination
    n_train = len(splits.train_x)
    steps = -(-n_train // 128)
    for interval in spaces.BUILTIN["admm"].method_params["admm"]["admm_interval"].choices:
        assert effective_admm_updates(interval, "epoch", steps, 2 * steps) >= 2
    bad = cli.build_parser().parse_args(["run", "--space", "compare", "--dataset", "synthetic",
                                         "--set", "admm_interval=1"])
    space, archs, base = cli.validate_run(bad)
    with pytest.raises(cli.UsageError) as err:
        cli.check_data(space, archs, base, {"admm_interval"}, splits)
    assert err.value.option == "--set" and "admm_interval" in str(err.value)


# ------------------------------------------------------------------ 5: U rescaled when rho changes

def _y_form_admm(w0, x, y, sset, rho, growth, rho_max, steps, every, lr):
    """Unscaled ADMM (Boyd et al. 2011, 3.1): loss f(W) + <Y, W - Z> + rho/2 ||W - Z||^2, written without
    the scaled dual U. Shares no code with trainables.methods."""
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=lr)
    z = sset.project([w0.clone()])[0]
    ydual = torch.zeros_like(w0)
    for step in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.mse_loss(x @ w.T, y).backward()
        with torch.no_grad():
            w.grad += ydual + rho * (w - z)
        opt.step()
        if step % every == 0:
            with torch.no_grad():
                z = sset.project([w + ydual / rho])[0]
                ydual = ydual + rho * (w - z)
                rho = min(rho * growth, rho_max)
    return w.detach()


def test_admm_with_growing_rho_matches_the_unscaled_y_form():
    g = torch.Generator().manual_seed(0)
    x, w_true = torch.randn(128, 10, generator=g), torch.randn(4, 10, generator=g)
    y = x @ w_true.T
    w0 = torch.randn(4, 10, generator=g)
    sset = make_sparsity_set("uniform", 0.5)
    reference = _y_form_admm(w0, x, y, sset, 0.1, 1.5, 10.0, steps=120, every=10, lr=0.05)

    w = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w], lr=0.05)
    method = ADMM(sset, rho=0.1, rho_growth=1.5, rho_max=10.0, interval=10, unit="step")
    method.on_phase_start([w], 120)
    for step in range(1, 121):
        opt.zero_grad()
        nn.functional.mse_loss(x @ w.T, y).backward()
        method.before_step([w])
        opt.step()
        method.after_step([w], step)
    assert method.rho > 0.1 * 1.5 ** 5  # rho really grew
    assert torch.allclose(w.detach(), reference, atol=1e-5), (w.detach() - reference).abs().max()


def test_rescale_dual_keeps_rho_times_u():
    u = [torch.randn(3, 3)]
    scaled = rescale_dual(u, 0.5, 2.0)
    assert torch.allclose(scaled[0] * 2.0, u[0] * 0.5)


# ------------------------------------------------------------------ 6: per-epoch val_acc with stale BN

def test_every_per_epoch_accuracy_is_measured_after_bn_recalibration(splits, tiny_dense_store):
    res = run_trial(dict(TINY, method="magnitude", schedule="one_shot"), data=splits, dense_store=tiny_dense_store)
    s = res.summary
    last = {r["phase"]: r for r in res.epochs}  # the last row of each phase
    # the per-epoch number is the recalibrated one: the same figure as the stage metric measured right after
    assert last["dense"]["val_acc"] == s["dense_val_acc"]
    assert last["finetune"]["val_acc"] == s["final_val_acc"]
    assert last["sparsify"]["val_acc"] == s["pre_prune_val_acc"]


def test_recalibrated_evaluation_leaves_the_model_untouched(splits):
    cfg = TrialConfig.from_dict(TINY)
    trial = Trial(cfg, splits, None, None, "t")
    trial.model.train()
    x, _ = next(trial.loaders.train.batches(0))
    with torch.no_grad():
        trial.model(x)  # running statistics that recalibration would replace
    before = [b.clone() for b in bn_buffers(trial.model)]
    evaluate_recalibrated(trial.model, trial.loaders.val, trial.loaders.recal, 2, trial.device)
    assert all(torch.equal(a, b) for a, b in zip(before, bn_buffers(trial.model)))
    assert trial.model.training


def test_recalibrated_evaluation_draws_no_random_numbers(splits):
    """Measuring must not change what training does next: the classifier's dropout draws from the global
    RNG, so a recalibration that forwards the whole net in train mode shifted every later dropout mask (a
    run's weights then depended on how often it was evaluated)."""
    cfg = TrialConfig.from_dict(TINY)
    trial = Trial(cfg, splits, None, None, "t")
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in trial.model.modules())
    trial.model.train()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    evaluate_recalibrated(trial.model, trial.loaders.val, trial.loaders.recal, 2, trial.device)
    recalibrate_bn(trial.model, trial.loaders.recal, 2)
    assert torch.equal(torch.get_rng_state(), state)
    assert trial.model.training and all(m.training for m in trial.model.modules())


# ------------------------------------------------------------------ 10: dense key and RNG

def test_dense_key_covers_the_fields_the_dense_phase_reads():
    base = TrialConfig.from_dict({"seed": 1})
    key = base.dense_key("cpu")
    assert base.dense_key("cuda") != key  # device type and its precision
    changed = {"momentum": 0.5, "bn_recal_batches": 7, "eval_test": False, "label_smoothing": 0.1,
               "dense_lr": 0.1, "batch_size": 64, "seed": 2, "width": 0.5}
    for name, value in changed.items():
        assert TrialConfig.from_dict({"seed": 1, name: value}).dense_key("cpu") != key, name
    for name, value in {"lr": 0.5, "rho": 0.5, "sparsity": 0.9, "method": "magnitude", "optimizer": "sgd",
                        "sparsify_epochs": 9, "weight_decay": 0.1, "max_threads": 1}.items():
        assert TrialConfig.from_dict({"seed": 1, name: value}).dense_key("cpu") == key, name


# A valid other value for every field; test_every_field_is_classified makes a new field join this table. The
# fields a method owns (vocabulary/registry.py) join by themselves: method_contract.other_value finds a value
# the config accepts (the default where no simple one is valid alone), so registering a method edits no test.
OTHER = {"dataset": "digits", "data_dir": None, "cache_dir": "/x", "val_fraction": 0.2, "split_seed": 1,
         "batch_size": 32, "augment": False, "synthetic_train": 128, "synthetic_test": 32, "limit_train": 100,
         "arch": "mobilenet_v2", "width": 0.2, "num_classes": 12, "dense_epochs": 2, "dense_optimizer": "adam",
         "dense_lr": 0.01, "dense_weight_decay": 0.0, "dense_lr_schedule": "constant", "method": "magnitude",
         "sparsity": 0.9, "sparsity_set": "global", "nm_n": 1, "nm_m": 4, "prune_first_conv": True,
         "sparsify_epochs": 3, "finetune_epochs": 3,
         "optimizer": "sgd", "lr": 0.01, "momentum": 0.5, "weight_decay": 1e-3, "lr_schedule": "cosine",
         "finetune_lr_scale": 0.5, "label_smoothing": 0.1, "bn_recal_batches": 1, "seed": 3, "device": "cpu",
         "eval_test": False, "max_threads": 1, "dense_control": False,
         "keep_model": False}
for _name in (n for spec in registry.METHODS.values() for n in spec.fields):
    _other = other_value(_name)
    OTHER[_name] = _other if _other is not None else getattr(TrialConfig().prune, _name)


def test_every_field_is_classified():
    assert set(OTHER) == set(C.field_owners())


def _dense_state(cfg: dict, splits) -> dict:
    trial = Trial(TrialConfig.from_dict(cfg), splits, None, None, "t")
    payload = dense_payload(trial)
    return torch.load(io.BytesIO(payload), weights_only=False)


@pytest.mark.slow
def test_fields_outside_the_dense_key_do_not_change_the_dense_payload(splits):
    """Vary every field that is not in the dense key: the dense weights, BN buffers and accuracies stay
    bit-identical (if one changed them, trials sharing the cached model would silently differ)."""
    small = dict(TINY, width=0.1, synthetic_train=128, synthetic_test=32, batch_size=64)
    data = load_splits(TrialConfig.from_dict(small).data)
    ref = _dense_state(small, data)
    outside = [f for f in C.field_owners() if f not in C.dense_fields() and f not in ("cache_dir", "device")]
    assert "lr" in outside and "momentum" not in outside
    for name in outside:
        got = _dense_state(dict(small, **{name: OTHER[name]}), data)
        assert got["accs"] == ref["accs"], name
        assert all(torch.equal(got["model"][k], v) for k, v in ref["model"].items()), name


def test_a_trial_does_not_depend_on_who_built_the_dense_model(splits, tmp_path):
    """The builder's RNG used to be advanced by dense training, a loader's not: results depended on the race."""
    store = FileDenseStore(str(tmp_path))
    cfg = dict(TINY, method="magnitude", schedule="one_shot")
    built = run_trial(cfg, data=splits, dense_store=store)
    loaded = run_trial(cfg, data=splits, dense_store=store)
    def strip(rows):  # NaN != NaN: map it to None; timings differ by nature
        return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()
                 if k not in ("seconds", "images_per_s")} for r in rows]

    assert strip(built.epochs) == strip(loaded.epochs)
    assert built.summary["final_val_acc"] == loaded.summary["final_val_acc"]


# ------------------------------------------------------------------ 11: the dense control

def test_dense_control_gets_the_pruned_models_budget_and_is_shared(splits, tmp_path):
    store = FileDenseStore(str(tmp_path))
    built = []
    orig = store.get_or_build
    store.get_or_build = lambda key, build, wait=True: orig(key, lambda: built.append(key) or build(), wait)
    cfg = dict(TINY, dense_control=True)
    a = run_trial(dict(cfg, method="admm"), data=splits, dense_store=store)
    m = run_trial(dict(cfg, method="magnitude"), data=splits, dense_store=store)
    assert built == [a.summary["dense_key"], a.summary["control_key"]]  # each built once
    assert a.summary["control_key"] == m.summary["control_key"]
    assert a.summary["control_key"].endswith(f"-e{TINY['sparsify_epochs'] + TINY['finetune_epochs']}")
    for r in (a, m):
        assert 0.0 <= r.summary["control_val_acc"] <= 1.0 and 0.0 <= r.summary["control_test_acc"] <= 1.0
    assert a.summary["control_val_acc"] == m.summary["control_val_acc"]
    # the control trains: it is not the dense start point
    payload = torch.load(io.BytesIO(store.get_or_build(a.summary["control_key"], lambda: b"")), weights_only=False)
    assert [r["phase"] for r in payload["epochs"]] == ["control"] * 3


def test_a_busy_control_build_is_not_waited_for(tmp_path):
    store = FileDenseStore(str(tmp_path))
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(10)
        return b"control"

    t = threading.Thread(target=lambda: store.get_or_build("k", slow))
    t.start()
    started.wait(10)
    assert store.get_or_build("k", lambda: b"second", wait=False) is None
    release.set()
    t.join()
    assert store.get_or_build("k", lambda: b"third", wait=False) == b"control"


# ------------------------------------------------------------------ 12: --data-dir never ignored

def test_trainables_data_dir_alone_reads_cifar10(tmp_path, trainables_main):
    from tests.cifar_fixture import write_fake_cifar10

    write_fake_cifar10(str(tmp_path / "c"), n_train_per_batch=40, n_test=20)
    code, stdout, stderr = trainables_main(
        "train", "--data-dir", str(tmp_path / "c"), "--width", "0.1", "--arch", "mobilenet_v3_small",
        "--dense-epochs", "0", "--sparsify-epochs", "1", "--finetune-epochs", "0", "--method", "magnitude",
        "--schedule", "one_shot", "--no-dense-control", "--json", "--max-threads", "1")
    assert code == 0, stderr
    import json

    summary = json.loads(stdout)
    assert summary["dataset"] == "cifar10" and summary["data_dir"] == str(tmp_path / "c")


@pytest.mark.parametrize("args, field", [
    (["--data-dir", "/nonexistent/cifar"], "data_dir"),
    (["--data-dir", ".", "--dataset", "digits"], "data_dir"),
])
def test_trainables_bad_data_dir_exits_2(args, field, trainables_main):
    code, _, stderr = trainables_main("train", *args)
    assert code == 2 and f"error: {field}" in stderr, stderr


@pytest.mark.parametrize("args", [["--data-dir", "/nonexistent/cifar"], ["--data-dir", ".", "--dataset", "digits"]])
def test_sweep_bad_data_dir_exits_2(args, tmp_path, sweep_main):
    code, _, stderr = sweep_main("run", "--local", "--storage", str(tmp_path), "--name", "x", *args)
    assert code == 2 and "--data-dir" in stderr, stderr
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ 7: ASHA max_t from the resolved config

def test_asha_max_t_follows_the_resolved_config():
    from sweep import options as cli, spaces

    space = spaces.BUILTIN["seed"]
    args = cli.build_parser().parse_args(["run", "--space", "seed", "--dataset", "synthetic", "--scheduler", "asha",
                                          "--set", "sparsify_epochs=6"])
    space, archs, base = cli.validate_run(args)
    assert cli.asha_max_t(space, archs, base) == 6 + args.finetune_epochs


def test_asha_is_refused_when_the_space_searches_an_epoch_count(tmp_path):
    from sweep import options as cli

    path = tmp_path / "s.toml"
    path.write_text('methods = ["magnitude"]\n[params]\nsparsity = 0.5\n'
                    'finetune_epochs = {type = "int", low = 1, high = 4}\n')
    args = cli.build_parser().parse_args(["run", "--space", str(path), "--dataset", "synthetic",
                                          "--scheduler", "asha"])
    with pytest.raises(cli.UsageError) as err:
        cli.validate_run(args)
    assert err.value.option == "--scheduler" and "finetune_epochs" in str(err.value)


def test_a_gradual_schedule_that_would_prune_once_is_refused(splits):
    """Kin of defect 4: gradual_interval >= the phase length raised the sparsity only at the last step."""
    with pytest.raises(ConfigError) as err:
        run_trial(dict(TINY, method="magnitude", schedule="gradual", gradual_interval=1000), data=splits)
    assert err.value.field == "gradual_interval"


def test_a_given_arch_is_not_ignored_by_the_seed_space():
    from sweep import options

    args = options.build_parser().parse_args(["run", "--space", "seed", "--dataset", "synthetic",
                                              "--arch", "mobilenet_v3_small"])
    assert options.validate_run(args)[1] == ["mobilenet_v3_small"]
    args = options.build_parser().parse_args(["run", "--space", "seed", "--dataset", "synthetic"])
    assert options.validate_run(args)[1] == list(C.ARCHS)
