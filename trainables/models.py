"""MobileNets from torchvision, adapted to 32x32 input (DESIGN rule 4).

torchvision's ImageNet models downsample 32x: on a 32x32 CIFAR image that leaves a 1x1 feature map. We
follow the widely used CIFAR port of MobileNetV2 (kuangliu/pytorch-cifar): the stem conv and the first
stride-2 stage get stride 1, so the total downsampling is 8x and the last feature map is 4x4. The same
change is made to V3 by surgery on torchvision's modules (never a copy of its code):

- mobilenet_v2: ``features.0.0`` (stem) and ``features.2.conv.1.0`` (depthwise conv of the first 24-channel
  block) -> stride 1. Remaining stride-2 blocks: features.4, 7, 14 (8x).
- mobilenet_v3_small: ``features.0.0`` (stem) and ``features.1.block.0.0`` (depthwise conv of the first,
  16-channel SE block) -> stride 1. Remaining: features.2, 4, 9 (8x).
- mobilenet_v3_large: ``features.0.0`` (stem) and ``features.2.block.1.0`` (depthwise conv of the first
  24-channel block) -> stride 1. Remaining: features.4, 7, 13 (8x).

The depthwise conv is found as the one stride-2 Conv2d of that block, not by its name: at small width
multipliers torchvision drops a block's 1x1 expansion conv when it would not expand (expanded channels ==
input channels), which shifts the depthwise conv to ``block.0.0`` (seen for mobilenet_v3_large, width 0.1).

Residual connections are decided by torchvision at construction (``use_res_connect``) and are left as they
are: the blocks we change have no residual, as in torchvision. BatchNorm momentum is torchvision's (0.01 for
V3); the training loop recalibrates BN statistics (DESIGN rule 9).
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

__all__ = ["build_model", "first_conv_name"]

# arch -> (stem conv, the block whose stride-2 depthwise conv becomes stride 1)
_STRIDE_ONE = {
    "mobilenet_v2": ("features.0.0", "features.2"),
    "mobilenet_v3_small": ("features.0.0", "features.1"),
    "mobilenet_v3_large": ("features.0.0", "features.2"),
}


def build_model(arch: str, *, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """A randomly initialised torchvision MobileNet of ``arch`` adapted to 32x32 input (8x downsampling).

    Raises ValueError naming ``arch`` when it is not one of mobilenet_v2, mobilenet_v3_small/large.
    """
    if arch not in _STRIDE_ONE:
        raise ValueError(f"arch: {arch!r} is not one of {', '.join(_STRIDE_ONE)}")
    model = getattr(tvm, arch)(weights=None, num_classes=num_classes, width_mult=width)
    modules = dict(model.named_modules())
    stem, block = _STRIDE_ONE[arch]
    strided = [m for m in modules[block].modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    for where, convs in ((stem, [modules[stem]]), (block, strided)):
        if len(convs) != 1 or not isinstance(convs[0], nn.Conv2d) or convs[0].stride != (2, 2):
            # torchvision changed its layout: fail loudly instead of silently building an ImageNet net
            raise RuntimeError(f"{arch}: expected one stride-2 Conv2d at {where}, found {convs!r}")
        convs[0].stride = (1, 1)
    return model


def first_conv_name(model: nn.Module) -> str:
    """Parameter name of the stem conv weight (the first Conv2d of the model)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    raise ValueError("model has no Conv2d")
