"""Contract tests that every sparsity set and every pruning method joins automatically (parametrised over the
registries ``trainables.sparsity.SETS`` and ``trainables.methods.METHODS`` / ``MAGNITUDE_SCHEDULES``).

A new set or method is tested by these the moment it is registered; config's name tuples must match.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from torch import nn

from vocabulary import config as C
from vocabulary import registry
from trainables.methods import MAGNITUDE_SCHEDULES, METHODS
from trainables.models import build_model
from trainables.sparsity import SETS, make_sparsity_set, prunable_parameters, sparsity_set

import method_contract as MC

torch.set_num_threads(1)

LEVELS = (0.5, 0.7, 0.9)  # the sweep's shared sparsity levels (sweep.spaces.SPARSITY_LEVELS)


def test_registries_match_config_names():
    assert tuple(SETS) == C.SPARSITY_SETS
    assert tuple(METHODS) == C.METHODS
    assert tuple(MAGNITUDE_SCHEDULES) == C.MAGNITUDE_SCHEDULES


NAME = re.compile(r"[a-z][a-z0-9_]*")


@pytest.mark.parametrize("method", list(METHODS))
def test_a_registered_method_is_a_name_and_its_module_registers_a_method(method):
    """Names are folder partitions (method=<name>) and CLI values: lowercase words, so a name such as
    "no-such-method" (test_config's invalid example) can never be registered. Its module's METHOD is a Method
    record (the maker and the pre-training check), and its fields are PruneConfig fields."""
    from trainables.methods import Method

    assert NAME.fullmatch(method), method
    assert isinstance(METHODS[method], Method)
    spec = registry.METHODS[method]
    assert spec.help and set(spec.fields) <= {f.name for f in dataclasses.fields(C.PruneConfig)}
    assert method in C.field_help()["method"] and spec.help in C.field_help()["method"]


@pytest.mark.parametrize("kind", list(SETS))
def test_a_registered_set_is_a_name_that_reads_its_own_fields(kind):
    """Its module (named by its registry entry) exports SET, a maker of a SparsitySet from the prune config."""
    from trainables.sparsity import SparsitySet

    assert NAME.fullmatch(kind), kind
    spec = registry.SETS[kind]
    assert isinstance(SETS[kind](C.PruneConfig(sparsity_set=kind)), SparsitySet), spec.module
    assert set(spec.fields) <= {f.name for f in dataclasses.fields(C.PruneConfig)}
    assert spec.help in C.field_help()["sparsity_set"]
    # the set is built from its own fields: the others cannot change it
    base = C.PruneConfig(sparsity_set=kind, sparsity=0.5)
    tensors = _random_tensors(SHAPES, seed=2)
    masks = sparsity_set(base).masks(tensors)
    for f in ("sparsity", "nm_n", "nm_m"):
        if f not in spec.fields:
            changed = dataclasses.replace(base, **{f: {"sparsity": 0.9, "nm_n": 1, "nm_m": 8}[f]})
            assert all(torch.equal(a, b) for a, b in zip(masks, sparsity_set(changed).masks(tensors))), f


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
# The method contract lives in method_contract.py (tests/test_new_method.py runs it on a method registered
# inside a test); here it runs on every registered method.

VARIANTS = MC.variants()


@pytest.mark.parametrize("kind", [k for k in SETS if k != "nm"] + ["nm"])
@pytest.mark.parametrize("name, prune", VARIANTS)
@pytest.mark.parametrize("opt_name, make_opt", [
    ("adam", lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    ("sgd_wd", lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-3)),
])
def test_pruned_weights_stay_zero_through_masked_finetuning(kind, name, prune, opt_name, make_opt):
    if MC.refused(name, kind):
        pytest.skip("gradual + nm is refused by the config (an n:m pattern has one fixed sparsity)")
    MC.check_zeros_stay_zero_through_masked_finetuning(name, prune, kind, opt_name, make_opt)


@pytest.mark.parametrize("kind", list(SETS))
@pytest.mark.parametrize("name, prune", VARIANTS)
def test_state_dict_round_trip_resumes_exactly(kind, name, prune):
    if MC.refused(name, kind):
        pytest.skip("gradual + nm is refused by the config")
    MC.check_resume_is_exact(name, prune, kind)


@pytest.mark.parametrize("kind", list(SETS))
def test_per_step_and_one_shot_behave_differently(kind):
    """Defect 3: per_step masked the gradients, so pruned weights never moved and it equalled one_shot."""
    per_step = dict(VARIANTS)["magnitude:per_step"]
    one_shot = dict(VARIANTS)["magnitude:one_shot"]
    m1, _, _, _ = MC.phase(per_step, kind, n_steps=200)
    m2, _, _, _ = MC.phase(one_shot, kind, n_steps=200)
    assert not torch.equal(m1.weight, m2.weight)
    mask1, mask2 = m1.weight != 0, m2.weight != 0
    assert not torch.equal(mask1, mask2), "per-step ended on the one-shot mask"


def test_per_step_counts_mask_changes_and_lets_pruned_weights_return():
    prune = dict(VARIANTS)["magnitude:per_step"]
    torch.manual_seed(0)
    x, y = MC.problem(0)
    model = nn.Linear(16, 6, bias=False)
    params = [model.weight]
    method = MC.build(prune, "uniform")
    opt = torch.optim.Adam(params, lr=0.02)
    method.on_phase_start(params, 200, 200)
    first = model.weight != 0
    MC.steps(method, model, params, opt, x, y, 1, 200)
    returned = (model.weight != 0) & ~first
    assert int(returned.sum()) > 0, "no weight pruned at the start ever came back"
    assert method.on_epoch_end(params, 1)["mask_changes"] >= 2 * int(returned.sum())
    assert int((model.weight == 0).sum()) == 48  # still exactly in S after every step


@pytest.mark.parametrize("kind", list(SETS))
@pytest.mark.parametrize("name, prune", VARIANTS)
def test_every_method_differs_from_the_others(kind, name, prune):
    """Ran for ADMM only (against per-step and one-shot magnitude); now every variant of every registered
    method against every variant of every other one."""
    if MC.refused(name, kind):
        pytest.skip("gradual + nm is refused by the config")
    MC.check_differs_from_the_other_methods(name, prune, kind, VARIANTS)


@pytest.mark.parametrize("kind", list(SETS))
@pytest.mark.parametrize("name, prune", VARIANTS)
def test_a_method_reports_only_the_metrics_it_declares(kind, name, prune):
    if MC.refused(name, kind):
        pytest.skip("gradual + nm is refused by the config")
    MC.check_reports_only_declared_metrics(name, prune, kind)


def test_the_epochs_table_has_every_declared_metric_in_registry_order():
    from results import schema

    names = schema.EPOCHS.names
    columns = schema.method_metric_columns()
    assert [(n, schema.EPOCHS.field(n).type) for n, _ in columns] == columns
    at = names.index(columns[0][0])
    assert names[at:at + len(columns)] == [n for n, _ in columns]  # one block, between density and seconds
    assert names[at - 1] == "density" and names[at + len(columns)] == "seconds"


@pytest.mark.parametrize("method", list(METHODS))
def test_a_methods_config_fields_reach_the_trials_table_and_the_grouping(method):
    """Adding a method means its module, its registry entry (vocabulary/registry.py, naming its fields) and the
    fields themselves in PruneConfig: nothing else may need a hand edit for its hyperparameters to be recorded
    and to split configurations."""
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
        other = MC.other_value(name)
        changed = dict(base, **{name: "x" if other is None else other})
        keys = config_key(pd.DataFrame([base, changed]))
        assert keys.iloc[0] != keys.iloc[1], f"{name} does not split configurations"


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
