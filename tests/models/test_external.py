"""User models: factories with checkpoints and TorchScript files become checked Classifiers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import user_models
from safetensors.torch import save_file
from torch import nn

from trustmap.errors import CheckpointError, ModelError
from trustmap.models import (
    Classifier,
    Normalize,
    UserClassifier,
    build,
    check_fits,
    from_factory,
    load_members,
    load_torchscript,
    load_weights,
    user_classifier,
)

# torch 2.13 deprecates torch.jit: scripting and saving the tests' TorchScript files warns.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")

FACTORY = "user_models:SmallCNN"
SIZE = (20, 24)  # neither 28x28 nor square


def trained(seed: int = 0, num_classes: int = 3, in_channels: int = 3,
            **options: object) -> user_models.SmallCNN:
    """A SmallCNN with random weights and BatchNorm statistics that are not the defaults."""
    torch.manual_seed(seed)
    model = user_models.SmallCNN(num_classes, in_channels, **options)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, in_channels, *SIZE) * 3)
    return model.eval()


def images(n: int = 4, channels: int = 3, size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.rand(n, channels, *size, generator=torch.Generator().manual_seed(1))


def members(tmp_path: Path, paths: list[Path], **overrides: object) -> list[UserClassifier]:
    arguments: dict[str, object] = {"factory": FACTORY, "checkpoints": paths, "num_classes": 3,
                                    "in_channels": 3, "image_size": SIZE}
    return load_members(**{**arguments, **overrides})


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture
def saved(tmp_path: Path) -> tuple[list[nn.Module], list[Path]]:
    """Three trained SmallCNNs, saved as safetensors, a torch.save'd state dict and a dict
    holding the state dict under 'state_dict'."""
    models = [trained(seed) for seed in range(3)]
    paths = [tmp_path / "m0.safetensors", tmp_path / "m1.pt", tmp_path / "m2.pth"]
    save_file(state(models[0]), str(paths[0]))
    torch.save(state(models[1]), paths[1])
    torch.save({"state_dict": state(models[2]), "epoch": 3}, paths[2])
    return models, paths


# --- factory + checkpoints -------------------------------------------------------------------

def test_factory_and_checkpoints_give_the_original_logits(tmp_path, saved):
    models, paths = saved
    loaded = members(tmp_path, paths)
    assert len(loaded) == 3
    x = images()
    for member, original, path in zip(loaded, models, paths, strict=True):
        assert isinstance(member, Classifier)
        assert not member.training
        assert all(p.device.type == "cpu" for p in member.parameters())
        assert member.name == "SmallCNN"
        assert (member.in_channels, member.num_classes) == (3, 3)
        assert member.input_size == SIZE
        with torch.no_grad():
            assert torch.equal(member(x), original(x))  # (x - 0) / 1 is exact
        assert member.build_args["source"] == f"factory:{FACTORY}"
        assert member.build_args["checkpoint"] == str(path)
        assert member.build_args["mean"] == [0.0] * 3
        assert member.build_args["std"] == [1.0] * 3


def test_members_cannot_be_rebuilt_as_zoo_models(tmp_path, saved):
    """training.load_member rebuilds with build(**build_args): a user member must be refused,
    even under a zoo model's name."""
    _, paths = saved
    for name in (None, "lenet"):
        (member,) = members(tmp_path, paths[:1], name=name)
        with pytest.raises(ModelError):
            build(**member.build_args)


def test_loading_leaves_the_global_random_state_alone(tmp_path, saved):
    _, paths = saved
    torch.manual_seed(5)
    before = torch.get_rng_state()
    members(tmp_path, paths, factory="user_models:random_in_init")
    assert torch.equal(torch.get_rng_state(), before)


