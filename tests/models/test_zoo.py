"""The model zoo keeps the contract that training, checkpoints and attribution code rely on."""

from __future__ import annotations

import json
import math
from itertools import product
from typing import Any

import pytest
import torch
from torch import nn

from trustmap.errors import ModelError
from trustmap.models import Classifier, Normalize, build, describe, names
from trustmap.models.resnet import BasicBlock

ZOO = ["lenet", "lenet5", "cnn", "cnn1000", "alexnet", "resnet18", "resnet34"]
"""The 28x28 image models; the recurrent ones are tested in test_recurrent.py."""
RECURRENT = ["rnn-shallow", "rnn-deep", "rnn-deepv2", "rnn-convdeep", "lstm", "gru"]
DROPOUT_BY_DEFAULT = {"cnn", "cnn1000", "alexnet"}
# Narrow resnets keep the suite fast; the block layout is checked at full width on "meta".
SMALL: dict[str, dict[str, Any]] = {"resnet18": {"width": 8}, "resnet34": {"width": 4}}


def make(name: str, in_channels: int = 1, num_classes: int = 10, seed: int = 0,
         **options: Any) -> Classifier:
    torch.manual_seed(seed)
    return build(name, in_channels, num_classes, **{**SMALL.get(name, {}), **options})


def images(n: int = 2, channels: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, channels, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_names_are_the_zoo():
    assert names() == ZOO + RECURRENT


@pytest.mark.parametrize(("name", "channels", "classes"), list(product(ZOO, [1, 3], [2, 10])))
def test_maps_images_to_logits(name, channels, classes):
    model = make(name, channels, classes).eval()
    logits = model(images(2, channels))
    assert logits.shape == (2, classes)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ZOO)
def test_build_args_rebuild_the_same_model(name):
    model = make(name, 3, 5, mean=[0.1, 0.2, 0.3], std=0.25)
    args = json.loads(json.dumps(model.build_args))
    defaults = next(row.defaults for row in describe() if row.name == name)
    # input_size is recorded only where it is not the default 28x28 (see the test below).
    assert set(args) == {"name", "in_channels", "num_classes", *defaults} - {"input_size"}
    assert args["name"] == name
    assert (args["in_channels"], args["num_classes"]) == (3, 5)
    assert (args["mean"], args["std"]) == ([0.1, 0.2, 0.3], [0.25] * 3)

    twin = build(**args)
    ours, theirs = model.state_dict(), twin.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    twin.load_state_dict(ours)
    x = images(3, 3)
    assert torch.equal(model.eval()(x), twin.eval()(x))


def _gradcam_maps(model: Classifier, x: torch.Tensor) -> torch.Tensor:
    captured = []
    layer = dict(model.named_modules())[model.gradcam_layer]
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    model.eval()(x)
    handle.remove()
    (maps,) = captured
    return maps


@pytest.mark.parametrize("name", ZOO)
def test_gradcam_layer_gives_spatial_maps(name):
    maps = _gradcam_maps(make(name), images(2))
    assert maps.ndim == 4
    assert maps.shape[0] == 2
    assert maps.shape[2] > 1 and maps.shape[3] > 1


def test_lenet_gradcam_layer_is_seed_000s_last_pool():
    model = make("lenet")
    assert isinstance(dict(model.named_modules())[model.gradcam_layer], nn.MaxPool2d)
    assert _gradcam_maps(model, images(3)).shape == (3, 50, 7, 7)


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_seed_architectures():
    assert _parameters(make("lenet")) == (
        20 * 1 * 25 + 20 + 50 * 20 * 25 + 50 + 7 * 7 * 50 * 500 + 500 + 500 * 10 + 10)
    # 28 -conv3-> 26 -pool-> 13 -conv5-> 9 -pool-> 4: Keras' valid padding and floor pooling.
    assert _parameters(make("cnn1000")) == (
        32 * 1 * 9 + 32 + 64 * 32 * 25 + 64 + 4 * 4 * 64 * 1000 + 1000 + 1000 * 10 + 10)
    # 28 -conv5 (padding 2)-> 28 -pool-> 14 -conv5-> 10 -pool-> 5.
    assert _parameters(make("lenet5")) == (
        6 * 1 * 25 + 6 + 16 * 6 * 25 + 16 + 5 * 5 * 16 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10)
    # The Keras MNIST example's published summary: 1,199,882 parameters.
    assert _parameters(make("cnn")) == 1_199_882


