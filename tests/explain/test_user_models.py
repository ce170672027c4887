"""Any user nn.Module on RGB images of any size: methods that need module structure refuse models
without it (instead of silently returning the plain gradient), Captum's methods plug in wherever
a method name does, and nothing assumes one channel or 28x28."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Saliency,
)
from explain_support import assert_same, assert_untouched, state
from torch import nn

from trustmap.data import Dataset
from trustmap.errors import ConfigError, ModelError
from trustmap.explain import disagreement, structure
from trustmap.explain.aggregate import (
    attribute_samples,
    cosine_disagreement,
    rank_disagreement,
    summarize,
)
from trustmap.explain.cam import guided_gradcam, layer_gradcam
from trustmap.explain.composites import lrp
from trustmap.explain.gradient import deconvnet, gradient, guided_backprop
from trustmap.explain.maximize import maximize_activation
from trustmap.explain.methods import attribute, get, name_of, resolve, single_pass
from trustmap.explain.reduce import reduce
from trustmap.models import build
from trustmap.predictive import Ensemble, MCDropout

pytestmark = [pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning"),
              pytest.mark.filterwarnings("ignore:Input Tensor 0 did not:UserWarning"),
              pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")]


class Net(nn.Module):
    """A small RGB CNN with BatchNorm; ``functional`` applies its relus with F.relu."""

    def __init__(self, functional: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(8 * 16, 5)

    def act(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x) if self.functional else module(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.act(self.relu1, self.bn1(self.conv1(x))), 2)
        x = self.pool(self.act(self.relu2, self.bn2(self.conv2(x))))
        return self.fc(self.drop(x.flatten(1)))


def net(seed: int = 0, functional: bool = False, dropout: float = 0.0) -> Net:
    """A seeded Net in eval mode, with BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    model = Net(functional, dropout)
    for norm in (model.bn1, model.bn2):
        norm.running_mean.uniform_(-0.2, 0.2)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def twins() -> tuple[Net, Net]:
    """The same weights, relus as functions and as nn.ReLU modules."""
    return net(functional=True), net(functional=False)


@pytest.fixture(scope="module")
def rgb() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 32, 32, generator=generator), torch.tensor([0, 3, 1, 4])


# --- guided backprop, deconvnet, guided Grad-CAM ----------------------------------------------


def test_functional_relus_are_refused_and_module_relus_equal_captum(rgb):
    x, t = rgb
    functional, modules = twins()
    # the silent failure being prevented: Captum's guided backprop is the plain gradient there
    assert_same(GuidedBackprop(functional).attribute(x, t), gradient(functional, x, t))
    before = state(functional)
    for method in (guided_backprop, deconvnet):
        with pytest.raises(ModelError, match=r"applies relu as a function in 1 place.*F\.relu "
                                             r"in the forward of Net \(2 calls\).*nn\.ReLU"):
            method(functional, x, t)
    with pytest.raises(ModelError, match="guided Grad-CAM.*relu as a function"):
        guided_gradcam(functional, x, t, layer="conv2")
    assert_untouched(functional, before)

    guided = guided_backprop(modules, x, t)
    assert_same(guided, GuidedBackprop(modules).attribute(x, t))
    assert_same(deconvnet(modules, x, t), Deconvolution(modules).attribute(x, t))
    assert_same(guided_gradcam(modules, x, t, layer="conv2"),
                GuidedGradCam(modules, modules.conv2).attribute(x, t))
    assert not torch.allclose(guided, gradient(modules, x, t))


class Clamped(nn.Module):
    """nn.ReLU modules, plus a relu written as clamp(min=0) (or an image clamp that is none)."""

    def __init__(self, relu_clamp: bool) -> None:
        super().__init__()
        self.relu_clamp = relu_clamp
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x.clamp(0, 1)))  # bounds the image: not a relu
        x = x.mean((2, 3))
        return self.fc(x.clamp(min=0) if self.relu_clamp else x)


def test_relus_in_any_spelling_are_found_and_image_clamps_are_not(rgb):
    x, t = rgb[0], torch.tensor([0, 1, 0, 1])
    torch.manual_seed(0)
    guided_backprop(Clamped(relu_clamp=False), x, t)
    with pytest.raises(ModelError, match=r"Tensor\.clamp in the forward of Clamped"):
        guided_backprop(Clamped(relu_clamp=True), x, t)
    gelu = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    gelu(x)  # materialise the lazy layer
    with pytest.raises(ModelError, match="calls no nn.ReLU module"):
        deconvnet(gelu, x, t)


def test_torchscript_is_refused(rgb):
    x, t = rgb
    modules = net()
    scripted = torch.jit.trace(modules, x[:1])
    for method in (guided_backprop, lrp):
        with pytest.raises(ModelError, match="model Net: it is TorchScript"):
            method(scripted, x, t)
    assert_same(gradient(scripted, x, t), gradient(modules, x, t))  # gradients need no hooks
    wrapped = nn.Sequential(nn.Identity(), torch.jit.trace(modules, x[:1]))
    with pytest.raises(ModelError, match=r"contains TorchScript modules \('1'\)"):
        guided_backprop(wrapped, x, t)


