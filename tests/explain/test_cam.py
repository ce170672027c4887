"""Grad-CAM and Guided Grad-CAM equal Captum's and the CAM formula.

The contract all methods share (shapes, model left alone, errors) is in test_method_contract.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam
from explain_support import (
    ZOO,
    assert_same,
    assert_untouched,
    hooked_modules,
    sampling_lenet,
    state,
    zoo_model,
)
from torch import nn

from trustmap.errors import ConfigError, DataError
from trustmap.explain.cam import gradcam, guided_gradcam, layer_gradcam
from trustmap.models import build

pytestmark = [pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not:UserWarning")]


@pytest.fixture(scope="module")
def digits(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.images[:4].clone(), mnist_test.labels[:4].clone()


def layer_output_size(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[int, int]:
    seen = []
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, a, out: seen.append(out.shape[-2:]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return tuple(seen[0])


@pytest.mark.parametrize("name", list(ZOO))
def test_layer_gradcam_has_the_layer_size_on_every_zoo_model(name, digits):
    """The raw, not upsampled map is no registered method, so test_method_contract skips it."""
    x, labels = digits
    x, labels = x[:2], labels[:2]
    model = zoo_model(name)
    before = state(model)
    raw = layer_gradcam(model, x, labels, relu=False)
    assert raw.shape == (2, 1, *layer_output_size(model, model.gradcam_layer, x))
    assert torch.isfinite(raw).all() and raw.abs().sum() > 0
    assert_untouched(model, before)


@pytest.mark.parametrize("name", ["lenet", "resnet18", "cnn1000", "alexnet"])
def test_equals_captum(name, digits):
    x, labels = digits
    model = zoo_model(name)
    layer = dict(model.named_modules())[model.gradcam_layer]
    for relu in (True, False):
        raw = LayerGradCam(model, layer).attribute(x, labels, relu_attributions=relu)
        assert_same(layer_gradcam(model, x, labels, relu=relu), raw)
        for mode in ("bilinear", "nearest"):
            up = LayerAttribution.interpolate(raw, x.shape[-2:], interpolate_mode=mode)
            assert_same(gradcam(model, x, labels, relu=relu, upsample=mode), up)
    assert_same(guided_gradcam(model, x, labels), GuidedGradCam(model, layer).attribute(x, labels))


def test_other_layers_equal_captum(digits):
    x, labels = digits
    model = zoo_model("lenet")
    for name in ("features.relu1", "features.conv2"):
        layer = dict(model.named_modules())[name]
        raw = LayerGradCam(model, layer).attribute(x, 2, relu_attributions=True)
        assert_same(layer_gradcam(model, x, 2, layer=name), raw)
        assert_same(guided_gradcam(model, x, 2, layer=name),
                    GuidedGradCam(model, layer).attribute(x, 2))


def test_gradcam_is_cam_scaled_on_a_global_pooling_network():
    # logit_c = sum_k w_ck mean(A_k): dlogit/dA_k = w_ck / (h w), so Grad-CAM = CAM / (h w).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 4))
    x = torch.rand(2, 1, 12, 12)
    maps = model[1](model[0](x)).detach()
    cam = torch.einsum("k,nkhw->nhw", model[4].weight[1].detach(), maps) / (8 * 8)
    raw = layer_gradcam(model, x, 1, layer="1", relu=False)
    assert_same(raw, cam.unsqueeze(1))
    assert_same(layer_gradcam(model, x, 1, layer="1"), F.relu(cam).unsqueeze(1))
    up = gradcam(model, x, 1, layer="1", relu=False)
    assert_same(up, F.interpolate(cam.unsqueeze(1), size=(12, 12), mode="bilinear",
                                  align_corners=False))


def test_the_map_is_repeated_on_every_channel(digits):
    x, labels = digits
    torch.manual_seed(0)
    model = build("lenet", in_channels=3).eval()
    rgb = x.expand(-1, 3, -1, -1) * torch.tensor([1.0, 0.5, 0.25]).view(1, 3, 1, 1)
    maps = gradcam(model, rgb, labels)
    assert maps.shape == rgb.shape
    assert torch.equal(maps[:, :1].expand_as(maps), maps)
    guided = guided_gradcam(model, rgb, labels)
    assert guided.shape == rgb.shape and not torch.equal(guided[:, 0], guided[:, 1])


def test_mc_dropout_gradcam_explains_the_same_stochastic_forward(digits):
    x, labels = digits
    model = sampling_lenet()
    before = state(model)
    torch.manual_seed(3)
    ours = layer_gradcam(model, x, labels, relu=False)
    torch.manual_seed(3)
    theirs = LayerGradCam(model, model.features.pool2).attribute(x, labels)
    assert_same(ours, theirs)
    assert_untouched(model, before)


def test_a_layer_that_is_not_feature_maps_is_refused_and_the_model_kept(digits):
    x, labels = digits
    model = zoo_model("resnet18")
    before = state(model)
    with pytest.raises(ConfigError, match="feature maps"):
        gradcam(model, x, labels, layer="head.fc")  # logits are not feature maps
    assert_untouched(model, before)


def test_bad_inputs_raise_trustmap_errors(digits):
    x, labels = digits
    model = zoo_model("lenet")
    nan = x.clone()
    nan[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError):
        layer_gradcam(model, nan, labels)
    with pytest.raises(DataError):
        layer_gradcam(model, x[0], 1)
    with pytest.raises(DataError):
        layer_gradcam(model, x, 10)
    for fn in (gradcam, guided_gradcam, layer_gradcam):
        with pytest.raises(ConfigError, match="did you mean"):
            fn(model, x, labels, layer="features.pool3")
    for fn in (gradcam, guided_gradcam):
        with pytest.raises(ConfigError, match="bilinear"):
            fn(model, x, labels, upsample="cubic")
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 26 * 26, 3))
    with pytest.raises(ConfigError, match="gradcam_layer"):
        gradcam(plain, x, 0)
    assert hooked_modules(model) == []