@pytest.mark.parametrize("name", ZOO)
def test_first_module_is_the_normalisation(name):
    assert isinstance(next(make(name).children()), Normalize)


def test_normalize_computes_mean_and_std_per_channel():
    x = images(4, 3)
    mean, std = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(Normalize(mean, std, channels=3)(x), expected)
    assert torch.equal(Normalize(0.5, 0.25, channels=3)(x), (x - 0.5) / 0.25)


def test_normalisation_is_in_the_state_dict():
    state = make("lenet", 3, mean=[0.1, 0.2, 0.3]).state_dict()
    assert state["normalize.mean"].flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert state["normalize.std"].flatten().tolist() == [0.5] * 3


@pytest.mark.parametrize("name", ZOO)
def test_has_dropout_by_default_only_where_the_architecture_has_it(name):
    assert make(name).has_dropout == (name in DROPOUT_BY_DEFAULT)


@pytest.mark.parametrize("name", ZOO)
def test_a_zero_rate_leaves_no_dropout_layer(name):
    zero = {key: 0.0 for key in make(name).build_args if key.endswith("dropout")}
    assert not make(name, **zero).has_dropout


def _dropout_layers(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Dropout) for m in model.modules())


def test_dropout_option_places_a_layer_before_each_dense_layer():
    assert _dropout_layers(make("lenet", dropout=0.25)) == 2
    assert _dropout_layers(make("lenet5", dropout=0.25)) == 3
    assert _dropout_layers(make("cnn")) == 2
    assert _dropout_layers(make("cnn", conv_dropout=0.0)) == 1
    assert _dropout_layers(make("alexnet")) == 2
    assert _dropout_layers(make("resnet18", dropout=0.1)) == 1


@pytest.mark.parametrize("name", ZOO)
def test_dropout_is_random_in_train_mode_and_off_in_eval_mode(name):
    model = make(name) if name in DROPOUT_BY_DEFAULT else make(name, dropout=0.5)
    x = images(4)
    torch.manual_seed(1)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ZOO)
def test_same_seed_gives_the_same_weights(name):
    first, again, other = make(name, seed=7), make(name, seed=7), make(name, seed=8)
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    pairs = zip(first.parameters(), other.parameters(), strict=True)
    assert not all(torch.equal(p, q) for p, q in pairs)


@pytest.mark.parametrize("name", ZOO)
def test_gradients_reach_the_input(name):
    model = make(name).eval()
    x = images(2).requires_grad_(True)
    model(x)[:, 1].sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()


@pytest.mark.parametrize("name", ZOO)
def test_relus_are_modules_that_leave_their_input_alone(name):
    relus = [m for m in make(name).modules() if isinstance(m, nn.ReLU)]
    assert relus
    assert not any(m.inplace for m in relus)


@pytest.mark.parametrize(("name", "layout"), [("resnet18", [2, 2, 2, 2]),
                                                ("resnet34", [3, 4, 6, 3])])
def test_resnet_block_layout_and_default_width(name, layout):
    with torch.device("meta"):
        model = build(name)
    stages = [getattr(model.features, f"stage{i}") for i in range(1, 5)]
    assert [sum(isinstance(b, BasicBlock) for b in stage) for stage in stages] == layout
    assert [stage[-1].conv2.out_channels for stage in stages] == [64, 128, 256, 512]
    assert model.gradcam_layer == "features.stage4"


def test_resnet_stages_halve_the_resolution():
    model = make("resnet18")
    sizes = []
    for i in range(1, 5):
        getattr(model.features, f"stage{i}").register_forward_hook(
            lambda module, inputs, output: sizes.append(output.shape[-1]))
    model.eval()(images(1))
    assert sizes == [28, 14, 7, 4]


