"""Sparsity sets, exact Euclidean projections onto them, masks and the per-layer report.

Pure tensor functions (after torch.nn.utils.prune): each takes tensors and returns new tensors.

Projection onto a cardinality set keeps the largest-magnitude entries and zeroes the rest; that is the
exact Euclidean projection. Tie rule (deterministic): among equal magnitudes the entry with the LOWER flat
index is kept (a stable descending sort). For the global set the order is (tensor order, flat index).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
from torch import Tensor, nn

from vocabulary import registry
from vocabulary.config import PruneConfig
from results import schema
from trainables.models import first_conv_name


def prunable_parameters(model: nn.Module, *, prune_first_conv: bool = False) -> list[tuple[str, nn.Parameter]]:
    """Weights of Conv2d and Linear modules (never BatchNorm, never biases); the stem conv only if asked."""
    stem = first_conv_name(model)
    out = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            pname = f"{name}.weight"
            if pname == stem and not prune_first_conv:
                continue
            out.append((pname, module.weight))
    return out


def _keep_count(numel: int, sparsity: float) -> int:
    return numel - math.floor(sparsity * numel)


def _topk_mask(flat_abs: Tensor, k: int) -> Tensor:
    """Bool mask of the k largest entries of a 1-D tensor; ties keep the lower index (stable sort)."""
    order = torch.sort(flat_abs, descending=True, stable=True).indices
    mask = torch.zeros_like(flat_abs, dtype=torch.bool)
    mask[order[:k]] = True
    return mask


class SparsitySet:
    """A sparsity set S over a list of tensors.

    Contract (tests/test_contracts.py runs it on every set in SETS):

    - ``masks(tensors)`` returns one bool tensor per input (same shape, True = kept) defining the Euclidean
      projection onto S with the module's tie rule;
    - ``project`` returns new tensors ``t * mask`` (inputs are not modified); projecting twice changes nothing;
    - ``kept_count(tensors)`` is the exact number of entries the masks keep, in all: the one source of the
      kept count (the trial checks the pruned model against it; never recompute it elsewhere);
    - ``target_sparsities`` gives the fraction of zeros S imposes per tensor (for the layer report);
    - ``sparsity`` is the overall fraction of zeros S imposes, 1 - kept / total.
    Stateless and picklable.
    """

    def masks(self, tensors: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def kept_count(self, tensors: list[Tensor]) -> int:
        raise NotImplementedError

    def target_sparsities(self, tensors: list[Tensor]) -> list[float]:
        raise NotImplementedError

    def sparsity(self, tensors: list[Tensor]) -> float:
        total = sum(t.numel() for t in tensors)
        return 1.0 - self.kept_count(tensors) / total if total else 0.0

    def project(self, tensors: list[Tensor]) -> list[Tensor]:
        return [t * m for t, m in zip(tensors, self.masks(tensors))]


class UniformSet(SparsitySet):
    """Each tensor keeps exactly n - floor(s*n) of its n weights, its largest by magnitude."""

    def __init__(self, level: float):
        self.level = level  # the nominal sparsity, a fraction in [0, 1)

    def masks(self, tensors):
        return [_topk_mask(t.detach().abs().flatten(), _keep_count(t.numel(), self.level)).view_as(t)
                for t in tensors]

    def kept_count(self, tensors):
        return sum(_keep_count(t.numel(), self.level) for t in tensors)

    def target_sparsities(self, tensors):
        return [1.0 - _keep_count(t.numel(), self.level) / t.numel() for t in tensors]


class GlobalSet(SparsitySet):
    """One threshold over all tensors: keep N - floor(s*N) largest of the concatenation."""

    def __init__(self, level: float):
        self.level = level  # the nominal sparsity, a fraction in [0, 1)

    def masks(self, tensors):
        if not tensors:
            return []
        flat = torch.cat([t.detach().abs().flatten() for t in tensors])
        mask = _topk_mask(flat, _keep_count(flat.numel(), self.level))
        return [m.view_as(t) for m, t in zip(mask.split([t.numel() for t in tensors]), tensors)]

    def kept_count(self, tensors):
        return _keep_count(sum(t.numel() for t in tensors), self.level)

    def target_sparsities(self, tensors):
        # the per-tensor split is decided by the weights; the set fixes only the overall fraction
        return [self.sparsity(tensors) for _ in tensors]


class NMSet(SparsitySet):
    """Keep the n largest of every m consecutive weights along the input dimension (dim 1).

    Conv [out, in, kh, kw] groups run over ``in`` at each (out, kh, kw); Linear [out, in] over ``in``.
    Tensors whose input dimension is not divisible by m (depthwise convs, in=1) stay dense: their target
    sparsity is 0, which the layer report shows.
    """

    def __init__(self, n: int = 2, m: int = 4):
        self.n, self.m = n, m
        self.level = 1.0 - n / m  # on the layers it applies to; overall less (see sparsity())

    def _supported(self, t: Tensor) -> bool:
        return t.dim() >= 2 and t.shape[1] % self.m == 0

    def masks(self, tensors):
        return [self._mask(t) if self._supported(t) else torch.ones_like(t, dtype=torch.bool) for t in tensors]

    def _mask(self, t: Tensor) -> Tensor:
        moved = t.detach().abs().movedim(1, -1)  # [out, kh, kw, in]
        groups = moved.reshape(-1, self.m)  # [out*kh*kw*in/m, m]
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(1, order[:, : self.n], True)
        return keep.reshape(moved.shape).movedim(-1, 1)

    def kept_count(self, tensors):
        return sum(t.numel() // self.m * self.n if self._supported(t) else t.numel() for t in tensors)

    def target_sparsities(self, tensors):
        return [1.0 - self.n / self.m if self._supported(t) else 0.0 for t in tensors]


# The registry: vocabulary/registry.py SETS declares exactly these names (tests/test_contracts.py checks it)
# with the PruneConfig fields each reads; the contract tests run on every entry. A maker builds its set from
# the prune config, reading only its own fields.
SETS: dict[str, Callable[[PruneConfig], SparsitySet]] = {
    "uniform": lambda p: UniformSet(p.sparsity),
    "global": lambda p: GlobalSet(p.sparsity),
    "nm": lambda p: NMSet(p.nm_n, p.nm_m),
}


def sparsity_set(prune: PruneConfig, level: float | None = None) -> SparsitySet:
    """The trial's sparsity set (``prune.sparsity_set``), or the same set at another sparsity ``level``."""
    return SETS[prune.sparsity_set](prune if level is None else dataclasses.replace(prune, sparsity=level))


