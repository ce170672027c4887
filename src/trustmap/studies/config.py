"""The configuration of ``trustmap run``: defaults that need no file, and a validated TOML file.

Every section is a dataclass; a key that is not a field, or a value of the wrong type or
outside its allowed set, raises a ConfigError that names it and lists what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trustmap.errors import ConfigError, did_you_mean

ALL_OOD = ("fashion-mnist", "letters", "natural-patches", "noise-uniform", "noise-gaussian")


@dataclass(frozen=True)
class DataConfig:
    in_distribution: str = "mnist-embedded"
    ood: tuple[str, ...] = ALL_OOD
    """OOD sets; official ones that are not on this machine are skipped with a note."""
    max_per_set: int = 1000
    """At most this many test images per set (the first ones, so the choice is fixed)."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet"
    members: int = 5
    dropout: float = 0.25
    """Seed 000's lenet has none; 0.25 before the dense layers makes MC dropout possible."""
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    augment: tuple[str, ...] = ("shift",)
    val_fraction: float = 0.1


@dataclass(frozen=True)
class PredictiveConfig:
    kinds: tuple[str, ...] = ("single", "ensemble", "mc-dropout", "ensemble-mc")
    mc_samples: int = 10


@dataclass(frozen=True)
class MeasureConfig:
    names: tuple[str, ...] = ()
    """Empty means every registered measure."""


@dataclass(frozen=True)
class AdversarialConfig:
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    epsilons: tuple[float, ...] = (0.1, 0.2)
    attacked: tuple[str, ...] = ("single", "ensemble")
    """Whose gradients make the attack: the single model, the ensemble mean, or the
    MC-dropout mean (``mc-dropout``, sampling ``predictives.mc_samples`` masks per step)."""
    n: int = 500
    steps: int = 10


@dataclass(frozen=True)
class ExplanationConfig:
    methods: tuple[str, ...] = ("gradient", "gradcam", "guided-backprop", "lrp-epsilon-plus")
    """Methods of the report's map grid, faithfulness curves and sanity check."""
    predictives: tuple[str, ...] = ("ensemble",)
    """Predictives whose samples' maps are compared, where the run has them: the explanation-
    disagreement measures are scored under these only (each costs S maps per input per method:
    adding "mc-dropout" adds about 2 minutes to the default run); the report shows the first
    one's maps."""
    examples: int = 2
    """Example inputs per test set in the grid of maps."""
    class_method: str = "guided-backprop"
    """Method of the class saliency maps (seed 001: guided backprop, |.|, min-max per map)."""
    class_n: int = 100
    """Inputs per class averaged into a class saliency map."""
    faithfulness_n: int = 200
    """ID test inputs for region perturbation (patches removed most/least relevant first)."""
    patch: int = 4
    sanity_n: int = 32
    """ID test inputs for the cascading parameter-randomisation check."""


@dataclass(frozen=True)
class LatentMapConfig:
    resolution: int = 20
    """Grid points per axis of the VAE's latent plane (seed 003's map, small); 0 turns it off."""
    bound: float = 10.0
    vae_epochs: int = 10


@dataclass(frozen=True)
class InfluenceMapConfig:
    images: int = 1000
    """ID test images projected for seed 004's influence maps; 0 turns them off."""
    alpha: float = 0.05