def test_the_factory_gets_only_the_arguments_it_takes():
    model = from_factory("user_models:without_arguments", 3, 3)
    assert user_models.received["without_arguments"] == {}
    assert isinstance(model, user_models.SmallCNN)
    from_factory("user_models:with_kwargs", 4, 2)
    assert user_models.received["with_kwargs"] == {"num_classes": 4, "in_channels": 2}
    model = from_factory("user_models:ten_classes", 3, 2)
    assert model.fc.out_features == 10


def test_a_checkpoint_of_another_shape_names_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "m0.safetensors"
    save_file(state(trained(width=8)), str(path))
    with pytest.raises(CheckpointError) as error:
        members(tmp_path, [path])
    message = str(error.value)
    assert str(path) in message
    assert "block1.0.weight is [8, 3, 3, 3] in the file but [16, 3, 3, 3]" in message
    assert f"the model built by {FACTORY}" in message


def test_missing_and_unexpected_keys_are_checkpoint_errors(tmp_path):
    weights = state(trained())
    fewer = tmp_path / "fewer.safetensors"
    save_file({k: v for k, v in weights.items() if k != "fc.bias"}, str(fewer))
    with pytest.raises(CheckpointError, match=r"'fc\.bias' that the file lacks"):
        members(tmp_path, [fewer])
    more = tmp_path / "more.pt"
    torch.save({**weights, "extra.weight": torch.zeros(2)}, more)
    with pytest.raises(CheckpointError, match=r"the file has 'extra\.weight'"):
        members(tmp_path, [more])
    parallel = tmp_path / "parallel.pt"
    torch.save({f"module.{k}": v for k, v in weights.items()}, parallel)
    with pytest.raises(CheckpointError, match="DataParallel"):
        members(tmp_path, [parallel])


def test_unreadable_checkpoints_are_checkpoint_errors_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04 broken zip")
    pickled = tmp_path / "pickled.pt"
    torch.save(trained(), pickled)  # a whole module: weights_only=True refuses it
    listed = tmp_path / "listed.pt"
    torch.save([torch.zeros(1)], listed)
    wrong = tmp_path / "weights.bin"
    wrong.write_bytes(b"")
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    cases = [(garbage, "safetensors"), (damaged, "torch.load"), (pickled, "more than tensors"),
             (listed, "not a state dict"), (wrong, ".safetensors, .pt, .pth"),
             (tmp_path / "absent.safetensors", "missing"), (folder, "not a regular file")]
    for path, what in cases:
        with pytest.raises(CheckpointError, match=what) as error:
            load_weights(user_models.SmallCNN(3, 3), path)
        assert str(path) in str(error.value)
        assert "\x1b" not in str(error.value)  # no terminal colour codes from torch


def test_nan_weights_are_refused(tmp_path):
    weights = state(trained())
    weights["fc.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=r"NaN or inf weights \(in 'fc\.weight'\)"):
        load_weights(user_models.SmallCNN(3, 3), path)


def test_missing_checkpoint_files_are_found_before_any_model_is_built(tmp_path, saved):
    _, paths = saved
    with pytest.raises(CheckpointError, match="absent.pt is missing"):
        members(tmp_path, [paths[0], tmp_path / "absent.pt"], factory="user_models:nowhere")


# --- factory errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("reference", "expected"), [
    ("no_such_module_xyz:make", r"no module named 'no_such_module_xyz'.*PYTHONPATH"),
    ("user_models:SmallCN", r"no attribute 'SmallCN' \(did you mean 'SmallCNN'\?\).*SmallCNN"),
    ("user_models:not_a_module", "returned a dict, not a torch.nn.Module"),
    ("user_models:failing", "raised RuntimeError: out of coffee"),
    ("user_models:NOT_CALLABLE", "not a callable"),
    ("user_models.SmallCNN", "not of the form 'package.module:callable'"),
    ("user_models:", "not of the form"),
    ("a:b:c", "not of the form"),
])
def test_factory_errors_say_what_to_do(reference, expected):
    with pytest.raises(ModelError, match=expected):
        from_factory(reference, 3, 3)


