"""Contract tests that every sparsity set and every pruning method joins automatically (parametrised over the
registries ``trainables.sparsity.SETS`` and ``trainables.methods.METHODS`` / ``MAGNITUDE_SCHEDULES``).

A new set or method is tested by these the moment it is registered; config's name tuples must match.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from vocabulary import config as C
from trainables.methods import MAGNITUDE_SCHEDULES, METHODS, MaskedFinetune, make_method
from trainables.models import build_model
from trainables.sparsity import SETS, make_sparsity_set, prunable_parameters

torch.set_num_threads(1)

LEVELS = (0.5, 0.7, 0.9)  # the sweep's shared sparsity levels (sweep.spaces.SPARSITY_LEVELS)


def test_registries_match_config_names():
    assert tuple(SETS) == C.SPARSITY_SETS
    assert tuple(METHODS) == C.METHODS
    assert tuple(MAGNITUDE_SCHEDULES) == C.MAGNITUDE_SCHEDULES


def test_sweep_levels_are_the_tested_levels():
    from sweep.spaces import SPARSITY_LEVELS

    assert tuple(SPARSITY_LEVELS.choices) == LEVELS


def _random_tensors(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    # continuous values: no exact zeros and (almost surely) no ties, so the kept count is the nonzero count
    return [torch.randn(s, generator=g) for s in shapes]


SHAPES = [(8, 4, 3, 3), (16, 1, 3, 3), (10, 16), (7, 12, 1, 1), (3, 5)]  # conv, depthwise, linear, odd sizes


@pytest.mark.parametrize("kind", list(SETS))
@pytest.mark.parametrize("level", (0.0, 0.3, *LEVELS, 0.97))
def test_projection_exact_in_count_and_idempotent(kind, level):
    sset = make_sparsity_set(kind, level)
    tensors = _random_tensors(SHAPES)
    masks = sset.masks(tensors)
    assert [m.shape for m in masks] == [t.shape for t in tensors] and all(m.dtype == torch.bool for m in masks)
    assert sum(int(m.sum()) for m in masks) == sset.kept_count(tensors)
    projected = sset.project(tensors)
    assert sum(int(torch.count_nonzero(p)) for p in projected) == sset.kept_count(tensors)
    again = sset.project(projected)
    assert all(torch.equal(a, b) for a, b in zip(again, projected))
    # inputs untouched; kept entries unchanged
    assert all(torch.equal(p[m], t[m]) for p, m, t in zip(projected, masks, tensors))
    total = sum(t.numel() for t in tensors)
    assert sset.sparsity(tensors) == pytest.approx(1 - sset.kept_count(tensors) / total)


@pytest.mark.parametrize("kind", list(SETS))
def test_target_sparsities_agree_with_the_kept_count(kind):
    sset = make_sparsity_set(kind, 0.7)
    tensors = _random_tensors(SHAPES, seed=1)
    targets = sset.target_sparsities(tensors)
    assert len(targets) == len(tensors) and all(0.0 <= t < 1.0 for t in targets)
    if kind != "global":  # global fixes only the overall fraction; the split follows the weights
        kept = sum(round((1 - t) * x.numel()) for t, x in zip(targets, tensors))
        assert kept == sset.kept_count(tensors)


@pytest.mark.parametrize("arch", C.ARCHS)
@pytest.mark.parametrize("width", (0.25, 0.5, 1.0))
def test_every_set_at_every_level_keeps_what_it_reports_on_every_arch(arch, width):
    """Defect 1: the kept count came from round(sum(s * numel)) while GlobalSet keeps N - floor(s * N); the
    trial then refused a correct model after all its training. Now the set reports its own count."""
    torch.manual_seed(0)
    params = [p.detach() for _, p in prunable_parameters(build_model(arch, width=width))]
    for kind in SETS:
        for level in LEVELS:
            sset = make_sparsity_set(kind, level)
            kept = sum(int(m.sum()) for m in sset.masks(params))
            assert kept == sset.kept_count(params), (kind, level)


# ----------------------------------------------------------------------------------------- methods

def _problem(seed=0):
    """A regression whose true weights are sparse on a support unlike the init's largest entries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=g)
    w_true = torch.randn(6, 16, generator=g) * (torch.rand(6, 16, generator=g) < 0.4)
    return x, x @ w_true.T


def _variants():
    """(name, prune config) for every method and every magnitude schedule in the registries."""
    out = []
    for method in METHODS:
        schedules = MAGNITUDE_SCHEDULES if method == "magnitude" else ("per_step",)
        for schedule in schedules:
            out.append((f"{method}:{schedule}" if method == "magnitude" else method,
                        dict(method=method, schedule=schedule, rho=0.5, rho_max=1.0, admm_interval=10,
                             admm_interval_unit="step", gradual_interval=5)))
    return out


def _method(prune: dict, kind: str, level: float = 0.5):
    p = C.TrialConfig.from_dict({**prune, "sparsity_set": kind, "sparsity": level}).prune
    return make_method(p, make_sparsity_set(kind, level), lambda s: make_sparsity_set(kind, s))


