"""Sparsity sets (the registry seen from trainables), masks and the per-layer report.

Pure tensor functions (after torch.nn.utils.prune): each takes tensors and returns new tensors.

A sparsity set is its module (the built-in ones: trainables/sparsity_sets/, ``base.py`` with the SparsitySet
contract and the tie rule) and its entry in ``vocabulary/registry.py`` SETS naming that module; nothing else
names it. ``SETS`` is the registry seen from here: name -> the module's ``SET``, a maker from the PruneConfig
that reads only the set's own fields. The trial builds its set with ``sparsity_set``, never by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import Tensor, nn

from vocabulary import registry
from vocabulary.config import PruneConfig
from results import schema
from trainables.models import first_conv_name
from trainables.registered import Registered
from trainables.sparsity_sets.base import SparsitySet, keep_count, topk_mask
from trainables.sparsity_sets.global_ import GlobalSet
from trainables.sparsity_sets.nm import NMSet
from trainables.sparsity_sets.uniform import UniformSet

__all__ = ["SETS", "GlobalSet", "NMSet", "SetMaker", "SparsitySet", "UniformSet", "apply_masks_", "keep_count",
           "layer_report", "make_sparsity_set", "prunable_parameters", "sparsity_set", "summarize", "topk_mask",
           "weight_histogram"]

SetMaker = Callable[[PruneConfig], SparsitySet]  # a set module's SET: builds the set from the prune config


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


# The registry: vocabulary/registry.py SETS declares each set (its help, its module, the PruneConfig fields it
# reads); the contract tests (tests/test_contracts.py) run on every entry. Resolved on access (Registered), so
# a set's module may import this one (a newcomer's set imports SparsitySet here).
SETS: Mapping[str, SetMaker] = Registered(lambda: registry.SETS, "SET", "a maker (PruneConfig -> SparsitySet)",
                                          callable)


def sparsity_set(prune: PruneConfig, level: float | None = None) -> SparsitySet:
    """The trial's sparsity set (``prune.sparsity_set``), or the same set at another sparsity ``level``."""
    return SETS[prune.sparsity_set](prune if level is None else dataclasses.replace(prune, sparsity=level))


def make_sparsity_set(kind: str, sparsity: float = 0.5, **fields: Any) -> SparsitySet:
    """The sparsity set ``kind`` (a key of SETS) at ``sparsity`` in [0, 1) (ignored by sets that do not read
    it, nm), with other fields of its own (``nm_n=2, nm_m=4``); unvalidated: for tests and benchmarks."""
    if kind not in registry.SETS:
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
