"""Settings of every command, read one way: typed sections (pydantic), TOML files, CLI overrides.

Each TOML table is a ``Section`` model; ``trustmap run`` and every ``trustmap study`` read the
same file layout (``trustmap.studies.registry.Settings`` puts the sections together). A key
that is not a field, a value of the wrong type, or a name that no registry knows raises a
ConfigError naming the key and what is allowed. Values arrive as a TOML file would give them,
so a list is a TOML array; nothing converts types by hand.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from trustmap.errors import ConfigError, did_you_mean

S = TypeVar("S", bound=BaseModel)


class Section(BaseModel):
    """One table of the settings: frozen, strictly typed, no unknown keys, no NaN or inf (TOML
    has both, and both pass a range check such as ``lr > 0`` or ``weight_decay >= 0``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def allowed(where: str, values: Iterable[str], choices: Iterable[str]) -> None:
    """ConfigError for the first of ``values`` not among ``choices``, with a did-you-mean."""
    choices = list(choices)
    for value in values:
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not allowed{did_you_mean(value, choices)}; "
                              f"choose from {', '.join(choices)}")


def image_classifiers(where: str, values: Iterable[str]) -> None:
    """ConfigError unless every name is a zoo model that reads images (not sequences)."""
    from trustmap.models import names
    from trustmap.models.recurrent import ARCHITECTURES

    for value in values:
        if value in ARCHITECTURES:
            raise ConfigError(f"{where}: {value!r} reads sequences, it is not an image "
                              f"classifier; choose from "
                              f"{', '.join(n for n in names() if n not in ARCHITECTURES)}")
    allowed(where, values, [n for n in names() if n not in ARCHITECTURES])


def torch_device(name: str, where: str = "device") -> torch.device:
    """The device ``name`` names (cpu, cuda or cuda:N), or a ConfigError that says which to use.

    Other torch devices (meta, mps, ...) are refused: trustmap is tested on CPU and CUDA only,
    and a meta tensor holds no numbers at all.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{where} {name!r} is not a torch device; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{where} {name!r} is not supported; use cpu or cuda (cuda:N for "
                          "the N-th GPU)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{where} {name!r} was asked for but no CUDA device is "
                              "available; use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{where} {name!r}: this machine has {count} CUDA device(s), "
                              f"cuda:0 to cuda:{count - 1}; choose one of them")
    return device


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A run name: letters, digits, '.', '_' and '-', not starting with '.' (no path, no hidden
folder, no '..'), so a run is written inside the runs directory and nowhere else."""

ALL_OOD = ("fashion-mnist", "letters", "natural-patches", "noise-uniform", "noise-gaussian")
USER_OOD = ("natural-patches", "noise-uniform")
"""The OOD sets of a run on the user's own images unless it names its own: far-OOD sets that
mean something for any image classifier (the others are digit-like or clothing)."""
CONFORM = ("convert", "refuse")


def data_reference(where: str, reference: str, provided: Iterable[str] = ()) -> None:
    """ConfigError unless ``reference`` is a dataset name, one of the datasets ``provided`` in
    memory (``trustmap.audit``), or reads as a path (a path that does not exist is reported,
    with what exists, when the run loads it, before anything is written)."""
    from trustmap.data.catalog import REGISTRY
    from trustmap.data.references import is_path

    if not is_path(reference):
        allowed(where, [reference], [*REGISTRY, *provided])


class DataSettings(Section):
    in_distribution: str = "mnist-embedded"
    """A dataset name, an ImageFolder, a folder of class folders or an .npz (see README)."""
    ood: tuple[str, ...] = ALL_OOD
    """OOD sets (names or paths); official ones that are not on this machine are skipped with
    a note. A run on the user's own images defaults to ``USER_OOD``."""
    max_per_set: int = Field(1000, ge=0)
    """At most this many test images per set (the first ones, so the choice is fixed); 0: all."""
    resize: tuple[int, int] | None = None
    """[H, W] every image of a path is resized to (bilinear, antialiased); None: kept as is."""
    near_ood: tuple[str, ...] = ("fashion-mnist", "letters")
    """OOD sets that are near the in-distribution one (OpenOOD's MNIST benchmark: Fashion-MNIST
    and notMNIST); every other OOD set counts as far in the detector tables."""
    conform: str = "convert"
    """What happens to an OOD set whose channels or size differ from the in-distribution
    images: "convert" (gray to RGB by repetition, RGB to gray by ITU-R BT.601 luma, bilinear
    resize; every step recorded in the set's provenance) or "refuse" (an error)."""

    @model_validator(mode="after")
    def _known(self, info: ValidationInfo) -> DataSettings:
        provided = (info.context or {}).get("datasets", ())
        data_reference("data.in_distribution", self.in_distribution, provided)
        for reference in self.ood:
            data_reference("data.ood", reference, provided)
        allowed("data.conform", [self.conform], CONFORM)
        if self.in_distribution in self.ood:
            raise ConfigError(f"data.ood must not contain the in-distribution set "
                              f"{self.in_distribution!r}")
        if self.resize is not None and min(self.resize) < 1:
            raise ConfigError(f"data.resize must be [height, width] >= 1, got {list(self.resize)}")
        return self