@dataclass(frozen=True)
class RunConfig:
    name: str = "default"
    seed: int = 0
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    predictives: PredictiveConfig = field(default_factory=PredictiveConfig)
    measures: MeasureConfig = field(default_factory=MeasureConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    explanations: ExplanationConfig = field(default_factory=ExplanationConfig)
    latent: LatentMapConfig = field(default_factory=LatentMapConfig)
    influence: InfluenceMapConfig = field(default_factory=InfluenceMapConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _convert(where: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type; tuples come from TOML arrays."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, e.g. {where.split('.')[-1]} = [...]; "
                              f"got {value!r}")
        return tuple(_convert(f"{where}[{i}]", v, item_type) for i, v in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"[{where}] must be a table (a TOML section), got {value!r}")
        return _build(annotation, value, where)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be of type {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            hint = did_you_mean(key, fields)
            section = f"[{where}]" if where else "the top level"
            raise ConfigError(f"unknown key {path!r}{hint}; {section} allows: {', '.join(fields)}")
        kwargs[key] = _convert(path, value, hints[key])
    return cls(**kwargs)


def parse_config(values: dict[str, Any]) -> RunConfig:
    """A RunConfig from a dict as read from TOML; types are checked, names are not yet."""
    return _build(RunConfig, values)


def load_config(path: Path | str) -> RunConfig:
    """Read and check a TOML config file."""
    path = Path(path)
    try:
        values = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    try:
        return parse_config(values)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _allowed(where: str, values: tuple[str, ...], allowed: list[str] | tuple[str, ...]) -> None:
    for value in values:
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not allowed{did_you_mean(value, allowed)}; "
                              f"choose from {', '.join(allowed)}")


def explained_kinds(config: RunConfig) -> list[str]:
    """The predictives whose samples' maps are compared: the run's, in the explanations order.

    The first one's maps are the ones the report shows.
    """
    return [k for k in config.explanations.predictives if k in config.predictives.kinds]


def validate(config: RunConfig) -> RunConfig:
    """Check names against the registries and numbers against their ranges."""
    import trustmap.explain.aggregate  # noqa: F401  (registers the explanation measures)
    from trustmap.data.catalog import REGISTRY as DATASETS
    from trustmap.evaluate.adversarial import ATTACKS
    from trustmap.explain.methods import SINGLE_PASS
    from trustmap.explain.methods import names as method_names
    from trustmap.models import names as model_names
    from trustmap.predictive import PREDICTIVES
    from trustmap.training import AUGMENTATIONS, OPTIMIZERS
    from trustmap.uncertainty import names as measure_names

    _allowed("data.in_distribution", (config.data.in_distribution,), list(DATASETS))
    _allowed("data.ood", config.data.ood, list(DATASETS))
    _allowed("model.name", (config.model.name,), model_names())
    _allowed("model.optimizer", (config.model.optimizer,), list(OPTIMIZERS))
    _allowed("model.augment", config.model.augment, AUGMENTATIONS)
    _allowed("predictives.kinds", config.predictives.kinds, PREDICTIVES)
    _allowed("measures.names", config.measures.names, measure_names())
    _allowed("adversarial.attacks", config.adversarial.attacks, list(ATTACKS))
    _allowed("adversarial.attacked", config.adversarial.attacked,
             ("single", "ensemble", "mc-dropout"))
    explanations = config.explanations
    _allowed("explanations.methods", explanations.methods, method_names())
    _allowed("explanations.class_method", (explanations.class_method,), method_names())
    _allowed("explanations.predictives", explanations.predictives, PREDICTIVES)
    kinds = explained_kinds(config)
    if not kinds:
        raise ConfigError("explanations.predictives names none of predictives.kinds; name at "
                          "least one predictive the run has (its samples' maps are compared)")
    if kinds[0] in ("mc-dropout", "ensemble-mc"):
        _allowed(f"explanations.methods (shown for {kinds[0]}, where every pass draws new "
                 "dropout masks)", explanations.methods, sorted(SINGLE_PASS))
    checks = [
        ("data.max_per_set", config.data.max_per_set >= 1, ">= 1"),
        ("model.members", config.model.members >= 1, ">= 1"),
        ("model.epochs", config.model.epochs >= 1, ">= 1"),
        ("model.dropout", 0 <= config.model.dropout < 1, "in [0, 1)"),
        ("model.val_fraction", 0 < config.model.val_fraction < 1,
         "in (0, 1): temperature scaling needs a validation split"),
        ("predictives.mc_samples", config.predictives.mc_samples >= 2, ">= 2"),
        ("adversarial.n", config.adversarial.n >= 1, ">= 1"),
        ("adversarial.steps", config.adversarial.steps >= 1, ">= 1"),
        ("adversarial.epsilons", all(0 < e <= 1 for e in config.adversarial.epsilons),
         "each in (0, 1] (images are in [0, 1])"),
        ("explanations.examples", explanations.examples >= 1, ">= 1"),
        ("explanations.class_n", explanations.class_n >= 2, ">= 2 (a standard error needs two)"),
        ("explanations.faithfulness_n", explanations.faithfulness_n >= 1, ">= 1"),
        ("explanations.patch", 1 <= explanations.patch <= 28 and 28 % explanations.patch == 0,
         "a divisor of 28 (1, 2, 4, 7, 14 or 28)"),
        ("explanations.sanity_n", explanations.sanity_n >= 2, ">= 2"),
        ("latent.resolution", config.latent.resolution == 0 or config.latent.resolution >= 2,
         "0 (no latent map) or >= 2"),
        ("latent.bound", config.latent.bound > 0, "> 0"),
        ("latent.vae_epochs", config.latent.vae_epochs >= 1, ">= 1"),
        ("influence.images", config.influence.images == 0 or config.influence.images >= 2,
         "0 (no influence maps) or >= 2"),
        ("influence.alpha", 0 < config.influence.alpha < 0.5, "in (0, 0.5)"),
    ]
    for where, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{where} must be {rule}")
    missing = [a for a in config.adversarial.attacked if a not in config.predictives.kinds]
    if missing:
        raise ConfigError(f"adversarial.attacked names {missing[0]!r}, which is not in "
                          "predictives.kinds; an attack's success is judged by the predictive "
                          "it attacked, so add it there")
    if config.data.in_distribution in config.data.ood:
        raise ConfigError(f"data.ood must not contain the in-distribution set "
                          f"{config.data.in_distribution!r}")
    if config.model.dropout == 0 and {"mc-dropout", "ensemble-mc"} & set(config.predictives.kinds):
        raise ConfigError("predictives.kinds asks for MC dropout but model.dropout is 0; "
                          "set model.dropout > 0 or remove mc-dropout and ensemble-mc")
    return config
