"""A trial's final model as a small file: exact zeros kept as a bitmask, everything else as it is.

Encoding (``FORMAT``): a ``torch.save`` of ::

    {"format": FORMAT, "trial_id": str, "config": TrialConfig flat dict, "mean": [3 floats], "std": [3 floats],
     "tensors": {name: tensor                                   # dense: BatchNorm, biases, the kept-dense stem
                 | {"shape": [...], "dtype": str, "mask": uint8 tensor (np.packbits of weight != 0, C order),
                    "values": 1-D tensor of the nonzero weights in C order}}}   # every prunable weight

At sparsity 0.9 a prunable float32 weight costs 1 bit of mask + 0.1 x 32 bits of value per position: ~13% of its
dense bytes (measured per arch in tests/test_model_file.py). Decoding rebuilds the torchvision model from the
config (``build_model``) with exact zeros where pruned; the BatchNorm statistics are those the final accuracy
was measured with (recalibrated), so the loaded model scores ``final_val_acc`` again.

The model expects images normalised with ``mean``/``std`` (as ``trainables.data.Loader`` feeds it);
:func:`with_normalization` wraps it for float images in [0, 1] (what ``python -m analysis export`` writes).
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

FORMAT = "prunesweep-sparse-model-1"

__all__ = ["FORMAT", "encode", "dense_nbytes", "decode", "load_model", "Normalize", "with_normalization"]


def encode(model: nn.Module, *, prunable: list[str], config: Mapping[str, Any], trial_id: str,
           mean, std) -> bytes:
    """The model file's bytes (see the module docstring); ``prunable``: the prunable parameter names."""
    sparse = set(prunable)
    tensors: dict[str, Any] = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if name in sparse and t.is_floating_point():
            keep = (t != 0).flatten()
            tensors[name] = {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."),
                             "mask": torch.from_numpy(np.packbits(keep.numpy())),
                             "values": t.flatten()[keep].clone()}
        else:
            tensors[name] = t.clone()
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "trial_id": trial_id, "config": dict(config), "mean": [float(m) for m in mean],
                "std": [float(s) for s in std], "tensors": tensors}, buf)
    return buf.getvalue()


def dense_nbytes(model: nn.Module) -> int:
    """Bytes of the same model saved densely (``torch.save`` of its state_dict): what the sparse file saves on."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    return buf.getbuffer().nbytes


def decode(payload: bytes) -> dict[str, Any]:
    """The model file as a dict with ``state_dict`` (dense tensors, exact zeros where pruned) in place of
    ``tensors``. Raises ValueError when the bytes are not a model file of this format."""
    try:
        raw = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise ValueError(f"not a prunesweep model file: {type(exc).__name__}: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"not a prunesweep model file of format {FORMAT}")
    state = {}
    for name, t in raw["tensors"].items():
        if isinstance(t, dict):
            n = int(np.prod(t["shape"])) if t["shape"] else 1
            keep = torch.from_numpy(np.unpackbits(t["mask"].numpy(), count=n).astype(bool))
            dense = torch.zeros(n, dtype=getattr(torch, t["dtype"]))
            dense[keep] = t["values"]
            state[name] = dense.view(t["shape"])
        else:
            state[name] = t
    return {k: v for k, v in raw.items() if k != "tensors"} | {"state_dict": state}


def load_model(payload: bytes) -> tuple[nn.Module, dict[str, Any]]:
    """(the torchvision model in eval mode, the file's metadata: trial_id, config, mean, std) from a model
    file's bytes: the architecture rebuilt from its config, exact zeros where pruned."""
    from vocabulary.config import TrialConfig
    from trainables.models import build_model

    file = decode(payload)
    cfg = TrialConfig.from_dict(file["config"])
    model = build_model(cfg.model.arch, num_classes=cfg.model.num_classes, width=cfg.model.width)
    model.load_state_dict(file["state_dict"])
    model.eval()
    meta = {k: v for k, v in file.items() if k != "state_dict"}
    return model, meta


class Normalize(nn.Module):
    """(x - mean) / std per channel, for float NCHW images in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def with_normalization(model: nn.Module, mean, std) -> nn.Module:
    """The model behind its input normalisation: takes float NCHW images in [0, 1] (32x32 RGB)."""
    return nn.Sequential(Normalize(mean, std), model).eval()