class NormalizeSettings(Section):
    """The normalisation a user's model expects before its first layer, per channel."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


class ModelSettings(Section):
    """The run's ensemble: what every study explains unless it names its own models.

    A zoo model (``name``) is trained; the user's own members are given instead by
    ``factory`` + ``checkpoints`` (one member per checkpoint) or by ``torchscript`` files, and
    nothing is trained. Paths are relative to the working directory.
    """

    name: str = "lenet"
    members: int = Field(5, ge=1)
    dropout: float = Field(0.25, ge=0, lt=1)
    """Seed 000's lenet has none; 0.25 before the dense layers makes MC dropout possible."""
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: str = "adam"
    weight_decay: float = Field(0.0, ge=0)
    augment: tuple[str, ...] = ("shift",)
    val_fraction: float = Field(0.1, gt=0, lt=1)
    """A validation split is needed: temperature scaling is fitted on it."""
    factory: str | None = None
    """"package.module:callable" returning the user's nn.Module (called with num_classes and
    in_channels where it takes them); its weights come from ``checkpoints``."""
    checkpoints: tuple[str, ...] = ()
    """State dicts (.safetensors, or .pt/.pth read with weights_only=True), one per member."""
    torchscript: tuple[str, ...] = ()
    """TorchScript files, one per member (instead of factory + checkpoints)."""
    normalize: NormalizeSettings | None = None
    """mean/std the user's model expects its [0, 1] inputs normalised with; None: it takes
    [0, 1] images as they are (or normalises them itself)."""
    gradcam_layer: str | None = None
    """The layer Grad-CAM reads, by its name in the user's model (``dict(named_modules())``);
    None: the last module with a spatial output, found on a dry run."""

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, values: Any) -> Any:
        """``torchscript = "model.pt"`` is one member; a list is several."""
        if isinstance(values, Mapping) and isinstance(values.get("torchscript"), str):
            return {**values, "torchscript": (values["torchscript"],)}
        return values

    @model_validator(mode="after")
    def _known(self) -> ModelSettings:
        from trustmap.training import AUGMENTATIONS, OPTIMIZERS

        image_classifiers("model.name", [self.name])
        allowed("model.optimizer", [self.optimizer], OPTIMIZERS)
        allowed("model.augment", self.augment, AUGMENTATIONS)
        if self.torchscript and (self.factory or self.checkpoints):
            raise ConfigError("model.torchscript gives whole members; leave out model.factory "
                              "and model.checkpoints (or give those and no torchscript)")
        if self.checkpoints and not self.factory:
            raise ConfigError("model.checkpoints need model.factory = \"package.module:callable\""
                              ", the function that builds the network the weights belong to")
        if self.factory and not self.checkpoints:
            raise ConfigError(f"model.factory = {self.factory!r} builds untrained networks; "
                              "give their trained weights as model.checkpoints = [...] (one "
                              "file per member)")
        if self.factory is not None and ":" not in self.factory:
            raise ConfigError(f"model.factory = {self.factory!r} must read "
                              "\"package.module:callable\", e.g. \"mymodels:SmallCNN\"")
        return self

    @property
    def given(self) -> bool:
        """Whether the members are the user's, loaded instead of trained."""
        return bool(self.checkpoints or self.torchscript)


class PredictiveSettings(Section):
    kinds: tuple[str, ...] = Field(("single", "ensemble", "mc-dropout", "ensemble-mc"),
                                   min_length=1)
    mc_samples: int = Field(10, ge=2)
    """Dropout passes per model of ``mc-dropout`` and ``ensemble-mc``, everywhere in a run."""

    @model_validator(mode="after")
    def _known(self) -> PredictiveSettings:
        from trustmap.predictive import PREDICTIVES

        allowed("predictives.kinds", self.kinds, PREDICTIVES)
        return self


