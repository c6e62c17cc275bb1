"""The contract every registered pruning method joins (not a test file: tests/test_contracts.py runs it over the
registry, tests/test_new_method.py on a throwaway method registered the way a newcomer would).

Each check takes a method by its registry name and trains it on a tiny regression (an nn.Linear(16, 6) whose
true weights are sparse), so it runs in milliseconds. The prune configs are built without validation: a
method registered inside a test (after vocabulary.config computed its name tuple) is built the same way.
"""

from __future__ import annotations

import copy
import math

import pyarrow as pa
import torch
from torch import nn

from vocabulary import config as C
from vocabulary import registry
from results import schema
from trainables.methods import MAGNITUDE_SCHEDULES, METHODS, MaskedFinetune, make_method, metric_columns
from trainables.sparsity import make_sparsity_set


def problem(seed=0):
    """A regression whose true weights are sparse on a support unlike the init's largest entries."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 16, generator=g)
    w_true = torch.randn(6, 16, generator=g) * (torch.rand(6, 16, generator=g) < 0.4)
    return x, x @ w_true.T


def variants(methods=None):
    """(name, prune fields) for every registered method and every magnitude schedule."""
    out = []
    for method in methods or METHODS:
        schedules = MAGNITUDE_SCHEDULES if method == "magnitude" else ("per_step",)
        for schedule in schedules:
            out.append((f"{method}:{schedule}" if method == "magnitude" else method,
                        dict(method=method, schedule=schedule, rho=0.5, rho_max=1.0, admm_interval=10,
                             admm_interval_unit="step", gradual_interval=5)))
    return out


def refused(name: str, kind: str) -> bool:
    """The combinations the config refuses (gradual + a set whose pattern fixes the level, nm)."""
    from vocabulary import registry

    return registry.SETS[kind].fixed_level and name == "magnitude:gradual"


def build(prune: dict, kind: str, level: float = 0.5):
    p = C.PruneConfig(**{**prune, "sparsity_set": kind, "sparsity": level})
    return make_method(p, make_sparsity_set(kind, level), lambda s: make_sparsity_set(kind, s))


def steps(method, model, params, opt, x, y, start, stop):
    for s in range(start, stop + 1):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        method.before_step(params)
        opt.step()
        method.after_step(params, s)


def phase(prune, kind, n_steps=60, make_opt=lambda p: torch.optim.Adam(p, lr=0.02), seed=0):
    """One sparsify phase of ``n_steps`` (3 epochs); returns (model, params, method, the last epoch's metrics)."""
    torch.manual_seed(seed)
    x, y = problem(seed)
    model = nn.Linear(16, 6, bias=False)
    params = [model.weight]
    method = build(prune, kind)
    opt = make_opt(params)
    method.on_phase_start(params, n_steps, n_steps // 3)
    steps(method, model, params, opt, x, y, 1, n_steps)
    return model, params, method, method.on_epoch_end(params, 1)


def check_zeros_stay_zero_through_masked_finetuning(name, prune, kind, opt_name, make_opt):
    model, params, _, _ = phase(prune, kind)
    sset = make_sparsity_set(kind, 0.5)
    with torch.no_grad():  # the hard projection, as the trial does it
        projected = sset.project([p.detach() for p in params])
        torch._foreach_copy_(params, projected)
    masks = [(p != 0).float() for p in projected]
    finetune = MaskedFinetune(masks)
    x, y = problem(0)
    opt = make_opt(params)
    before = model.weight.detach().clone()
    finetune.on_phase_start(params, 100)
    steps(finetune, model, params, opt, x, y, 1, 100)
    pruned = masks[0] == 0
    assert int(pruned.sum()) >= model.weight.numel() - sset.kept_count([model.weight])
    assert bool((model.weight[pruned] == 0).all()), f"{name}/{kind}/{opt_name}: pruned weights revived"
    assert not torch.equal(before[~pruned], model.weight.detach()[~pruned])  # the kept ones did train


def check_resume_is_exact(name, prune, kind):
    torch.manual_seed(0)
    x, y = problem(0)
    model = nn.Linear(16, 6, bias=False)
    params = [model.weight]
    method = build(prune, kind)
    opt = torch.optim.Adam(params, lr=0.02)
    method.on_phase_start(params, 60, 20)
    steps(method, model, params, opt, x, y, 1, 25)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), method.state_dict()))
    steps(method, model, params, opt, x, y, 26, 60)
    straight = model.weight.detach().clone()

    model2 = nn.Linear(16, 6, bias=False)
    model2.load_state_dict(saved[0])
    params2 = [model2.weight]
    opt2 = torch.optim.Adam(params2, lr=0.02)
    opt2.load_state_dict(saved[1])
    method2 = build(prune, kind)
    method2.load_state_dict(copy.deepcopy(saved[2]))
    steps(method2, model2, params2, opt2, x, y, 26, 60)
    assert torch.equal(model2.weight.detach(), straight), f"{name}/{kind}: resume is not exact"


def check_differs_from_the_other_methods(name, prune, kind, all_variants):
    """Its weights after the phase differ from those of every variant of every other method: a new method
    that silently computes an existing one is caught."""
    mine, _, _, _ = phase(prune, kind)
    others = [(n, p) for n, p in all_variants if p["method"] != prune["method"] and not refused(n, kind)]
    assert others, "no other method to compare with"
    for other_name, other in others:
        theirs, _, _, _ = phase(other, kind)
        assert not torch.equal(mine.weight, theirs.weight), f"{name} computes what {other_name} does ({kind})"


def check_reports_only_declared_metrics(name, prune, kind):
    """on_epoch_end returns the metrics the method declares (vocabulary/registry.py), no others, and each of
    them has its column in the epochs table with its declared type."""
    _, _, _, values = phase(prune, kind)
    declared = {m.name: m for m in registry.METHODS[prune["method"]].metrics}
    assert set(values) <= set(declared), f"{name}: undeclared metrics {sorted(set(values) - set(declared))}"
    row = metric_columns(prune["method"], values)
    columns = dict(schema.method_metric_columns())  # generated from the registry, as EPOCHS is at import
    arrow = {"float": pa.float64(), "int": pa.int64()}
    for metric in declared.values():
        assert columns.get(metric.name) == arrow[metric.type], f"{name}: {metric.name} has no {metric.type} column"
        assert metric.name in row and (metric.name in values or _is_missing(row[metric.name]))
    assert list(row) == list(columns)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def other_value(name: str):
    """A value of config field ``name`` other than its default that TrialConfig accepts (with the method that
    owns the field, when one does), or None when no simple candidate is valid on its own."""
    f = {f.name: f for f in C.all_fields()}[name]
    owner = next((m for m, spec in registry.METHODS.items() if name in spec.fields), None)
    for value in _candidates(name, f.type, f.default):
        try:
            C.TrialConfig.from_dict({"method": owner, name: value} if owner else {name: value})
        except C.ConfigError:
            continue
        return value
    return None


def _candidates(name, ftype, default):
    if name in C.CHOICES:
        return [c for c in C.CHOICES[name] if c != default]
    if ftype == "bool":
        return [not default]
    if default is None:
        return []
    if ftype.startswith("int"):
        return [default + 1, default * 2, max(default // 2, 1)]
    if ftype.startswith("float"):
        return [default * 2, default / 2, default + 0.5, 0.5]
    return []
