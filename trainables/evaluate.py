"""Measuring a model without changing it: accuracy, BatchNorm recalibration (DESIGN rules 9, 10) and the
projected accuracy that early stopping reads (DESIGN rule 14). Each leaves the training state as it found it."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import Loader
from vocabulary.config import precision

__all__ = ["autocast", "evaluate", "recalibrate_bn", "bn_buffers", "evaluate_recalibrated", "distance",
           "projected_accuracy"]


def autocast(device: torch.device):
    """The compute precision of ``device`` (vocabulary.config.precision) as a context for forward passes."""
    if precision(device.type) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, device: torch.device) -> tuple[float, float]:
    """(accuracy, mean loss) of ``model`` in eval mode over ``loader`` (restores train mode)."""
    was = model.training
    model.eval()
    correct = torch.zeros((), device=device)
    loss = torch.zeros((), device=device)
    n = 0
    for x, y in loader.batches(0):
        with autocast(device):
            out = model(x)
        loss += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    model.train(was)
    return (float(correct) / max(n, 1), float(loss) / max(n, 1))


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Loader, batches: int, epoch: int = 0) -> None:
    """Re-estimate BatchNorm running stats from ``batches`` TRAINING batches (DESIGN rule 9).

    Resets the stats, uses a cumulative average (momentum=None), forwards under no_grad with ONLY the BN
    layers in train mode (dropout and the rest in eval mode: the statistics are those of the network as it
    is evaluated, and no random number is drawn, so measuring never shifts the dropout stream that training
    uses next), then restores each BN's momentum and the model's mode. Mutates the BN buffers only.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return
    momenta = [m.momentum for m in bns]
    was = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in bns:
        m.train()
    device = next(model.parameters()).device
    for i, (x, _) in enumerate(loader.batches(epoch)):
        if i >= batches:
            break
        with autocast(device):
            model(x)
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was)


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Every BatchNorm buffer of ``model`` (running mean, variance, batch count): what recalibration changes."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


@torch.no_grad()
def evaluate_recalibrated(model: nn.Module, loader: Loader, recal_loader: Loader, batches: int,
                          device: torch.device) -> tuple[float, float]:
    """(accuracy, loss) as after BN recalibration (DESIGN rule 10), leaving the model exactly as it was.

    The BN buffers are saved, recalibrated on ``batches`` training batches, used for the evaluation and put
    back, so measuring never changes what training does next (a run is the same with or without it).
    """
    saved = [b.clone() for b in bn_buffers(model)]
    try:
        recalibrate_bn(model, recal_loader, batches)
        return evaluate(model, loader, device)
    finally:
        for buf, old in zip(bn_buffers(model), saved):
            buf.copy_(old)


@torch.no_grad()
def distance(params: list[torch.Tensor], sset, projected: list[torch.Tensor] | None = None) -> float:
    """sum ||W - Proj_S(W)||^2 over the prunable tensors ``params``: how far W is from the sparse set ``sset``
    (``projected``: Proj_S(W) when the caller has it already). One host sync."""
    if projected is None:
        projected = sset.project([p.detach() for p in params])
    diff = torch._foreach_sub([p.detach() for p in params], projected)
    return float(torch.stack(torch._foreach_norm(diff)).square().sum())


@torch.no_grad()
def projected_accuracy(model: nn.Module, params: list[torch.Tensor], sset, val_acc: float, loader: Loader,
                       recal_loader: Loader, batches: int, device: torch.device) -> float:
    """The val accuracy ``model`` would have if its prunable weights ``params`` were projected onto ``sset``
    now, BN recalibrated on ``batches`` training batches; weights and BN buffers are put back. ``val_acc``
    (the accuracy as is) where the weights are in the set already: nothing to measure twice."""
    weights = [p.detach() for p in params]
    projected = sset.project(weights)
    if distance(params, sset, projected) == 0.0:
        return val_acc
    saved = [w.clone() for w in weights]
    torch._foreach_copy_(params, projected)
    try:
        return evaluate_recalibrated(model, loader, recal_loader, batches, device)[0]
    finally:
        torch._foreach_copy_(params, saved)