# --- LRP --------------------------------------------------------------------------------------


class FunctionalLinear(nn.Module):
    """Weights held as parameters, applied with F.conv2d and F.linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.weight = nn.Parameter(torch.randn(2, 4) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.conv.weight, self.conv.bias)
        return F.linear(F.relu(x).mean((2, 3)), self.weight)


def test_lrp_refuses_linear_maps_outside_its_layers(rgb):
    x, t = rgb[0], torch.tensor([0, 1, 0, 1])
    torch.manual_seed(0)
    with pytest.raises(ModelError, match=r"LRP cannot explain .*2 place\(s\): F\.conv2d in the "
                                         r"forward of FunctionalLinear .*F\.linear"):
        lrp(FunctionalLinear(), x, t)
    up = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.ConvTranspose2d(2, 2, 3), nn.Flatten(),
                       nn.Linear(2 * 32 * 32, 2)).eval()
    with pytest.raises(ModelError, match=r"F\.conv_transpose2d in module '2' \(ConvTranspose2d"):
        lrp(up, x, t, composite="epsilon")


def test_lrp_takes_functional_activations(rgb):
    x, t = rgb
    functional, modules = twins()
    for composite in ("epsilon-plus", "epsilon-gamma-box"):
        maps = lrp(functional, x, t, composite=composite)
        torch.testing.assert_close(maps, lrp(modules, x, t, composite=composite))
        assert maps.abs().sum() > 0


def test_the_audit_runs_once_per_model_and_leaves_no_trace(rgb, monkeypatch):
    x, t = rgb
    model = net(dropout=0.5).train()  # BatchNorm in training mode, dropout sampling
    runs = []
    original = structure._forward_pass
    monkeypatch.setattr(structure, "_forward_pass",
                        lambda *args: runs.append(1) or original(*args))
    buffers = [b.clone() for b in model.buffers()]
    rng = torch.random.get_rng_state()
    found = structure.audit(model, x)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert found.relu_modules == 2 and not found.functional_relu and not found.functional_linear
    guided_backprop(model, x, t)
    deconvnet(model, x, t)
    assert len(runs) == 1
    model.relu2 = nn.ReLU()  # a changed model is audited again
    guided_backprop(model, x, t)
    assert len(runs) == 2


def test_guided_gradcam_explains_one_stochastic_forward_under_mc_dropout(rgb):
    x, t = rgb
    model = net(dropout=0.5)
    model.drop.train()
    torch.manual_seed(7)
    ours = guided_gradcam(model, x, t, layer="conv2")
    torch.manual_seed(7)
    cam = F.interpolate(layer_gradcam(model, x, t, layer="conv2"), size=x.shape[-2:],
                        mode="nearest")
    torch.manual_seed(7)  # the same masks again: both factors explain one forward
    assert_same(ours, guided_backprop(model, x, t) * cam)


# --- Captum methods ---------------------------------------------------------------------------


def test_captum_class_instance_and_name_give_captums_output(rgb):
    x, t = rgb
    first, other = net(0), net(1)
    expected = Saliency(other).attribute(x, target=t)
    before = state(other)
    instance = Saliency(first)
    for reference in (Saliency, instance, "captum:Saliency"):
        assert name_of(reference) == "captum:Saliency"
        torch.testing.assert_close(attribute(reference, other, x, t), expected, rtol=0, atol=0)
    assert instance.forward_func is first  # rebinding copied it
    torch.testing.assert_close(get(instance)(first, x, 2), Saliency(first).attribute(x, 2))
    ig = attribute("captum:IntegratedGradients", other, x, t, n_steps=5)
    torch.testing.assert_close(ig, IntegratedGradients(other).attribute(x, target=t, n_steps=5))
    assert_untouched(other, before)


def test_captum_instances_are_rebound_with_their_layers_and_inner_methods(rgb):
    x, t = rgb
    first, other = net(0), net(1)
    cam = get(GuidedGradCam(first, first.conv2))(other, x, t)
    torch.testing.assert_close(cam, GuidedGradCam(other, other.conv2).attribute(x, t))
    options = {"nt_type": "smoothgrad", "nt_samples": 3, "stdevs": 0.1}
    torch.manual_seed(3)
    noisy = get(NoiseTunnel(Saliency(first)))(other, x, t, **options)
    torch.manual_seed(3)
    torch.testing.assert_close(noisy, NoiseTunnel(Saliency(other)).attribute(x, target=t,
                                                                              **options))
    with pytest.raises(ModelError, match="relu as a function"):  # Captum's too: not silently
        get(GuidedBackprop)(net(functional=True), x, t)


def test_bad_method_references_say_what_to_do(rgb):
    x, t = rgb
    with pytest.raises(ConfigError, match="did you mean 'captum:Saliency'"):
        resolve("captum:Salency")
    with pytest.raises(ConfigError, match="layer attribution"):
        resolve(LayerGradCam)
    with pytest.raises(ConfigError, match="needs layer.*instance"):
        resolve("captum:GuidedGradCam")
    with pytest.raises(ConfigError, match="'captum:Name'"):
        resolve("salency")
    with pytest.raises(ConfigError, match="a callable"):
        resolve(42)
    model = net()
    wrapped = Saliency(lambda inputs: model(inputs))
    with pytest.raises(ConfigError, match="cannot rebind"):
        get(wrapped)(net(1), x, t)
    assert resolve("gradient") == ("gradient", gradient)
    assert name_of(gradient) == "gradient" and name_of(rgb_saliency) == "rgb_saliency"
    assert single_pass("captum:Saliency") and not single_pass(IntegratedGradients)
    assert not single_pass("smoothgrad") and single_pass(rgb_saliency)


def rgb_saliency(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A user's method: any callable with the method signature."""
    return gradient(model, x, target).abs()


