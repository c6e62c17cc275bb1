"""2:4 semi-structured sparse inference: a copy of a pruned model whose 2:4 layers run on sparse tensor cores,
and its batch latency against the same model dense (issue 9).

PyTorch's ``torch.sparse.to_sparse_semi_structured`` turns a 2-D CUDA weight whose every group of 4
consecutive entries along a row holds at most 2 nonzeros into a ``SparseSemiStructuredTensor`` (cuSPARSELt,
or CUTLASS when forced); ``F.linear`` with it as the weight runs a sparse matmul. It supports fp16 and bf16
(cuSPARSELt also int8/fp8), 2-D contiguous weights whose rows and columns are multiples of the backend's
minimum (cuSPARSELt fp16/bf16: 16 x 16), and compute capability >= 8.0 (Ampere and later). Linear weights
[out, in] qualify directly. A 1x1 convolution (stride 1, no padding, groups 1) IS a linear map over channels:
on channels-last activations [B, C, H, W] (memory order B, H, W, C) it is ``F.linear`` of the
[B*H*W, C] view, with no copy, so it is rewritten as :class:`PointwiseLinear`. Depthwise and kxk convs stay
dense (no sparse kernel for them, and trainables.sparsity.NMSet leaves depthwise weights dense anyway).

NMSet's 2:4 groups run along the input dimension (dim 1): for a 1x1 conv [out, in, 1, 1] and a Linear
[out, in] that is the row of the [out, in] matrix, the layout the sparse kernels want.

The module surgery is done once, in :func:`linearize` (on a copy), and the weight swap in :func:`sparsify_`;
both are plain module code testable on the CPU with dense tensors. :func:`latency_rows` returns rows that say
why they could not be measured (no CUDA, compute capability, dtype, no 2:4 layer, a conversion error) instead
of raising.
"""

from __future__ import annotations

import copy
import logging
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables.sparsity import NMSet, layer_report, prunable_parameters

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)  # what both backends run as a float matmul
MIN_CAPABILITY = (8, 0)  # sparse tensor cores: Ampere (sm_80) and later
BATCH_SIZES = (1, 32, 256, 1024)  # images per inference batch in the latency table
TRIAL_LATENCY_BATCH = 256  # images per batch behind a trial's latency columns (latency_columns)


# ----------------------------------------------------------------------------------------- pattern, layers

def is_2to4(weight: Tensor) -> bool:
    """True when every group of 4 consecutive entries along dim 1 holds at most 2 nonzeros (dim 1 % 4 == 0).

    ``weight``: [out, in] or [out, in, kh, kw]; groups as in trainables.sparsity.NMSet (over ``in`` at each
    (out, kh, kw)).
    """
    if weight.dim() < 2 or weight.shape[1] % 4:
        return False
    groups = weight.detach().movedim(1, -1).reshape(-1, 4)  # [out*kh*kw*in/4, 4]
    return bool(((groups != 0).sum(1) <= 2).all())


def backend() -> type:
    """The SparseSemiStructuredTensor subclass ``to_sparse_semi_structured`` creates here (CUTLASS when
    forced or when cuSPARSELt is missing from this build, else cuSPARSELt)."""
    sst = torch.sparse.SparseSemiStructuredTensor
    if sst._FORCE_CUTLASS or not torch.backends.cusparselt.is_available():
        return torch.sparse.SparseSemiStructuredTensorCUTLASS
    return torch.sparse.SparseSemiStructuredTensorCUSPARSELT


def min_shape(dtype: torch.dtype) -> tuple[int, int] | None:
    """(rows, cols) a sparse weight of ``dtype`` must be a multiple of on this backend; None: dtype unsupported."""
    if dtype not in SUPPORTED_DTYPES:
        return None
    c = backend()._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    return None if c is None else (c.sparse_min_rows, c.sparse_min_cols)


@dataclass(frozen=True)
class LayerPlan:
    """One Conv2d/Linear of a model: whether its weight runs as a 2:4 sparse matmul, and if not, why."""

    name: str  # module name
    kind: str  # linear | pointwise | depthwise | conv
    shape: tuple[int, ...]  # weight shape
    eligible: bool
    reason: str  # "" when eligible


