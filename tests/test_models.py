import pytest
import torch

from trainables.models import build_model, first_conv_name

ARCHS = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("width", [0.1, 0.25, 1.0])  # 0.1: some blocks lose their expansion conv
def test_output_and_feature_map(arch, width):
    torch.manual_seed(0)
    model = build_model(arch, width=width).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 10)
        assert model.features(x).shape[-2:] == (4, 4)  # 8x downsampling


@pytest.mark.parametrize("arch", ARCHS)
def test_width_shrinks_params(arch):
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(build_model(arch, width=0.25)) < count(build_model(arch, width=0.5))


@pytest.mark.parametrize("arch", ARCHS)
def test_first_conv_name(arch):
    model = build_model(arch, width=0.25)
    name = first_conv_name(model)
    assert name == "features.0.0.weight"
    assert dict(model.named_parameters())[name].shape[1] == 3


def test_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        build_model("resnet18")