def test_a_module_that_fails_to_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "needs_missing.py").write_text("import missing_dependency_xyz\n")
    (tmp_path / "raises_on_import.py").write_text("raise ValueError('bad config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match="imports 'missing_dependency_xyz'.*install"):
        from_factory("needs_missing:make", 3, 3)
    with pytest.raises(ModelError, match="raised ValueError: bad config"):
        from_factory("raises_on_import:make", 3, 3)


def test_a_factory_alone_or_no_model_is_refused(tmp_path, saved):
    _, paths = saved
    with pytest.raises(ModelError, match="without checkpoints.*untrained"):
        members(tmp_path, [])
    with pytest.raises(ModelError, match="not both"):
        members(tmp_path, paths, torchscript=paths[0])
    with pytest.raises(ModelError, match="give the model"):
        members(tmp_path, paths, factory=None)
    with pytest.raises(ModelError, match="given twice"):
        members(tmp_path, [paths[0], paths[0]])


# --- fitting the data ------------------------------------------------------------------------

def test_a_model_that_does_not_take_the_data_is_a_model_error():
    wrapped = user_classifier(user_models.FixedNet(), name="fixed", num_classes=10,
                              in_channels=1)
    check_fits(wrapped, (1, 28, 28), 10)
    with pytest.raises(ModelError, match=r"does not take images \[N, 1, 32, 32\] of the data"):
        check_fits(wrapped, (1, 32, 32), 10)
    with pytest.raises(ModelError, match=r"\[N, 1, H, W\]"):  # the wrapper checks channels
        check_fits(wrapped, (3, 28, 28), 10)


def test_the_wrong_number_of_classes_is_a_model_error(tmp_path):
    path = tmp_path / "ten.safetensors"
    save_file(state(user_models.SmallCNN(10, 3)), str(path))
    with pytest.raises(ModelError, match=r"returns \[2, 10\] for 2 images.*3 classes"):
        members(tmp_path, [path], factory="user_models:ten_classes")


def test_non_finite_logits_are_a_model_error():
    wrapped = user_classifier(user_models.NaNNet(3), name="nan", num_classes=3, in_channels=1)
    with pytest.raises(ModelError, match="NaN or inf logits"):
        check_fits(wrapped, (1, 8, 8), 3)


def test_check_fits_puts_the_mode_back():
    wrapped = user_classifier(user_models.SmallCNN(3, 1), name="small", num_classes=3,
                              in_channels=1).train()
    check_fits(wrapped, (1, 9, 9), 3)
    assert wrapped.training


# --- the wrapper -----------------------------------------------------------------------------

def test_normalisation_is_applied_when_given(tmp_path, saved):
    models, paths = saved
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    (member,) = members(tmp_path, paths[:1], mean=mean, std=std)
    assert isinstance(next(member.children()), Normalize)
    x = images()
    expected = models[0]((x - torch.tensor(mean).view(1, 3, 1, 1))
                         / torch.tensor(std).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.allclose(member(x), expected, atol=1e-6)
    assert (member.build_args["mean"], member.build_args["std"]) == (mean, std)
    with pytest.raises(ModelError, match="std"):
        members(tmp_path, paths[:1], std=[0.5, 0.5])


def test_gradcam_layer_is_found_or_named(tmp_path, saved):
    _, paths = saved
    (member,) = members(tmp_path, paths[:1])
    assert member.gradcam_layer == "features.block2"  # the last conv block
    assert member.supports_hooks
    (member,) = members(tmp_path, paths[:1], gradcam_layer="block1")
    assert member.gradcam_layer == "features.block1"
    assert isinstance(dict(member.named_modules())[member.gradcam_layer], nn.Sequential)
    with pytest.raises(ModelError, match=r"no layer 'block3'.*did you mean 'block2'"):
        members(tmp_path, paths[:1], gradcam_layer="block3")
    with pytest.raises(ModelError, match="'fc' gives no spatial maps.*'block2'"):
        members(tmp_path, paths[:1], gradcam_layer="fc")


def test_gradcam_and_ensembles_run_on_user_members(tmp_path, saved):
    from trustmap.explain.cam import gradcam
    from trustmap.predictive import Ensemble

    _, paths = saved
    loaded = members(tmp_path, paths)
    x = images(2)
    maps = gradcam(loaded[0], x, 1)
    assert maps.shape == x.shape
    assert torch.isfinite(maps).all()
    prediction = Ensemble(loaded).predict(x)
    assert prediction.sample_logits.shape == (3, 2, 3)


def test_dropout_is_seen():
    wrapped = user_classifier(user_models.SmallCNN(3, 1, dropout=0.5), name="drop",
                              num_classes=3, in_channels=1)
    assert wrapped.has_dropout
    plain = user_classifier(user_models.SmallCNN(3, 1), name="plain", num_classes=3,
                            in_channels=1)
    assert not plain.has_dropout


def test_a_model_without_spatial_maps_has_no_gradcam_layer():
    wrapped = user_classifier(user_models.FixedNet(), name="fixed", num_classes=10,
                              in_channels=1)
    assert wrapped.gradcam_layer is None


def test_bad_wrapper_arguments_are_model_errors():
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        user_classifier("model", name="x", num_classes=3, in_channels=1)
    with pytest.raises(ModelError, match="num_classes"):
        user_classifier(user_models.SmallCNN(), name="x", num_classes=1, in_channels=1)
    with pytest.raises(ModelError, match="image_size"):
        user_classifier(user_models.SmallCNN(), name="x", num_classes=3, in_channels=1,
                        image_size=[28])


# --- TorchScript -----------------------------------------------------------------------------


def test_torchscript_members_give_the_original_logits(tmp_path):
    models = [trained(0), trained(1)]
    scripted, traced = tmp_path / "scripted.pt", tmp_path / "traced.pt"
    torch.jit.save(torch.jit.script(models[0]), str(scripted))
    torch.jit.save(torch.jit.trace(models[1], images(2)), str(traced))
    loaded = load_members(torchscript=[scripted, traced], num_classes=3, in_channels=3,
                          image_size=SIZE)
    x = images()
    for member, original in zip(loaded, models, strict=True):
        with torch.no_grad():
            assert torch.allclose(member(x), original(x), atol=1e-6)
        assert member.gradcam_layer is None  # hooks do not run inside TorchScript
        assert not member.supports_hooks
        assert member.build_args["source"] == "torchscript"
        with pytest.raises(ModelError):
            build(**member.build_args)
    assert [m.name for m in loaded] == ["scripted", "traced"]
    (single,) = load_members(torchscript=str(scripted), num_classes=3, in_channels=3,
                             image_size=SIZE, name="mine")
    assert single.name == "mine"


def test_torchscript_errors(tmp_path, saved):
    _, paths = saved
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(trained()), str(scripted))
    common = {"num_classes": 3, "in_channels": 3, "image_size": SIZE}
    with pytest.raises(ModelError, match="TorchScript: forward hooks"):
        load_members(torchscript=scripted, gradcam_layer="block2", **common)
    with pytest.raises(ModelError, match="carries its own weights"):
        load_members(torchscript=scripted, checkpoints=paths[:1], **common)
    with pytest.raises(ModelError, match=r"returns \[2, 3\].*4 classes"):
        load_members(torchscript=scripted, **{**common, "num_classes": 4})
    with pytest.raises(CheckpointError, match="cannot be loaded") as error:
        load_torchscript(paths[1])  # a state dict, not TorchScript
    assert str(paths[1]) in str(error.value)
    with pytest.raises(CheckpointError, match="missing"):
        load_torchscript(tmp_path / "absent.pt")
    exported = tmp_path / "model.pt2"
    exported.write_bytes(b"")
    with pytest.raises(CheckpointError, match="torch.export"):
        load_torchscript(exported)