def _is_pointwise(m: nn.Conv2d) -> bool:
    return (m.kernel_size == (1, 1) and m.stride == (1, 1) and m.padding in ((0, 0), "valid")
            and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def plan_layers(model: nn.Module, shape_multiple: tuple[int, int] | None) -> list[LayerPlan]:
    """A LayerPlan per Conv2d/Linear of ``model``, in module order. ``shape_multiple``: the backend's
    (rows, cols) minimum for the dtype (:func:`min_shape`); None makes every layer ineligible."""
    plans = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            kind = "linear"
        elif isinstance(m, nn.Conv2d):
            kind = ("pointwise" if _is_pointwise(m) else
                    "depthwise" if m.groups > 1 and m.groups == m.in_channels else
                    "conv" if m.groups == 1 else "grouped")
        else:
            continue
        w = m.weight
        rows, cols = w.shape[0], w.shape[1]
        if kind not in ("linear", "pointwise"):
            what = "x".join(map(str, m.kernel_size)) if kind == "conv" else kind
            why = f"{what} conv (stride {m.stride[0]}): no semi-structured kernel, stays dense"
        elif shape_multiple is None:
            why = "dtype unsupported"
        elif rows % shape_multiple[0] or cols % shape_multiple[1]:
            why = f"shape {rows}x{cols} is not a multiple of {shape_multiple[0]}x{shape_multiple[1]}"
        elif not is_2to4(w):
            why = "weights do not follow the 2:4 pattern"
        else:
            why = ""
        plans.append(LayerPlan(name, kind, tuple(w.shape), not why, why))
    return plans


# ----------------------------------------------------------------------------------------- the rewrite

class PointwiseLinear(nn.Module):
    """A 1x1 convolution (stride 1, no padding, groups 1) as ``F.linear`` over channels.

    x [B, C, H, W] -> permute -> [B, H, W, C] -> [B*H*W, C] (a view when x is channels-last, a copy otherwise)
    -> linear -> [B*H*W, O] -> [B, H, W, O] -> permute -> [B, O, H, W] (channels-last strides). The weight is
    [O, C] (the conv's [O, C, 1, 1] reshaped), so it can be swapped for a 2:4 sparse tensor.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        out_ch, in_ch = conv.weight.shape[:2]
        self.weight = nn.Parameter(conv.weight.detach().reshape(out_ch, in_ch).clone(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # [B*H*W, C]
        out = F.linear(rows, self.weight, self.bias)  # [B*H*W, O]
        return out.view(b, h, w, -1).permute(0, 3, 1, 2)  # [B, O, H, W], channels-last


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def linearize(model: nn.Module, plans: Iterable[LayerPlan]) -> nn.Module:
    """A deep copy of ``model`` with every eligible pointwise conv of ``plans`` replaced by PointwiseLinear.

    Dense weights, same function: the copy's outputs equal the original's (up to float rounding of the
    matmul). Linear layers are kept as they are. ``model`` is not modified.
    """
    out = copy.deepcopy(model)
    for p in plans:
        if p.eligible and p.kind == "pointwise":
            _set_module(out, p.name, PointwiseLinear(out.get_submodule(p.name)))
    return out


def sparsify_(model: nn.Module, plans: Iterable[LayerPlan],
              convert: Callable[[Tensor], Tensor] | None = None) -> int:
    """Swap the weight of every eligible layer of ``plans`` (in a linearized model) for ``convert(weight)``
    (default: ``torch.sparse.to_sparse_semi_structured``, CUDA only). Mutates ``model``; returns the count.
    Raises what the conversion raises (the caller turns it into a row)."""
    convert = convert or torch.sparse.to_sparse_semi_structured
    n = 0
    for p in plans:
        if not p.eligible:
            continue
        m = model.get_submodule(p.name)
        m.weight = nn.Parameter(convert(m.weight.detach().contiguous()), requires_grad=False)
        n += 1
    return n


# ----------------------------------------------------------------------------------------- capability

def unsupported_reason(*, cuda: bool, capability: tuple[int, int] | None, dtype: torch.dtype,
                       eligible_layers: int, shape_multiple: tuple[int, int] | None = (1, 1)) -> str:
    """Why 2:4 sparse inference cannot run, or "" when it can. Pure: the facts are passed in."""
    if not cuda:
        return "no CUDA device: semi-structured sparse kernels run on NVIDIA GPUs only"
    if capability is None or tuple(capability) < MIN_CAPABILITY:
        cap = "unknown" if capability is None else f"{capability[0]}.{capability[1]}"
        return (f"compute capability {cap} < {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]}: no sparse tensor cores "
                "(Ampere or later needed)")
    if dtype not in SUPPORTED_DTYPES or shape_multiple is None:
        return f"dtype {str(dtype).replace('torch.', '')} unsupported: semi-structured sparse matmul runs in fp16 or bf16"
    if eligible_layers == 0:
        return "no 2:4 layer: no Linear or pointwise conv whose weights follow 2:4 with a supported shape"
    return ""


def support_reason(model: nn.Module, dtype: torch.dtype, device: torch.device | str) -> tuple[str, list[LayerPlan]]:
    """(why not, or "", the layer plans) for ``model`` on ``device`` in ``dtype``, from this machine's facts."""
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    capability = torch.cuda.get_device_capability(device) if cuda else None
    shape = min_shape(dtype)
    plans = plan_layers(model, shape)
    reason = unsupported_reason(cuda=cuda, capability=capability, dtype=dtype,
                                eligible_layers=sum(p.eligible for p in plans), shape_multiple=shape)
    return reason, plans


# ----------------------------------------------------------------------------------------- latency

@dataclass
class LatencyRow:
    """One (model, batch size) measurement; the *_ms fields are median batch latencies in milliseconds."""

    arch: str
    batch_size: int
    dtype: str
    device: str
    status: str  # ok | unsupported | failed
    reason: str  # why not measured ("" when ok)
    backend: str = ""
    sparse_layers: int = 0  # layers run as 2:4 sparse matmuls
    dense_layers: int = 0  # Conv2d/Linear layers left dense
    sparse_mac_share: float = float("nan")  # fraction of the model's dense MACs (per 32x32 image) in sparse layers
    dense_ms: float = float("nan")  # the model as trained (1x1 convs through cuDNN)
    linear_ms: float = float("nan")  # the rewrite alone: pointwise convs as dense F.linear
    sparse_ms: float = float("nan")  # the rewrite with 2:4 sparse weights
    speedup: float = float("nan")  # dense_ms / sparse_ms
    max_rel_err: float = float("nan")  # max |sparse - dense| / max |dense| over the logits

    def as_dict(self) -> dict:
        return asdict(self)


def cuda_latency_ms(model: nn.Module, x: Tensor, *, warmup: int = 10, iters: int = 50) -> float:
    """Median latency (ms) of ``model(x)`` under inference_mode, timed with CUDA events per iteration."""
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
        for s, e in zip(starts, ends):
            s.record()
            model(x)
            e.record()
        torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def _mac_share(model: nn.Module, plans: list[LayerPlan]) -> float:
    rows = layer_report(model, [f"{p.name}.weight" for p in plans], target_sparsity={})
    sparse = {f"{p.name}.weight" for p in plans if p.eligible}
    total = sum(r["dense_macs"] for r in rows)
    return sum(r["dense_macs"] for r in rows if r["layer"] in sparse) / total if total else float("nan")


def latency_rows(model: nn.Module, arch: str, batch_sizes: Iterable[int] = BATCH_SIZES, *,
                 dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cuda",
                 warmup: int = 10, iters: int = 50, seed: int = 0) -> list[LatencyRow]:
    """Dense vs 2:4 sparse batch latency of a pruned ``model`` (eval mode, ``dtype`` weights and inputs,
    channels-last, random 32x32 inputs) per batch size. Never raises for a capability or conversion problem:
    the rows say why (status unsupported or failed). ``model`` is not modified."""
    batch_sizes = list(batch_sizes)
    dev = torch.device(device)
    name = str(dtype).replace("torch.", "")
    reason, plans = support_reason(model, dtype, dev)

    def rows_saying(status: str, why: str, **kw) -> list[LatencyRow]:
        return [LatencyRow(arch, b, name, str(dev), status, why, **kw) for b in batch_sizes]

    if reason:
        return rows_saying("unsupported", reason)
    counts = dict(backend=backend().BACKEND, sparse_layers=sum(p.eligible for p in plans),
                  dense_layers=sum(not p.eligible for p in plans))
    try:
        counts["sparse_mac_share"] = _mac_share(model, plans)
        dense = copy.deepcopy(model).to(dev, dtype).to(memory_format=torch.channels_last).eval()
        linear = linearize(dense, plans)
        sparse = linearize(dense, plans)
        sparsify_(sparse, plans)
    except Exception as e:  # a conversion the checks let through: say so in the row
        log.warning("2:4 conversion of %s failed: %s", arch, e)
        return rows_saying("failed", f"conversion: {type(e).__name__}: {str(e).splitlines()[0]}", **counts)
    out = []
    gen = torch.Generator().manual_seed(seed)
    for b in batch_sizes:
        x = torch.randn(b, 3, 32, 32, generator=gen).to(dev, dtype).contiguous(memory_format=torch.channels_last)
        row = LatencyRow(arch, b, name, str(dev), "ok", "", **counts)
        try:
            with torch.inference_mode():
                ref, got = dense(x).float(), sparse(x).float()
            row.max_rel_err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            row.dense_ms = cuda_latency_ms(dense, x, warmup=warmup, iters=iters)
            row.linear_ms = cuda_latency_ms(linear, x, warmup=warmup, iters=iters)
            row.sparse_ms = cuda_latency_ms(sparse, x, warmup=warmup, iters=iters)
            row.speedup = row.dense_ms / row.sparse_ms
        except Exception as e:  # e.g. a kernel missing for this shape on this GPU
            log.warning("2:4 latency of %s at batch %d failed: %s", arch, b, e)
            row.status, row.reason = "failed", f"{type(e).__name__}: {str(e).splitlines()[0]}"
        out.append(row)
    return out


def latency_columns(model: nn.Module, arch: str, device: torch.device | str, *, why_not: str = "",
                    batch_size: int = TRIAL_LATENCY_BATCH) -> dict:
    """A trial's latency columns (the trials table's latency_*): dense vs 2:4 sparse inference of ``model``
    at ``batch_size``, or NaN figures and the reason in ``latency_note`` (``why_not`` from the caller, e.g.
    "not a 2:4 trial", or the capability check's). Never raises for capability or conversion problems."""
    nan = float("nan")
    cols = {"latency_batch_size": batch_size, "latency_dense_ms": nan, "latency_sparse_ms": nan,
            "latency_speedup": nan, "latency_sparse_mac_share": nan, "latency_note": why_not}
    if why_not:
        return cols
    row = latency_rows(model, arch, [batch_size], device=device)[0]
    cols.update(latency_dense_ms=row.dense_ms, latency_sparse_ms=row.sparse_ms, latency_speedup=row.speedup,
                latency_sparse_mac_share=row.sparse_mac_share, latency_note=row.reason)
    return cols


def trial_latency(model: nn.Module, arch: str, sparsity_set: str, status: str,
                  device: torch.device | str) -> dict:
    """The trials table's latency_* columns of a trial's final ``model``: measured (latency_columns) only for an
    ok N:M trial; otherwise NaN figures and why not. On a machine without a capable GPU the reason is the
    capability check's ("no CUDA device ...", "compute capability 7.5 < 8.0 ...")."""
    why_not = ("the trial did not end ok: no final model to time" if status != "ok" else
               f"sparsity_set {sparsity_set}: 2:4 kernels run N:M-pruned models only" if sparsity_set != "nm"
               else "")
    return latency_columns(model, arch, device, why_not=why_not)


def prune_2to4_(model: nn.Module) -> nn.Module:
    """Project ``model``'s prunable weights onto 2:4 in place (trainables.sparsity.NMSet, stem dense as in a
    trial); for latency figures of a model with the pruned structure. Returns ``model``."""
    params = [p for _, p in prunable_parameters(model)]
    with torch.no_grad():
        torch._foreach_copy_(params, NMSet(2, 4).project([p.detach() for p in params]))
    return model