def test_ensemble_maps_summaries_and_disagreement_of_custom_methods(rgb):
    x, t = rgb
    members = [net(seed) for seed in range(3)]
    ensemble = Ensemble(members)
    own = torch.stack([Saliency(m).attribute(x, target=t) for m in members])
    for reference in ("captum:Saliency", Saliency, Saliency(members[0])):
        samples = attribute_samples(reference, ensemble, x, t)
        torch.testing.assert_close(samples, own)
    summary = summarize(samples)
    torch.testing.assert_close(summary.mean, own.mean(0))
    torch.testing.assert_close(summary.std, own.std(0, correction=0))

    measures = disagreement.measures_for("captum:Saliency")
    assert list(measures) == ["captum_Saliency_rank_disagreement",
                              "captum_Saliency_cosine_disagreement"]
    assert disagreement.measure("captum_Saliency_rank_disagreement") == \
        measures["captum_Saliency_rank_disagreement"]
    assert disagreement.is_measure("lrp_epsilon_cosine_disagreement")
    assert not disagreement.is_measure("entropy")
    scores = disagreement.compute({"captum:Saliency": samples}, list(measures))
    torch.testing.assert_close(scores["captum_Saliency_rank_disagreement"],
                               rank_disagreement(own))
    torch.testing.assert_close(scores["captum_Saliency_cosine_disagreement"],
                               cosine_disagreement(own))
    assert bool((scores["captum_Saliency_rank_disagreement"] > 0).all())

    custom = disagreement.measures_for(rgb_saliency)
    rank = custom["rgb_saliency_rank_disagreement"]
    assert rank.method == "rgb_saliency" and rank.source is rgb_saliency
    maps = attribute_samples(rank.source, ensemble, x, t)
    found = disagreement.compute({rank.method: maps}, custom.values())
    torch.testing.assert_close(found[rank.name], rank_disagreement(own.abs()))


def test_multi_pass_captum_methods_are_refused_under_mc_dropout(rgb):
    x, t = rgb
    sampling = MCDropout(net(dropout=0.5), samples=2)
    assert attribute_samples("captum:Saliency", sampling, x, t).shape == (2, *x.shape)
    with pytest.raises(ConfigError, match="captum:IntegratedGradients.*several forward"):
        attribute_samples(IntegratedGradients, sampling, x, t)


# --- nothing assumes one channel or 28x28 -----------------------------------------------------


def test_class_saliency_of_rgb_images(rgb):
    from trustmap.studies.ensemble_saliency import class_maps

    generator = torch.Generator().manual_seed(2)
    images = torch.rand(10, 3, 12, 20, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    test = Dataset("rgb", "test", images, labels, ("a", "b", "c"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    means, sems, n = class_maps(model, test, "guided-backprop", 5)
    assert n == 3 and means.shape == sems.shape == (3, 12, 20)
    chosen = (labels == 2).nonzero().flatten()[:3]
    maps = reduce(guided_backprop(model, images[chosen], 2), ["sum_channels", "absolute",
                                                              "minmax"])
    torch.testing.assert_close(means[2], maps.mean(0)[0])
    torch.testing.assert_close(sems[2], maps.std(0)[0] / 3 ** 0.5)


def test_activation_maximisation_takes_the_models_channels():
    torch.manual_seed(0)
    model = build("lenet", in_channels=3).eval()
    assert maximize_activation(model, units=[1, 2], steps=2).shape == (2, 3, 28, 28)
    with pytest.raises(ConfigError, match="shape="):
        maximize_activation(net(), units=1, steps=1)
    assert maximize_activation(net(), units=1, steps=1, shape=(3, 16, 24)).shape == (1, 3, 16, 24)