class MeasureSettings(Section):
    names: tuple[str, ...] = ()
    """Empty means every measure: of the probabilities, then of explanation disagreement. Any
    method's disagreement can be named: ``<method>_rank_disagreement``,
    ``<method>_cosine_disagreement`` (e.g. ``captum_Saliency_rank_disagreement``)."""

    @model_validator(mode="after")
    def _known(self) -> MeasureSettings:
        from trustmap.explain import disagreement

        allowed("measures.names", [n for n in self.names if not disagreement.is_measure(n)],
                all_measures())
        return self


def all_measures() -> list[str]:
    """Every score a run can rank: uncertainty measures, then explanation disagreement."""
    from trustmap import uncertainty
    from trustmap.explain import disagreement

    return [*uncertainty.names(), *disagreement.names()]


class AdversarialSettings(Section):
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    epsilons: tuple[float, ...] = (0.1, 0.2)
    """L-inf radii; images are in [0, 1]."""
    attacked: tuple[str, ...] = ("single", "ensemble")
    """Whose gradients make the attack: the single model, the ensemble mean, or the
    MC-dropout mean (``mc-dropout``, sampling ``predictives.mc_samples`` masks per step)."""
    n: int = Field(500, ge=1)
    steps: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _known(self) -> AdversarialSettings:
        from trustmap.evaluate.adversarial import ATTACKS

        allowed("adversarial.attacks", self.attacks, ATTACKS)
        allowed("adversarial.attacked", self.attacked, ("single", "ensemble", "mc-dropout"))
        if not all(0 < e <= 1 for e in self.epsilons):
            raise ConfigError("adversarial.epsilons must be each in (0, 1] (images are in "
                              f"[0, 1]), got {list(self.epsilons)}")
        return self


class ExplanationSettings(Section):
    methods: tuple[str, ...] = Field(("gradient", "gradcam", "guided-backprop",
                                      "lrp-epsilon-plus"), min_length=1)
    """Methods of the report's map grid, faithfulness curves and sanity check."""
    predictives: tuple[str, ...] = ("ensemble",)
    """Predictives whose samples' maps are compared, where the run has them: the explanation-
    disagreement measures are scored under these only (each costs S maps per input per method:
    adding "mc-dropout" adds about 2 minutes to the default run); the report shows the first
    one's maps."""
    examples: int = Field(2, ge=1)
    """Example inputs per test set in the grid of maps."""
    class_method: str = "guided-backprop"
    """Method of the class saliency maps (seed 001: guided backprop, |.|, min-max per map)."""
    class_n: int = Field(100, ge=2)
    """Inputs per class averaged into a class saliency map (a standard error needs two)."""
    faithfulness_n: int = Field(200, ge=1)
    """ID test inputs for region perturbation (patches removed most/least relevant first)."""
    patch: int = Field(4, ge=1)
    sanity_n: int = Field(32, ge=2)
    """ID test inputs for the cascading parameter-randomisation check."""

    @model_validator(mode="after")
    def _known(self) -> ExplanationSettings:
        from trustmap.explain.methods import resolve
        from trustmap.predictive import PREDICTIVES

        for where, method in [*(("explanations.methods", m) for m in self.methods),
                              ("explanations.class_method", self.class_method)]:
            try:
                resolve(method)
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
        allowed("explanations.predictives", self.predictives, PREDICTIVES)
        return self


class DetectorSettings(Section):
    """Feature-space OOD detectors, fitted per member on the features of the members' own
    training images (never on a test or OOD set) and scored as measures beside the output-space
    ones: a member's score for ``single`` and ``mc-dropout``, the mean over members for
    ``ensemble`` and ``ensemble-mc``."""

    names: tuple[str, ...] = Field(default_factory=lambda: tuple(_detector_names()))
    """Default: every registered detector (mahalanobis, relative_mahalanobis, knn, vim,
    react_energy, ddu); [] for none."""
    layer: str | None = None
    """The layer whose output are the features, by its name in ``dict(model.named_modules())``;
    None: the input of the model's last nn.Linear (vim and react_energy need that one)."""
    k: int = Field(50, ge=1)
    """KNN: the distance to the k-th nearest training feature."""
    react_percentile: float = Field(90.0, gt=0, le=100)
    """ReAct: features are clipped at this percentile of the training activations."""
    vim_dim: int | None = Field(None, ge=1)
    """ViM: dimension of the principal subspace; None: 1000 for D >= 1500, 512 for D >= 768,
    else D // 2."""

    @model_validator(mode="after")
    def _known(self) -> DetectorSettings:
        allowed("detectors.names", self.names, _detector_names())
        return self