def test_describe_lists_every_model_with_its_facts():
    rows = describe()
    assert [row.name for row in rows] == ZOO + RECURRENT
    by_name = {row.name: row for row in rows}
    for name in ("lenet", "lenet5", "cnn", "cnn1000", "alexnet"):
        model = make(name)
        assert by_name[name].parameters == _parameters(model)
        assert by_name[name].gradcam_layer == model.gradcam_layer
        assert by_name[name].has_dropout == model.has_dropout
    assert by_name["resnet18"].defaults["width"] == 64
    assert all(row.description and "\n" not in row.description for row in rows)
    # Three input channels add 2 x 20 x 25 weights to lenet's first convolution.
    lenet3 = next(row for row in describe(in_channels=3) if row.name == "lenet")
    assert lenet3.parameters == by_name["lenet"].parameters + 2 * 20 * 25


def test_unknown_name_suggests_a_close_one_and_lists_all():
    with pytest.raises(ModelError, match="did you mean 'lenet'") as error:
        build("lenett")
    assert all(name in str(error.value) for name in ZOO)
    with pytest.raises(ModelError, match="did you mean 'resnet18'"):
        build("ResNet18")
    with pytest.raises(ModelError, match="known models"):
        build(None)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(ModelError, match="did you mean 'dropout'") as error:
        build("lenet", dropuot=0.1)
    assert "dropout, mean, std" in str(error.value)
    with pytest.raises(ModelError, match="conv_dropout"):
        build("cnn", pool_dropout=0.1)
    with pytest.raises(ModelError, match="'width'"):
        build("lenet", width=8)


@pytest.mark.parametrize(("name", "arguments", "named"), [
    ("lenet", {"in_channels": 0}, "in_channels"),
    ("lenet", {"in_channels": 1.0}, "in_channels"),
    ("lenet", {"num_classes": 1}, "num_classes"),
    ("lenet", {"num_classes": True}, "num_classes"),
    ("lenet", {"dropout": 1.0}, "dropout"),
    ("lenet", {"dropout": -0.1}, "dropout"),
    ("lenet", {"dropout": math.nan}, "dropout"),
    ("lenet", {"dropout": "0.5"}, "dropout"),
    ("cnn", {"conv_dropout": 1.5}, "conv_dropout"),
    ("resnet18", {"width": 0}, "width"),
    ("resnet34", {"width": 2.5}, "width"),
    ("lenet", {"std": 0.0}, "std"),
    ("lenet", {"std": [0.5, -0.5], "in_channels": 2}, "std"),
    ("lenet", {"mean": [0.1, 0.2], "in_channels": 3}, "mean"),
    ("lenet", {"mean": "0.5"}, "mean"),
    ("lenet", {"mean": math.inf}, "mean"),
    ("lenet", {"input_size": 28}, "input_size"),
    ("lenet", {"input_size": [28]}, "input_size"),
    ("lenet", {"input_size": [28, 0]}, "input_size"),
    ("lenet", {"input_size": [28.0, 28]}, "input_size"),
    ("lenet", {"input_size": "28"}, "input_size"),
    ("cnn", {"input_size": [7, 28]}, "input_size"),
    ("resnet18", {"input_size": [28, 8]}, "input_size"),
])
def test_bad_values_raise_model_error_naming_the_argument(name, arguments, named):
    with pytest.raises(ModelError, match=named):
        build(name, **arguments)


def test_wrong_input_shape_is_a_model_error():
    model = make("lenet").eval()
    with pytest.raises(ModelError, match=r"\[N, 1, 28, 28\]"):
        model(images(2, 3))
    with pytest.raises(ModelError, match="in_channels"):
        model(images(2, 3))
    with pytest.raises(ModelError, match=r"\[N, 1, 28, 28\], got \[2, 1, 32, 32\].*"
                                         r"input_size=\[32, 32\]"):
        model(torch.rand(2, 1, 32, 32))


def test_channels_last_is_temporary_reentrant_and_exact():
    from trustmap.models import channels_last, to_channels_last

    model = make("lenet", seed=0).eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        with channels_last(model):
            conv = model.features.conv2.weight
            assert conv.is_contiguous(memory_format=torch.channels_last)
            with channels_last(model):  # nested: stays channels-last inside
                pass
            assert conv.is_contiguous(memory_format=torch.channels_last)
            fast = model(to_channels_last(x))
        assert model.features.conv2.weight.is_contiguous()  # restored on exit
        assert torch.allclose(fast, expected, atol=1e-5)
        assert torch.equal(model(x), expected)  # outside the block: bit-identical again


