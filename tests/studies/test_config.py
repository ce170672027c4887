from __future__ import annotations

from pathlib import Path

import pytest

from trustmap.errors import ConfigError
from trustmap.studies.config import (
    RunConfig,
    explained_kinds,
    load_config,
    parse_config,
    validate,
)


def test_defaults_are_valid() -> None:
    config = validate(RunConfig())
    assert config.model.name == "lenet" and config.model.members == 5
    assert "ensemble" in config.predictives.kinds


def test_toml_file_is_read_and_typed(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('name = "small"\nseed = 3\n[model]\nmembers = 2\nlr = 1\n'
                    '[adversarial]\nepsilons = [0.05, 0.3]\n')
    config = load_config(path)
    assert (config.name, config.seed, config.model.members) == ("small", 3, 2)
    assert config.model.lr == 1.0 and isinstance(config.model.lr, float)
    assert config.adversarial.epsilons == (0.05, 0.3)
    assert config.data == RunConfig().data  # untouched sections keep their defaults


@pytest.mark.parametrize("values, message", [
    ({"modle": {}}, "unknown key 'modle' (did you mean 'model'?); the top level allows"),
    ({"model": {"member": 3}}, "did you mean 'members'?"),
    ({"model": {"members": "3"}}, "model.members must be of type int"),
    ({"model": {"members": True}}, "model.members must be of type int"),
    ({"data": {"ood": "letters"}}, "data.ood must be a list"),
    ({"model": "lenet"}, "[model] must be a table"),
])
def test_wrong_keys_and_types_are_named(values, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(values)
    assert message in str(info.value)


@pytest.mark.parametrize("values, message", [
    ({"model": {"name": "lenett"}}, "did you mean 'lenet'?"),
    ({"data": {"ood": ["leters"]}}, "did you mean 'letters'?"),
    ({"predictives": {"kinds": ["bayes"]}}, "choose from single, ensemble"),
    ({"measures": {"names": ["entropyy"]}}, "did you mean 'entropy'?"),
    ({"adversarial": {"attacks": ["cw"]}}, "choose from fgsm"),
    ({"adversarial": {"epsilons": [0.0]}}, "adversarial.epsilons must be each in (0, 1]"),
    ({"model": {"dropout": 0.0}}, "model.dropout is 0"),
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
    ({"explanations": {"patch": 5}}, "a divisor of 28"),
    ({"explanations": {"class_n": 1}}, "a standard error needs two"),
])
def test_wrong_values_list_what_is_allowed(values, message) -> None:
    with pytest.raises(ConfigError) as info:
        validate(parse_config(values))
    assert message in str(info.value)


def test_explained_predictives_are_the_runs_own_in_order() -> None:
    config = validate(parse_config({"explanations": {"predictives": ["mc-dropout", "single"]},
                                    "predictives": {"kinds": ["single", "mc-dropout"]},
                                    "adversarial": {"attacked": ["single"]}}))
    assert explained_kinds(config) == ["mc-dropout", "single"]
    config = validate(parse_config({"explanations": {"predictives": ["ensemble", "mc-dropout"]},
                                    "predictives": {"kinds": ["ensemble"]},
                                    "adversarial": {"attacked": ["ensemble"]}}))
    assert explained_kinds(config) == ["ensemble"]  # mc-dropout is not in this run: left out


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\nmembers = 2\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[model]\nmembrs = 2\n")
    with pytest.raises(ConfigError, match=r"wrong.toml: unknown key 'model.membrs'"):
        load_config(wrong)