def _detector_names() -> list[str]:
    from trustmap.evaluate.detectors import DETECTORS

    return list(DETECTORS)


class ConformalSettings(Section):
    """Split conformal prediction sets from every predictive's probabilities, calibrated on a
    seeded random share of the in-distribution test set; coverage is measured on the rest."""

    alpha: tuple[float, ...] = (0.1, 0.05)
    """Miscoverage levels: each set holds the true class with probability >= 1 - alpha."""
    methods: tuple[str, ...] = ("lac", "aps", "raps")
    calibration_fraction: float = Field(0.5, gt=0, lt=1)
    """Share of the ID test images the thresholds are calibrated on."""

    @model_validator(mode="after")
    def _known(self) -> ConformalSettings:
        from trustmap.evaluate.conformal import METHODS

        allowed("conformal.methods", self.methods, METHODS)
        bad = [a for a in self.alpha if not 0 < a < 1]
        if bad:
            raise ConfigError(f"conformal.alpha must each lie in (0, 1) (a miscoverage level, "
                              f"e.g. 0.1 for 90% coverage), got {bad[0]!r}")
        return self


class RunSettings(Section):
    """The tables every command shares; each study adds its own (``studies.registry``)."""

    name: str = "default"
    """The run's folder inside the runs directory: a plain name, never a path."""
    seed: int = Field(0, ge=0, lt=2**63)  # TOML's integers; torch takes up to 2**64 - 1
    device: str = "cpu"
    batch_size: int = Field(1024, ge=1)
    """Images per forward pass when the run predicts its sets, and per batch of the maps behind
    explanation disagreement (training batches: ``[model] batch_size``); lower it where a large
    model or large images fill the device."""
    studies: tuple[str, ...] = ("uncertainty", "latent", "influence")
    """What ``trustmap run`` computes and reports, in this order."""
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    predictives: PredictiveSettings = PredictiveSettings()
    measures: MeasureSettings = MeasureSettings()
    adversarial: AdversarialSettings = AdversarialSettings()
    explanations: ExplanationSettings = ExplanationSettings()
    detectors: DetectorSettings = DetectorSettings()
    conformal: ConformalSettings = ConformalSettings()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not RUN_NAME.fullmatch(name):
            raise ConfigError(f"name {name!r} is not a plain folder name: use letters, digits, "
                              "'.', '_' and '-' (at most 100, not starting with '.'); the run "
                              "is written to RUNS_DIR/NAME, never outside it")
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, name: str) -> str:
        return str(torch_device(name))

    @model_validator(mode="before")
    @classmethod
    def _user_defaults(cls, values: Any, info: ValidationInfo) -> Any:
        """A run on the user's own images or members computes what applies to any image
        classifier unless the file says otherwise: the uncertainty study (the latent and
        influence studies reproduce seeds on 28x28 gray digits) and far-OOD sets."""
        if not isinstance(values, Mapping):
            return values
        data, model = values.get("data", {}), values.get("model", {})
        if not isinstance(data, Mapping) or not isinstance(model, Mapping):
            return values
        from trustmap.data.references import is_path

        reference = data.get("in_distribution")
        provided = (info.context or {}).get("datasets", ())
        own_data = isinstance(reference, str) and (is_path(reference) or reference in provided)
        own_model = any(model.get(key) for key in ("checkpoints", "torchscript"))
        if not (own_data or own_model):
            return values
        values = dict(values)
        values.setdefault("studies", ("uncertainty",))
        if own_data and "ood" not in data:
            values["data"] = {**data, "ood": USER_OOD}
        return values

    @model_validator(mode="after")
    def _consistent(self) -> RunSettings:
        """Checks across tables: what one table asks of another must be there."""
        from trustmap.explain.methods import SINGLE_PASS, single_pass

        kinds = self.predictives.kinds
        if self.model.dropout == 0 and {"mc-dropout", "ensemble-mc"} & set(kinds):
            raise ConfigError("predictives.kinds asks for MC dropout but model.dropout is 0; "
                              "set model.dropout > 0 or remove mc-dropout and ensemble-mc")
        explained = self.explained_kinds
        if not explained:
            raise ConfigError("explanations.predictives names none of predictives.kinds; name "
                              "at least one predictive the run has (its samples' maps are "
                              "compared)")
        if explained[0] in ("mc-dropout", "ensemble-mc"):
            allowed(f"explanations.methods (shown for {explained[0]}, where every pass draws "
                    "new dropout masks)",
                    [m for m in self.explanations.methods if not single_pass(m)],
                    sorted(SINGLE_PASS))
        missing = [a for a in self.adversarial.attacked if a not in kinds]
        if missing:
            raise ConfigError(f"adversarial.attacked names {missing[0]!r}, which is not in "
                              "predictives.kinds; an attack's success is judged by the "
                              "predictive it attacked, so add it there")
        return self

    @property
    def measure_names(self) -> list[str]:
        """The measures the run scores: ``[measures] names``, or when empty every measure, with
        the disagreement measures of every explanation method beyond the table's (a Captum
        method gets its rank and cosine disagreement like a built-in one)."""
        if self.measures.names:
            return list(self.measures.names)
        from trustmap.explain import disagreement

        found = all_measures()
        for method in self.explanations.methods:
            found += [m for m in disagreement.measures_for(method) if m not in found]
        return found

    @property
    def explained_kinds(self) -> list[str]:
        """The predictives whose samples' maps are compared: the run's, in the explanations
        order; the first one's maps are the ones the report shows."""
        return [k for k in self.explanations.predictives if k in self.predictives.kinds]


