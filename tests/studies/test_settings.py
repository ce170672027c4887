"""One settings file for every command: typed tables, presets, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustmap.errors import ConfigError
from trustmap.studies.registry import STUDIES, Settings, load_settings, run_preset
from trustmap.studies.settings import merge


def test_defaults_are_valid_and_the_run_preset_shrinks_the_maps() -> None:
    settings = load_settings()
    assert settings.model.name == "lenet" and settings.model.members == 5
    assert "ensemble" in settings.predictives.kinds
    assert settings.latent.architectures == () and settings.latent.resolution == 20
    assert settings.influence.architecture == "" and settings.influence.images == 0
    alone = load_settings("latent")
    assert alone.latent.resolution == 40 and alone.data.max_per_set == 0
    assert load_settings("influence").influence.architecture == "cnn"


def test_toml_file_is_read_and_typed(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('name = "small"\nseed = 3\n[model]\nmembers = 2\nlr = 1\n'
                    '[adversarial]\nepsilons = [0.05, 0.3]\n[latent]\nresolution = 8\n')
    settings = load_settings(None, path)
    assert (settings.name, settings.seed, settings.model.members) == ("small", 3, 2)
    assert settings.model.lr == 1.0 and isinstance(settings.model.lr, float)
    assert settings.adversarial.epsilons == (0.05, 0.3)
    assert settings.data == load_settings().data  # untouched tables keep their defaults
    # the file's [latent] goes over the run's preset, key by key
    assert settings.latent.resolution == 8 and settings.latent.vae_epochs == 10


def test_every_study_reads_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.toml"
    path.write_text('seed = 2\n[data]\nin_distribution = "mnist-embedded"\n'
                    '[latent]\npairs = 7\n[influence]\nimages = 50\n[recurrent]\nepochs = 3\n')
    for name in STUDIES:
        settings = load_settings(None if name == "uncertainty" else name, path)
        assert settings.seed == 2 and settings.latent.pairs == 7
        assert settings.influence.images == 50 and settings.recurrent.epochs == 3


def test_command_line_options_go_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text("[influence]\nmembers = 3\nepochs = 2\n")
    settings = load_settings("influence", path, {"influence": {"members": 4}})
    assert (settings.influence.members, settings.influence.epochs) == (4, 2)


@pytest.mark.parametrize("values, message", [
    ({"modle": {}}, "unknown key 'modle' (did you mean 'model'?); the top level allows"),
    ({"model": {"member": 3}}, "unknown key 'model.member' (did you mean 'members'?)"),
    ({"latent": {"resolutoin": 3}}, "(did you mean 'resolution'?); [latent] allows"),
    ({"model": {"members": "3"}}, "model.members: input should be a valid integer, got '3'"),
    ({"model": {"members": True}}, "model.members: input should be a valid integer"),
    ({"model": {"members": 0}}, "model.members: input should be greater than or equal to 1"),
    ({"data": {"ood": "letters"}}, "data.ood must be a list"),
    ({"model": "lenet"}, "[model] must be a table"),
    ({"model": {"name": "lenett"}}, "did you mean 'lenet'?"),
    ({"model": {"name": "lstm"}}, "model.name: 'lstm' reads sequences, it is not an image"),
    ({"data": {"ood": ["leters"]}}, "did you mean 'letters'?"),
    ({"predictives": {"kinds": ["bayes"]}}, "choose from single, ensemble"),
    ({"measures": {"names": ["entropyy"]}}, "did you mean 'entropy'?"),
    ({"adversarial": {"attacks": ["cw"]}}, "choose from fgsm"),
    ({"adversarial": {"epsilons": [0.0]}}, "adversarial.epsilons must be each in (0, 1]"),
    ({"model": {"dropout": 0.0}}, "model.dropout is 0"),
    ({"model": {"dropout": 1.5}}, "model.dropout: input should be less than 1"),
    ({"data": {"ood": ["mnist-embedded"]}}, "must not contain the in-distribution"),
    ({"adversarial": {"attacked": ["mc-dropout"]}, "predictives": {"kinds": ["ensemble"]}},
     "not in predictives.kinds"),
    ({"adversarial": {"attacked": ["bayes"]}}, "choose from single, ensemble, mc-dropout"),
    ({"explanations": {"methods": ["gradcan"]}}, "did you mean 'gradcam'?"),
    ({"explanations": {"class_method": "lrp-epsilonplus"}}, "did you mean 'lrp-epsilon-plus'?"),
    ({"explanations": {"predictives": ["ensemble-mc"]}, "predictives": {"kinds": ["ensemble"]}},
     "names none of predictives.kinds"),
    ({"explanations": {"predictives": ["mc-dropout"], "methods": ["gradient", "occlusion"]}},
     "every pass draws new dropout masks"),
    ({"explanations": {"class_n": 1}}, "explanations.class_n: input should be greater than"),
    ({"studies": ["latent"]}, "studies must include 'uncertainty'"),
    ({"detectors": {"names": ["mahalanobiss"]}}, "did you mean 'mahalanobis'?"),
    ({"detectors": {"k": 0}}, "detectors.k: input should be greater than or equal to 1"),
    ({"detectors": {"react_percentile": 101.0}}, "detectors.react_percentile: input should be"),
    ({"conformal": {"alpha": [0.1, 1.0]}}, "conformal.alpha must each lie in (0, 1)"),
    ({"conformal": {"alpha": [-0.05]}}, "conformal.alpha must each lie in (0, 1)"),
    ({"conformal": {"methods": ["apss"]}}, "did you mean 'aps'?"),
    ({"conformal": {"calibration_fraction": 1.0}}, "conformal.calibration_fraction: input"),
    ({"studies": ["uncertainty", "latnt"]}, "did you mean 'latent'?"),
])
def test_wrong_keys_types_and_values_are_named(values, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, overrides=values)
    assert message in str(info.value)


def test_explained_predictives_are_the_runs_own_in_order() -> None:
    settings = load_settings(None, overrides={
        "explanations": {"predictives": ["mc-dropout", "single"]},
        "predictives": {"kinds": ["single", "mc-dropout"]},
        "adversarial": {"attacked": ["single"]}})
    assert settings.explained_kinds == ["mc-dropout", "single"]
    settings = load_settings(None, overrides={
        "explanations": {"predictives": ["ensemble", "mc-dropout"]},
        "predictives": {"kinds": ["single", "ensemble"]}, "model": {"dropout": 0.0}})
    assert settings.explained_kinds == ["ensemble"]  # mc-dropout is not in this run: left out


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(None, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(None, tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="is not text"):
        load_settings(None, binary)
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\nmembers = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(None, broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[model]\nmembrs = 2\n")
    with pytest.raises(ConfigError, match=r"wrong.toml: unknown key 'model.membrs'"):
        load_settings(None, wrong)


def test_merge_goes_table_by_table() -> None:
    assert merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == \
        {"a": {"x": 1, "y": 3}, "b": 1}
    assert run_preset()["latent"]["resolution"] == 20
    assert Settings.model_fields.keys() >= set(STUDIES) - {"uncertainty"}