# --- image sizes -----------------------------------------------------------------------------

MIN_SIDE = {"lenet": 8, "lenet5": 16, "cnn": 8, "cnn1000": 18, "alexnet": 8, "resnet18": 9,
            "resnet34": 9}
"""The smallest image side per model: the Grad-CAM layer keeps maps of at least 2x2."""

SHAPES_28 = {
    "lenet": {"features.conv1.weight": [20, 1, 5, 5], "features.conv1.bias": [20],
              "features.conv2.weight": [50, 20, 5, 5], "features.conv2.bias": [50],
              "head.fc1.weight": [500, 2450], "head.fc1.bias": [500],
              "head.fc2.weight": [10, 500], "head.fc2.bias": [10]},
    "lenet5": {"features.conv1.weight": [6, 1, 5, 5], "features.conv1.bias": [6],
               "features.conv2.weight": [16, 6, 5, 5], "features.conv2.bias": [16],
               "head.fc1.weight": [120, 400], "head.fc1.bias": [120],
               "head.fc2.weight": [84, 120], "head.fc2.bias": [84],
               "head.fc3.weight": [10, 84], "head.fc3.bias": [10]},
    "cnn": {"features.conv1.weight": [32, 1, 3, 3], "features.conv1.bias": [32],
            "features.conv2.weight": [64, 32, 3, 3], "features.conv2.bias": [64],
            "head.fc1.weight": [128, 9216], "head.fc1.bias": [128],
            "head.fc2.weight": [10, 128], "head.fc2.bias": [10]},
    "cnn1000": {"features.conv1.weight": [32, 1, 3, 3], "features.conv1.bias": [32],
                "features.conv2.weight": [64, 32, 5, 5], "features.conv2.bias": [64],
                "head.fc1.weight": [1000, 1024], "head.fc1.bias": [1000],
                "head.fc2.weight": [10, 1000], "head.fc2.bias": [10]},
    "alexnet": {"features.conv1.weight": [48, 1, 5, 5], "features.conv1.bias": [48],
                "features.conv2.weight": [128, 48, 5, 5], "features.conv2.bias": [128],
                "features.conv3.weight": [192, 128, 3, 3], "features.conv3.bias": [192],
                "features.conv4.weight": [192, 192, 3, 3], "features.conv4.bias": [192],
                "features.conv5.weight": [128, 192, 3, 3], "features.conv5.bias": [128],
                "head.fc1.weight": [1024, 1152], "head.fc1.bias": [1024],
                "head.fc2.weight": [1024, 1024], "head.fc2.bias": [1024],
                "head.fc3.weight": [10, 1024], "head.fc3.bias": [10]},
}
"""Every parameter of the plain CNNs for 1x28x28 and 10 classes, as they were before models
took other sizes (``state_dict`` order; the normalisation buffers left out)."""

PARAMETERS_28 = {"lenet": 1_256_080, "lenet5": 61_706, "cnn": 1_199_882, "cnn1000": 1_086_594,
                 "alexnet": 3_170_154, "resnet18": 11_172_810, "resnet34": 21_280_970}
"""describe()'s parameter counts (1x28x28, 10 classes, default width) before sizes came."""


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()
            if not k.startswith("normalize.")}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    ours, theirs = a.state_dict(), b.state_dict()
    return list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name", ZOO)
def test_28x28_is_the_architecture_it_always_was(name):
    with torch.device("meta"):
        default = build(name)
    if name in SHAPES_28:
        assert _shapes(default) == SHAPES_28[name]
    assert {row.name: row.parameters for row in describe()}[name] == PARAMETERS_28[name]
    assert "input_size" not in default.build_args  # member JSONs and run folders unchanged
    torch.manual_seed(0)
    first = build(name)
    torch.manual_seed(0)
    explicit = build(name, input_size=[28, 28])
    assert _same_weights(first, explicit)
    assert explicit.build_args == first.build_args
    x = images(3)
    with torch.no_grad():
        assert torch.equal(first.eval()(x), explicit.eval()(x))