def make_sparsity_set(kind: str, sparsity: float = 0.5, **fields: Any) -> SparsitySet:
    """The sparsity set ``kind`` (a key of SETS) at ``sparsity`` in [0, 1) (ignored by sets that do not read
    it, nm), with other fields of its own (``nm_n=2, nm_m=4``); unvalidated: for tests and benchmarks."""
    if kind not in SETS:
        raise ValueError(f"sparsity_set: {kind!r} is not one of {', '.join(SETS)}")
    foreign = sorted(set(fields) - set(registry.SETS[kind].fields))
    if foreign:
        raise ValueError(f"sparsity_set {kind} does not read {', '.join(foreign)}")
    return SETS[kind](PruneConfig(sparsity_set=kind, sparsity=sparsity, **fields))


@torch.no_grad()
def apply_masks_(tensors: list[Tensor], masks: list[Tensor]) -> None:
    """Multiply each tensor by its mask in place (one foreach kernel). Masks may be bool or 0/1 floats."""
    if not tensors:
        return
    masks = [mk if mk.dtype == t.dtype else mk.to(t.dtype) for t, mk in zip(tensors, masks)]
    torch._foreach_mul_(tensors, masks)


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "linear"
    if module.groups == 1:
        return "pointwise" if module.kernel_size == (1, 1) else "conv"
    if module.groups == module.in_channels and module.weight.shape[1] == 1:
        return "depthwise"
    return "grouped"


