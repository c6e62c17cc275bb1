import itertools
import math

import pytest
import torch
from torch import nn

from trainables.models import build_model
from trainables.sparsity import (apply_masks_, layer_report, make_sparsity_set, prunable_parameters,
                                 summarize, weight_histogram)


def brute_best(t, k):
    """Smallest squared distance from t to a tensor with exactly k kept entries, over all supports."""
    flat = t.flatten().tolist()
    return min(sum(v * v for i, v in enumerate(flat) if i not in keep)
               for keep in itertools.combinations(range(len(flat)), k))


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.8])
def test_uniform_exact_and_optimal(s):
    torch.manual_seed(1)
    t = torch.randn(2, 3)
    (p,) = make_sparsity_set("uniform", s).project([t])
    assert int((p != 0).sum()) == 6 - math.floor(s * 6)
    assert math.isclose(float(((t - p) ** 2).sum()), brute_best(t, 6 - math.floor(s * 6)), abs_tol=1e-6)
    (p2,) = make_sparsity_set("uniform", s).project([p])
    assert torch.equal(p, p2)  # idempotent


def test_tie_rule_keeps_lower_index():
    t = torch.tensor([[1.0, -1.0, 1.0, 0.5]])
    (m,) = make_sparsity_set("uniform", 0.5).masks([t])
    assert m.tolist() == [[True, True, False, False]]


def test_global_keeps_exactly_k():
    a, b = torch.tensor([5.0, 0.1, 3.0]), torch.tensor([[4.0, 0.2], [1.0, 1.0]])
    pa, pb = make_sparsity_set("global", 0.5).project([a, b])
    assert int((pa != 0).sum() + (pb != 0).sum()) == 7 - math.floor(0.5 * 7)
    assert pa.tolist() == [5.0, 0.0, 3.0] and pb.tolist() == [[4.0, 0.0], [1.0, 0.0]]


def test_nm_pattern_and_depthwise_dense():
    torch.manual_seed(0)
    conv = torch.randn(3, 8, 3, 3)
    dw = torch.randn(4, 1, 3, 3)
    nm = make_sparsity_set("nm", 0.0, nm_n=2, nm_m=4)
    pc, pd = nm.project([conv, dw])
    groups = (pc != 0).movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    assert torch.equal(pd, dw)
    assert nm.target_sparsities([conv, dw]) == [0.5, 0.0]


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_prunable_never_bn_or_bias(arch):
    model = build_model(arch, width=0.25)
    names = [n for n, _ in prunable_parameters(model)]
    modules = dict(model.named_modules())
    assert all(n.endswith(".weight") and isinstance(modules[n[:-7]], (nn.Conv2d, nn.Linear)) for n in names)
    assert "features.0.0.weight" not in names
    assert "features.0.0.weight" in [n for n, _ in prunable_parameters(model, prune_first_conv=True)]


def test_apply_masks_in_place():
    w = torch.ones(2, 2)
    apply_masks_([w], [torch.tensor([[True, False], [False, True]])])
    assert w.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_macs_depthwise_and_grouped():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),  # 16x16 out
                          nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),  # depthwise
                          nn.Conv2d(4, 8, 1, groups=2, bias=False),  # grouped
                          nn.Flatten(), nn.Linear(8 * 16 * 16, 2))
    with torch.no_grad():
        model[1].weight[0].zero_()
    rows = {r["layer"]: r for r in layer_report(model, ["1.weight"], target_sparsity={"1.weight": 0.25})}
    assert rows["0.weight"]["dense_macs"] == 16 * 16 * 4 * 3 * 9 and rows["0.weight"]["kind"] == "conv"
    assert rows["1.weight"]["kind"] == "depthwise" and rows["1.weight"]["dense_macs"] == 16 * 16 * 4 * 1 * 9
    assert rows["1.weight"]["nonzero_macs"] == 16 * 16 * 3 * 9 and rows["1.weight"]["sparsity"] == 0.25
    assert rows["2.weight"]["kind"] == "grouped" and rows["2.weight"]["dense_macs"] == 16 * 16 * 8 * 2
    assert rows["4.weight"]["dense_macs"] == 2 * 8 * 16 * 16
    s = summarize(list(rows.values()), model)
    assert s["prunable_params"] == 36 and s["prunable_nonzero"] == 27 and s["achieved_sparsity"] == 0.25


def test_histogram_totals():
    t = [torch.tensor([0.0, 0.5, -2.0, 3.0, 0.0]), torch.randn(10)]
    rows = weight_histogram(t)
    assert sum(r["count"] for r in rows) == 15
    assert rows[-1] == {"bin_lo": 0.0, "bin_hi": 0.0, "count": 2 + int((t[1] == 0).sum())}
    assert rows[0]["count"] >= 1 and rows[-2]["count"] >= 1  # clamped outliers


def test_histogram_leaves_out_non_finite_values():
    rows = weight_histogram([torch.tensor([float("nan"), float("inf"), -float("inf"), 0.25, 0.0])])
    assert sum(r["count"] for r in rows) == 2 and rows[-1]["count"] == 1
    assert [r["bin_lo"] for r in rows if r["count"] and r["bin_lo"] != r["bin_hi"]] == [0.25]


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=2, max_size=7), st.floats(0, 0.95))
def test_global_projection_is_optimal(values, s):
    # small integer values force many ties; the result must still be a nearest point of S
    t = torch.tensor(values, dtype=torch.float32)
    a, b = t[:3], t[3:]
    pa, pb = make_sparsity_set("global", s).project([a, b])
    p = torch.cat([pa, pb])
    k = len(values) - math.floor(s * len(values))
    assert int((p != 0).sum()) <= k and torch.equal(p[p != 0], t[p != 0])
    assert math.isclose(float(((t - p) ** 2).sum()), brute_best(t, k), abs_tol=1e-6)