def _old_lenet() -> nn.Module:
    """Seed 000's LeNet as the zoo built it with its fixed 28x28 arithmetic."""
    return nn.ModuleDict({
        "conv1": nn.Conv2d(1, 20, 5, padding=2), "conv2": nn.Conv2d(20, 50, 5, padding=2),
        "fc1": nn.Linear(50 * 7 * 7, 500), "fc2": nn.Linear(500, 10)})


def _old_cnn() -> nn.Module:
    """The Keras MNIST example as the zoo built it with its fixed 28x28 arithmetic."""
    return nn.ModuleDict({
        "conv1": nn.Conv2d(1, 32, 3), "conv2": nn.Conv2d(32, 64, 3),
        "fc1": nn.Linear(64 * 12 * 12, 128), "fc2": nn.Linear(128, 10)})


@pytest.mark.parametrize(("name", "old"), [("lenet", _old_lenet), ("cnn", _old_cnn)])
def test_seed_0_gives_the_weights_of_the_fixed_size_code(name, old):
    """The same layers made in the same order from the same seed: bit-identical weights, so
    the default MNIST run's numbers cannot change."""
    torch.manual_seed(0)
    reference = old()
    torch.manual_seed(0)
    model = build(name)
    weights = {k.split(".", 1)[1]: v for k, v in model.state_dict().items()
               if not k.startswith("normalize.")}
    assert list(weights) == [k for k in reference.state_dict()]
    assert all(torch.equal(weights[k], v) for k, v in reference.state_dict().items())


@pytest.mark.parametrize("name", ZOO)
def test_any_size_from_the_minimum_up(name):
    model = make(name, 3, 4, input_size=[32, 32]).eval()
    assert model.input_size == (32, 32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert model.build_args["input_size"] == [32, 32]
    twin = build(**json.loads(json.dumps(model.build_args)))
    twin.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), twin.eval()(x))
    maps = _gradcam_maps(model, x)
    assert maps.shape[2] > 1 and maps.shape[3] > 1

    side = MIN_SIDE[name]
    assert next(row for row in describe() if row.name == name).min_input_size == (side, side)
    smallest = make(name, 1, 3, input_size=[side, side + 5]).eval()
    assert smallest.min_size == (side, side)
    x = torch.rand(2, 1, side, side + 5)
    assert smallest(x).shape == (2, 3)
    maps = _gradcam_maps(smallest, x)
    assert maps.shape[2] >= 2 and maps.shape[3] >= 2
    for too_small in ([side - 1, 64], [64, side - 1]):
        with pytest.raises(ModelError, match=rf"{name}: input_size .* at least {side}x{side}"):
            build(name, input_size=too_small)


@pytest.mark.parametrize("name", ["lenet", "lenet5", "cnn", "cnn1000", "alexnet"])
def test_dense_heads_take_exactly_their_size(name):
    model = make(name, 3, input_size=[32, 40]).eval()
    assert model.fixed_size
    with pytest.raises(ModelError, match=r"\[N, 3, 32, 40\], got \[2, 3, 28, 28\]"):
        model(images(2, 3))


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnets_pool_globally_and_take_any_size_from_9(name):
    torch.manual_seed(0)
    small = build(name, **SMALL[name])
    torch.manual_seed(0)
    large = build(name, input_size=[64, 48], **SMALL[name])
    assert _same_weights(small, large)  # nothing in a ResNet depends on the size
    assert not small.fixed_size
    small.eval()
    for size in ((9, 9), (32, 32), (40, 24)):
        assert small(torch.rand(2, 1, *size)).shape == (2, 10)
    with pytest.raises(ModelError, match=r"at least 9x9 pixels, got \[2, 1, 8, 32\]"):
        small(torch.rand(2, 1, 8, 32))
    with pytest.raises(ModelError, match=r"\[N, 1, H, W\], got \[2, 3, 28, 28\]"):
        small(images(2, 3))


def test_non_square_sizes_follow_the_arithmetic():
    model = make("cnn", input_size=[28, 84])
    # 28x84 -conv3-> 26x82 -conv3-> 24x80 -pool-> 12x40
    assert model.head.fc1.in_features == 64 * 12 * 40
    assert model.eval()(torch.rand(2, 1, 28, 84)).shape == (2, 10)