def _steps(method, model, params, opt, x, y, start, stop):
    for s in range(start, stop + 1):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        method.before_step(params)
        opt.step()
        method.after_step(params, s)


def _phase(name, prune, kind, steps=60, make_opt=lambda p: torch.optim.Adam(p, lr=0.02), seed=0):
    torch.manual_seed(seed)
    x, y = _problem(seed)
    model = nn.Linear(16, 6, bias=False)
    params = [model.weight]
    method = _method(prune, kind)
    opt = make_opt(params)
    method.on_phase_start(params, steps, steps // 3)
    _steps(method, model, params, opt, x, y, 1, steps)
    method.on_epoch_end(params, 1)
    return model, params, method


@pytest.mark.parametrize("kind", [k for k in SETS if k != "nm"] + ["nm"])
@pytest.mark.parametrize("name, prune", _variants())
@pytest.mark.parametrize("opt_name, make_opt", [
    ("adam", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    ("sgd_wd", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-3)),
])
def test_pruned_weights_stay_zero_through_masked_finetuning(kind, name, prune, opt_name, make_opt):
    if kind == "nm" and name == "magnitude:gradual":
        pytest.skip("gradual + nm is refused by the config (an n:m pattern has one fixed sparsity)")
    model, params, method = _phase(name, prune, kind)
    sset = make_sparsity_set(kind, 0.5)
    with torch.no_grad():  # the hard projection, as the trial does it
        projected = sset.project([p.detach() for p in params])
        torch._foreach_copy_(params, projected)
    masks = [(p != 0).float() for p in projected]
    finetune = MaskedFinetune(masks)
    x, y = _problem(0)
    opt = make_opt(params)
    before = model.weight.detach().clone()
    finetune.on_phase_start(params, 100)
    _steps(finetune, model, params, opt, x, y, 1, 100)
    pruned = masks[0] == 0
    assert int(pruned.sum()) >= model.weight.numel() - sset.kept_count([model.weight])
    assert bool((model.weight[pruned] == 0).all()), f"{name}/{kind}/{opt_name}: pruned weights revived"
    assert not torch.equal(before[~pruned], model.weight.detach()[~pruned])  # the kept ones did train


@pytest.mark.parametrize("kind", list(SETS))
@pytest.mark.parametrize("name, prune", _variants())
def test_state_dict_round_trip_resumes_exactly(kind, name, prune):
    if kind == "nm" and name == "magnitude:gradual":
        pytest.skip("gradual + nm is refused by the config")
    torch.manual_seed(0)
    x, y = _problem(0)
    model = nn.Linear(16, 6, bias=False)
    params = [model.weight]
    method = _method(prune, kind)
    opt = torch.optim.Adam(params, lr=0.02)
    method.on_phase_start(params, 60, 20)
    _steps(method, model, params, opt, x, y, 1, 25)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), method.state_dict()))
    _steps(method, model, params, opt, x, y, 26, 60)
    straight = model.weight.detach().clone()

    model2 = nn.Linear(16, 6, bias=False)
    model2.load_state_dict(saved[0])
    params2 = [model2.weight]
    opt2 = torch.optim.Adam(params2, lr=0.02)
    opt2.load_state_dict(saved[1])
    method2 = _method(prune, kind)
    method2.load_state_dict(copy.deepcopy(saved[2]))
    _steps(method2, model2, params2, opt2, x, y, 26, 60)
    assert torch.equal(model2.weight.detach(), straight), f"{name}/{kind}: resume is not exact"


@pytest.mark.parametrize("kind", list(SETS))
def test_per_step_and_one_shot_behave_differently(kind):
    """Defect 3: per_step masked the gradients, so pruned weights never moved and it equalled one_shot."""
    per_step = dict(_variants())["magnitude:per_step"]
    one_shot = dict(_variants())["magnitude:one_shot"]
    m1, _, meth1 = _phase("per_step", per_step, kind, steps=200)
    m2, _, meth2 = _phase("one_shot", one_shot, kind, steps=200)
    assert not torch.equal(m1.weight, m2.weight)
    mask1, mask2 = m1.weight != 0, m2.weight != 0
    assert not torch.equal(mask1, mask2), "per-step ended on the one-shot mask"


def test_per_step_counts_mask_changes_and_lets_pruned_weights_return():
    prune = dict(_variants())["magnitude:per_step"]
    torch.manual_seed(0)
    x, y = _problem(0)
    model = nn.Linear(16, 6, bias=False)
    params = [model.weight]
    method = _method(prune, "uniform")
    opt = torch.optim.Adam(params, lr=0.02)
    method.on_phase_start(params, 200, 200)
    first = model.weight != 0
    _steps(method, model, params, opt, x, y, 1, 200)
    returned = (model.weight != 0) & ~first
    assert int(returned.sum()) > 0, "no weight pruned at the start ever came back"
    assert method.on_epoch_end(params, 1)["mask_changes"] >= 2 * int(returned.sum())
    assert int((model.weight == 0).sum()) == 48  # still exactly in S after every step