def _format(error: ValidationError) -> str:
    """Pydantic's errors as one line each, located by dotted TOML key."""
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        kind, message = item["type"], item["msg"].removeprefix("Value error, ")
        if kind in ("tuple_type", "list_type"):
            lines.append(f"{where} must be a list, e.g. {where.split('.')[-1]} = [...]; "
                         f"got {item['input']!r}")
        elif kind in ("model_type", "dict_type"):
            lines.append(f"[{where}] must be a table (a TOML section), got {item['input']!r}")
        elif kind == "too_short":
            lines.append(f"{where} must name at least {item['ctx']['min_length']}, got none")
        elif kind == "value_error":
            lines.append(message)
        else:
            lines.append(f"{where}: {message[:1].lower()}{message[1:]}, got {item['input']!r}")
    return "; ".join(lines)


def _unknown_keys(model: type[BaseModel], values: Mapping[str, Any], where: str = "") -> None:
    """ConfigError for a key no section has, naming the nearest and every allowed key."""
    fields = list(model.model_fields)
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            section = f"[{where}]" if where else "the top level"
            raise ConfigError(f"unknown key {path!r}{did_you_mean(key, fields)}; {section} "
                              f"allows: {', '.join(fields)}")
        annotation = model.model_fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
                and isinstance(value, Mapping):
            _unknown_keys(annotation, value, path)


def _tuples(value: Any) -> Any:
    """TOML arrays as tuples: every list-valued setting is a tuple, so settings are hashable."""
    if isinstance(value, Mapping):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, table by table (a TOML file over a preset)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse(model: type[S], values: Mapping[str, Any], datasets: Iterable[str] = ()) -> S:
    """Settings of type ``model`` from TOML-like values, or a ConfigError that says what to fix;
    ``datasets`` are names of datasets given in memory, allowed wherever a dataset is named."""
    _unknown_keys(model, values)
    try:
        return model.model_validate(_tuples(values), context={"datasets": tuple(datasets)})
    except ValidationError as error:
        raise ConfigError(_format(error)) from None


MAX_CONFIG_BYTES = 1 << 20
"""A settings file is a few hundred bytes; anything over 1 MiB is not one."""


def read_toml(path: Path | str) -> dict[str, Any]:
    """The tables of a TOML file, or a ConfigError that names the file.

    Only a regular file is read (a FIFO would block forever, a device never end)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; pass a TOML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file; pass a TOML file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {path.stat().st_size:,} bytes, too large for "
                          "a settings file; pass a TOML file")
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text; pass a TOML file") from None
    except OSError as error:
        raise ConfigError(f"config file {path} cannot be read ({error.strerror or error})"
                          ) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def load(model: type[S], path: Path | str | None = None,
         preset: Mapping[str, Any] | None = None,
         overrides: Mapping[str, Any] | None = None, datasets: Iterable[str] = ()) -> S:
    """``preset``, then the TOML file at ``path``, then ``overrides`` (command-line options or
    the Python API's arguments; ``datasets`` names the datasets it gives in memory)."""
    values = merge(preset or {}, read_toml(path) if path is not None else {})
    values = merge(values, overrides or {})
    try:
        return parse(model, values, datasets)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}" if path is not None else str(error)) from None
