"""2:4 semi-structured inference (trainables.semistructured) on the CPU: the capability reasons, the 2:4
pattern check against brute force, which layers are eligible, and the 1x1-conv-as-linear rewrite and the
weight swap run with DENSE tensors (the sparse kernel itself needs a GPU: tests/gpu/)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from trainables.semistructured import (PointwiseLinear, is_2to4, latency_columns, latency_rows, linearize, min_shape,
                                      plan_layers, prune_2to4_, sparsify_, support_reason, trial_latency,
                                      unsupported_reason)
from trainables.models import build_model
from trainables.sparsity import NMSet

torch.set_num_threads(1)
CUSPARSELT_BF16 = (16, 16)  # SparseSemiStructuredTensorCUSPARSELT's fp16/bf16 minimum weight shape


def _pruned(arch: str, width: float) -> nn.Module:
    """A 2:4-pruned model with real BN statistics (a few train-mode forwards), in eval mode."""
    torch.manual_seed(0)
    model = prune_2to4_(build_model(arch, width=width))
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def test_unsupported_reason_names_each_cause():
    ok = dict(cuda=True, capability=(9, 0), dtype=torch.bfloat16, eligible_layers=5)
    assert unsupported_reason(**ok) == ""
    assert unsupported_reason(**dict(ok, cuda=False)).startswith("no CUDA device")
    assert "compute capability 7.5 < 8.0" in unsupported_reason(**dict(ok, capability=(7, 5)))
    assert unsupported_reason(**dict(ok, capability=(8, 0))) == ""
    assert "dtype float32 unsupported" in unsupported_reason(**dict(ok, dtype=torch.float32))
    assert unsupported_reason(**dict(ok, eligible_layers=0)).startswith("no 2:4 layer")
    # the first missing fact is the one named: no CUDA beats an old GPU beats a dtype beats the model
    assert unsupported_reason(cuda=False, capability=(7, 0), dtype=torch.float32, eligible_layers=0).startswith("no CUDA")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given where CUDA is absent")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_no_cuda_gives_rows_with_the_reason_not_an_error(device):
    model = _pruned("mobilenet_v3_small", 0.5)
    reason, plans = support_reason(model, torch.bfloat16, device)
    assert reason.startswith("no CUDA device") and plans
    rows = latency_rows(model, "mobilenet_v3_small", [1, 8], device=device)
    assert [(r.batch_size, r.status) for r in rows] == [(1, "unsupported"), (8, "unsupported")]
    assert all(r.reason == reason for r in rows)
    cols = latency_columns(model, "mobilenet_v3_small", device)
    assert cols["latency_note"] == reason and cols["latency_batch_size"] == 256
    assert all(v != v for k, v in cols.items() if k.endswith(("_ms", "_speedup", "_share")))  # NaN, not 0
    assert latency_columns(model, "x", device, why_not="not a 2:4 trial")["latency_note"] == "not a 2:4 trial"


def _brute_2to4(w: torch.Tensor) -> bool:
    if w.shape[1] % 4:
        return False
    for o in range(w.shape[0]):
        for rest in itertools.product(*(range(s) for s in w.shape[2:])):
            col = [float(w[(o, i, *rest)]) for i in range(w.shape[1])]
            if any(sum(v != 0 for v in col[g:g + 4]) > 2 for g in range(0, len(col), 4)):
                return False
    return True


def test_2to4_check_against_brute_force_and_nmset():
    g = torch.Generator().manual_seed(1)
    for shape in [(3, 8), (2, 8, 3, 3), (4, 6), (5, 4, 1, 1)]:
        for keep in (0.3, 0.5, 0.8):  # random masks: some tensors in the pattern, most not
            w = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < keep)
            assert is_2to4(w) == _brute_2to4(w), (shape, keep)
        pruned = NMSet(2, 4).project([torch.randn(shape, generator=g)])[0]
        assert is_2to4(pruned) == (shape[1] % 4 == 0)
    w = torch.zeros(1, 8)
    w[0, :2] = 1
    assert is_2to4(w)
    w[0, 2] = 1  # three of the first four
    assert not is_2to4(w)
    model = _pruned("mobilenet_v2", 0.5)
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert is_2to4(m.weight) == (m.weight.shape[1] % 4 == 0 and name != "features.0.0"), name


def test_eligible_layers_of_a_2to4_mobilenet_v2():
    model = _pruned("mobilenet_v2", 1.0)
    plans = plan_layers(model, CUSPARSELT_BF16)
    mods = dict(model.named_modules())
    for p in plans:
        m = mods[p.name]
        pointwise = isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
        shaped = m.weight.shape[0] % 16 == 0 and m.weight.shape[1] % 16 == 0
        assert p.eligible == ((pointwise or isinstance(m, nn.Linear)) and shaped), p
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert p.kind == "depthwise" and "depthwise" in p.reason
    by_name = {p.name: p for p in plans}
    assert by_name["features.0.0"].reason.startswith("3x3 conv")  # the 3x3 stem: dense
    assert "not a multiple of 16x16" in by_name["features.2.conv.2"].reason  # 96 -> 24 channels
    assert "not a multiple" in by_name["classifier.1"].reason  # 10 classes
    assert by_name["features.18.0"].eligible  # 320 -> 1280
    # 35 pointwise/linear layers; not 16x16-shaped: the four that touch the 24-channel stage, the classifier
    assert sum(p.eligible for p in plans) == 30
    # the dense model has the shapes but not the pattern; float32 has no sparse kernel
    dense_plans = plan_layers(build_model("mobilenet_v2"), CUSPARSELT_BF16)
    assert not any(p.eligible for p in dense_plans)
    assert {p.name: p for p in dense_plans}["features.18.0"].reason == "weights do not follow the 2:4 pattern"
    assert min_shape(torch.float32) is None
    assert all(p.reason == "dtype unsupported" for p in plan_layers(model, None) if p.kind == "pointwise")


@pytest.mark.parametrize("arch", ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"])
def test_pointwise_as_linear_rewrite_keeps_the_function(arch):
    model = _pruned(arch, 0.5)
    plans = plan_layers(model, (4, 4))  # small multiples: most 1x1 convs of a width-0.5 net qualify
    eligible_pw = {p.name for p in plans if p.eligible and p.kind == "pointwise"}
    assert len(eligible_pw) > 10
    rewritten = linearize(model, plans)
    assert {n for n, m in rewritten.named_modules() if isinstance(m, PointwiseLinear)} == eligible_pw
    assert not any(isinstance(m, PointwiseLinear) for m in model.modules())  # the original is untouched
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        for fmt in (torch.contiguous_format, torch.channels_last):
            got = rewritten.to(memory_format=fmt)(x.contiguous(memory_format=fmt))
            assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), (fmt, (got - ref).abs().max())


def test_sparsify_swaps_exactly_the_eligible_weights():
    model = _pruned("mobilenet_v3_small", 1.0)
    plans = plan_layers(model, CUSPARSELT_BF16)
    seen = []

    def convert(w):  # stands in for to_sparse_semi_structured: records what it was given, stays dense
        seen.append(w)
        return w.clone()

    rewritten = linearize(model, plans)
    assert sparsify_(rewritten, plans, convert) == sum(p.eligible for p in plans) == len(seen) > 0
    assert all(w.dim() == 2 and w.is_contiguous() and is_2to4(w) for w in seen)
    assert [tuple(w.shape) for w in seen] == [p.shape[:2] for p in plans if p.eligible]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rewritten(x), model(x), rtol=1e-4, atol=1e-5)


def test_pointwise_linear_output_is_channels_last():
    conv = nn.Conv2d(8, 12, 1, bias=True)
    pw = PointwiseLinear(conv)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    out = pw(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, conv(x), atol=1e-6)
    strided = nn.Conv2d(8, 12, 1, stride=2)
    assert not plan_layers(nn.Sequential(strided), (4, 4))[0].eligible  # a strided 1x1 is not a linear map


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given where CUDA is absent")
def test_trial_latency_says_why_each_trial_has_no_figures():
    model = _pruned("mobilenet_v3_small", 0.5)
    nan_figures = lambda cols: all(cols[k] != cols[k] for k in ("latency_dense_ms", "latency_sparse_ms",
                                                                "latency_speedup"))
    nm = trial_latency(model, "mobilenet_v3_small", "nm", "ok", "cpu")
    assert nm["latency_note"].startswith("no CUDA device") and nan_figures(nm)
    uniform = trial_latency(model, "mobilenet_v3_small", "uniform", "ok", "cuda")
    assert "sparsity_set uniform" in uniform["latency_note"] and nan_figures(uniform)
    failed = trial_latency(model, "mobilenet_v3_small", "nm", "diverged", "cpu")
    assert "did not end ok" in failed["latency_note"] and nan_figures(failed)