@pytest.mark.parametrize("kind", list(SETS))
def test_admm_differs_from_both_magnitude_variants(kind):
    variants = dict(_variants())
    admm, _, _ = _phase("admm", variants["admm"], kind)
    for name in ("magnitude:per_step", "magnitude:one_shot"):
        other, _, _ = _phase(name, variants[name], kind)
        assert not torch.equal(admm.weight, other.weight)


@pytest.mark.parametrize("method", list(METHODS))
def test_a_methods_config_fields_reach_the_trials_table_and_the_grouping(method):
    """Adding a method means its module (and METHODS) plus its fields in vocabulary/config.py (METHOD_FIELDS):
    nothing else may need a hand edit for its hyperparameters to be recorded and to split configurations."""
    import pandas as pd

    from analysis.tables import CONFIG_COLUMNS, config_key
    from results import schema

    assert set(C.METHOD_FIELDS) == set(METHODS)
    row = C.TrialConfig.from_dict({"method": method}).hyperparameters()
    for name in C.METHOD_FIELDS[method]:
        assert name in schema.TRIALS.names and name in CONFIG_COLUMNS, name
        assert row[name] is not None, name  # the method's own fields are recorded
    for other, names in C.METHOD_FIELDS.items():
        if other != method:
            assert all(row[n] is None for n in names)  # the other methods' fields are null, not defaults
    base = {**row, "arch": "mobilenet_v2", "method": method}
    for name in C.METHOD_FIELDS[method]:
        changed = dict(base, **{name: OTHER_VALUES.get(name, "x")})
        keys = config_key(pd.DataFrame([base, changed]))
        assert keys.iloc[0] != keys.iloc[1], f"{name} does not split configurations"


OTHER_VALUES = {"rho": 0.5, "rho_growth": 1.2, "rho_max": 5.0, "admm_interval": 0.5, "admm_interval_unit": "step",
                "schedule": "one_shot", "gradual_interval": 3}


def _tied_tensors():
    # few distinct magnitudes, no zeros: ties everywhere, and one layer whose every weight is the smallest
    g = torch.Generator().manual_seed(3)
    levels = torch.tensor([0.25, 0.5, 1.0])
    tensors = []
    for s in SHAPES:
        t = levels[torch.randint(0, 3, s, generator=g)] * (torch.randint(0, 2, s, generator=g) * 2 - 1)
        tensors.append(t.float())
    tensors[2] = torch.full(SHAPES[2], 0.01)  # all tied, below everything else
    return tensors


@pytest.mark.parametrize("kind", list(SETS))
@pytest.mark.parametrize("level", (0.5, 0.9))
def test_projection_with_ties_is_exact_deterministic_and_idempotent(kind, level):
    """Ties (quantized or clipped weights): the kept count stays exact (no tie kept twice or dropped), the tie
    rule is deterministic (the same masks on every call, also for a copy), and projecting twice changes nothing."""
    sset = make_sparsity_set(kind, level)
    tensors = _tied_tensors()
    masks = sset.masks(tensors)
    assert sum(int(m.sum()) for m in masks) == sset.kept_count(tensors)
    assert all(torch.equal(a, b) for a, b in zip(masks, sset.masks([t.clone() for t in tensors])))
    projected = sset.project(tensors)
    assert sum(int(torch.count_nonzero(p)) for p in projected) == sset.kept_count(tensors)
    assert all(torch.equal(a, b) for a, b in zip(sset.project(projected), projected))


def test_a_global_set_that_empties_a_layer_is_counted_in_the_trial_columns():
    """A global threshold can prune a whole layer to zero (it is all ties below the threshold here): the
    network is cut there, and the trials table's empty_layers says so (0 for the uniform set)."""
    from trainables.sparsity import layer_report, summarize

    torch.manual_seed(0)
    model = build_model("mobilenet_v3_small", width=0.25)
    named = prunable_parameters(model)
    names, params = [n for n, _ in named], [p for _, p in named]
    with torch.no_grad():
        for p in params:  # one scale everywhere (a fresh model's init scales differ per layer: at 0.9 a
            p.normal_()   # global threshold empties 11 of its layers, which is the point of the column)
        params[3].fill_(1e-4)  # one layer's weights all tied and smaller than every other
        counts = {}
        for kind in ("global", "uniform"):
            projected = make_sparsity_set(kind, 0.9).project([p.detach() for p in params])
            pruned = copy.deepcopy(model)
            pruned_params = [p for _, p in prunable_parameters(pruned)]
            for p, q in zip(pruned_params, projected):
                p.copy_(q)
            rows = layer_report(pruned, names, target_sparsity=dict.fromkeys(names, 0.9))
            counts[kind] = summarize(rows, pruned)["empty_layers"]
    assert counts == {"global": 1, "uniform": 0}