@torch.no_grad()
def _output_sizes(model: nn.Module, image_size: int = 32) -> dict[str, tuple[int, int]]:
    """(H_out, W_out) of every Conv2d/Linear for one dummy image (Linear: 1x1)."""
    sizes: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(
                lambda mod, inp, out, name=name: sizes.__setitem__(name, tuple(out.shape[-2:]))))
    was_training = model.training
    model.eval()  # eval so the dummy forward does not touch BN running statistics
    try:
        p = next(model.parameters())
        model(torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sizes


def layer_report(model: nn.Module, prunable_names, *, target_sparsity: dict[str, float]) -> list[dict]:
    """One LAYERS row (minus trial_id/seed) per Conv2d/Linear weight, measured from the weights.

    MACs per 32x32 image: dense = H_out*W_out*C_out*(C_in/groups)*kh*kw = H_out*W_out*numel(weight);
    nonzero = H_out*W_out*nnz(weight). Does not modify the model (its train/eval mode is restored).
    """
    prunable = set(prunable_names)
    sizes = _output_sizes(model)
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        pname = f"{name}.weight"
        w = module.weight.detach()
        h, wd = sizes.get(name, (1, 1))
        numel, nnz = w.numel(), int(torch.count_nonzero(w))
        rows.append({
            "layer": pname, "kind": _kind(module), "shape": "x".join(map(str, w.shape)),
            "prunable": pname in prunable, "numel": numel, "nonzero": nnz,
            "sparsity": 1.0 - nnz / numel, "target_sparsity": float(target_sparsity.get(pname, 0.0)),
            "dense_macs": h * wd * numel, "nonzero_macs": h * wd * nnz,
        })
    return rows


def summarize(rows: list[dict], model: nn.Module) -> dict:
    """TRIALS columns from layer rows: parameter counts, achieved sparsity (prunable only), MACs."""
    params = list(model.parameters())
    prunable = [r for r in rows if r["prunable"]]
    p_numel = sum(r["numel"] for r in prunable)
    p_nnz = sum(r["nonzero"] for r in prunable)
    return {
        "total_params": sum(p.numel() for p in params),
        "nonzero_params": sum(int(torch.count_nonzero(p.detach())) for p in params),
        "prunable_params": p_numel,
        "prunable_nonzero": p_nnz,
        "achieved_sparsity": 1.0 - p_nnz / p_numel if p_numel else 0.0,
        "dense_macs": sum(r["dense_macs"] for r in rows),
        "nonzero_macs": sum(r["nonzero_macs"] for r in rows),
        # prunable tensors left with no nonzero weight: the network is cut there (a global set can do it at
        # high sparsity or with ties); the trials table and the report flag it
        "empty_layers": sum(1 for r in prunable if r["nonzero"] == 0),
    }


@torch.no_grad()
def weight_histogram(tensors: list[Tensor]) -> list[dict]:
    """Histogram rows (bin_lo, bin_hi, count) over schema.HIST_BINS bins in schema.HIST_RANGE.

    Values outside the range clamp into the edge bins; exact zeros are counted in one extra row with
    bin_lo == bin_hi == 0.0. Non-finite values (a diverged model) are left out rather than poisoning the
    bins; for finite weights the counts sum to the total numel.
    """
    lo, hi = schema.HIST_RANGE
    bins = schema.HIST_BINS
    flat = torch.cat([t.detach().flatten().float().cpu() for t in tensors]) if tensors else torch.zeros(0)
    zeros = int((flat == 0).sum())
    nz = flat[(flat != 0) & flat.isfinite()]
    idx = ((nz - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()
    counts = torch.bincount(idx, minlength=bins).tolist()
    width = (hi - lo) / bins
    rows = [{"bin_lo": lo + i * width, "bin_hi": lo + (i + 1) * width, "count": int(c)}
            for i, c in enumerate(counts)]
    rows.append({"bin_lo": 0.0, "bin_hi": 0.0, "count": zeros})
    return rows
