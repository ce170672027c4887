"""What a run hands to the report: tables and arrays, nothing the report must compute again.

The study (``trustmap.studies``) fills a ``RunResults``; ``trustmap.report`` only draws and
writes it. Keeping this a plain container of DataFrames makes the report testable with
hand-made tables, and makes ``metrics.json`` and ``per_sample.parquet`` straight dumps of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from trustmap.per_sample import KEY_COLUMNS, PREDICTION_COLUMNS


@dataclass(frozen=True)
class SetId:
    """Which test set a row or a score belongs to, and in what role.

    The ID test set and OOD sets are named by their dataset; an adversarial set by its attack,
    radius and the predictive whose gradients made it; ``noise`` is the same-norm noise control
    of an adversarial set. ``str()`` is the name used in tables and files (``adv:pgd:0.1:single``,
    ``noise:pgd:0.1:single``); ``parse`` reads it back. Nothing else builds or splits names.
    """

    role: str
    """"id", "ood", "adversarial" or "noise"."""
    dataset: str = ""
    attack: str = ""
    epsilon: float = 0.0
    attacked: str = ""

    ROLES = ("id", "ood", "adversarial", "noise")
    PREFIXES = {"adversarial": "adv", "noise": "noise"}

    def __str__(self) -> str:
        if self.role in self.PREFIXES:
            return f"{self.PREFIXES[self.role]}:{self.attack}:{self.epsilon:g}:{self.attacked}"
        return self.dataset

    @classmethod
    def parse(cls, name: str, in_distribution: str = "") -> SetId:
        """The identity of a set named ``name`` (an OOD set unless it is ``in_distribution``)."""
        for role, prefix in cls.PREFIXES.items():
            if name.startswith(prefix + ":"):
                _, attack, epsilon, attacked = name.split(":")
                return cls(role, attack=attack, epsilon=float(epsilon), attacked=attacked)
        return cls("id" if name == in_distribution else "ood", dataset=name)

    @property
    def noise(self) -> SetId:
        """The same-norm noise control of this adversarial set."""
        return SetId("noise", attack=self.attack, epsilon=self.epsilon, attacked=self.attacked)


# Column sets of each table; the study produces exactly these and the report reads them.
PER_SAMPLE_COLUMNS = KEY_COLUMNS + PREDICTION_COLUMNS
"""One row per input and predictive (``trustmap.per_sample``); ``per_sample`` also has ``p_<class>``
per class of the model and a column per measure."""
OOD_COLUMNS = ("ood_set", "predictive", "measure", "auroc", "aupr_in", "aupr_out", "fpr95")
MISCLASSIFICATION_COLUMNS = ("predictive", "measure", "auroc", "aupr_in", "aupr_out", "fpr95")
CALIBRATION_COLUMNS = ("predictive", "stage", "temperature", "accuracy", "nll", "brier", "ece",
                       "mce")
RELIABILITY_COLUMNS = ("predictive", "stage", "bin_lower", "bin_upper", "confidence", "accuracy",
                       "count")
ADVERSARIAL_COLUMNS = ("attack", "epsilon", "attacked", "success_rate", "negatives", "subset",
                       "predictive", "measure", "auroc")
"""``attacked``: the predictive the gradients came from; ``negatives``: "clean" or "noise" (clean
plus noise of the perturbation's L2 norm); ``subset``: "all" attempts or "successful" only."""


PERTURBATION_COLUMNS = ("method", "order", "step", "mean", "sem")
"""Mean probability of the explained class after ``step`` patches were removed, over inputs."""
AOPC_COLUMNS = ("method", "order", "patch", "steps", "n", "aopc", "aopc_sem", "flips_to_change")
"""``trustmap.evaluate.faithfulness.aopc_table``: mean AOPC of the explained class's probability."""
SANITY_COLUMNS = ("method", "step", "layer", "similarity", "sem")
"""Spearman correlation with the original maps after the top ``step`` layers were randomised."""


@dataclass
class ExplanationResults:
    """The explanation section: maps of a predictive's samples, and how good the maps are."""

    predictive: str
    """Whose samples' maps the grid shows (e.g. the ensemble's members)."""
    measures: list[str]
    """The explanation-disagreement measures among ``RunResults.measures``."""
    methods: list[str]
    examples: torch.Tensor
    """[E, C, H, W] example inputs: some of every test set."""
    example_labels: list[str]
    mean_maps: dict[str, torch.Tensor]
    """Method -> [E, H, W] mean over samples of the channel-summed maps."""
    std_maps: dict[str, torch.Tensor]
    """Method -> [E, H, W] std over samples (population) of the channel-summed maps."""
    disagreement: dict[str, list[float]]
    """Method -> rank disagreement of each example."""
    class_method: str
    class_names: list[str]
    class_means: torch.Tensor
    """[K, H, W] class saliency maps (mean over inputs of one class, explaining that class)."""
    class_sems: torch.Tensor
    """[K, H, W] their standard errors per pixel."""
    class_n: int
    perturbation: pd.DataFrame
    aopc: pd.DataFrame
    sanity: pd.DataFrame


@dataclass
class RunResults:
    """Everything one ``trustmap run`` measured, ready to render."""

    header: dict[str, Any]
    """What was run: command, config, datasets with provenance, seed, versions, seconds."""
    in_distribution: str
    """Name of the ID test set, one of ``per_sample.set``."""
    predictives: list[str]
    measures: dict[str, str]
    """Measure name -> one-line definition, in display order."""
    per_sample: pd.DataFrame
    ood: pd.DataFrame
    misclassification: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    adversarial: pd.DataFrame
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    """Dataset name -> float32 [N, C, H, W] images in ``per_sample`` row order (by ``index``)."""
    explanations: ExplanationResults | None = None
    near_ood: list[str] = field(default_factory=list)
    """OOD sets near the ID set; the others are far (the detector tables group by it)."""
    detectors: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Feature detectors per OOD set, for each member and their mean."""
    conformal: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Coverage and set size of the conformal prediction sets, per set, predictive, method
    and alpha."""
    conformal_by_class: pd.DataFrame = field(default_factory=pd.DataFrame)
    selective: pd.DataFrame = field(default_factory=pd.DataFrame)
    """AURC of every score under every predictive, the oracle's beside it."""
    combined: pd.DataFrame = field(default_factory=pd.DataFrame)
    """The combined trust scores against the best single score, leave-one-OOD-set-out."""
    notes: list[str] = field(default_factory=list)
    """What the run left out and why (e.g. a detector a model cannot feed)."""


ACCURACY_COLUMNS = ("architecture", "dataset", "parameters", "epochs", "val_accuracy",
                    "accuracy", "train_seconds")
"""One row per architecture trained on one sequence dataset; ``accuracy`` on its test split."""
REGION_COLUMNS = ("architecture", "method", "n", "share", "sem", "share_pixels")
"""Mean share of positive relevance in the data region (chance = ``RecurrentResults.chance``)
summed per step, its standard error, and the same share computed per pixel."""
STEP_COLUMNS = ("architecture", "method", "step", "share")
"""Mean share of positive relevance at each step (1..T) of samples whose odd item is in the
last block, so the profile has a known ideal: the first two thirds of the steps."""
RECURRENT_AOPC_COLUMNS = ("architecture", "method", "order", "n", "aopc", "aopc_sem",
                          "flips_to_change")
"""AOPC of 4x4-patch region perturbation (most relevant first, or a random order) and the
mean number of 7x7 flips until the prediction changes."""
RECURRENT_CURVE_COLUMNS = ("architecture", "method", "order", "step", "mean")
"""Mean probability of the explained class after ``step`` 4x4 patches were removed."""


@dataclass
class RecurrentResults:
    """Seed 002's study on one sequence dataset: which method explains which architecture."""

    header: dict[str, Any]
    """What was run: command, config, dataset with provenance, versions, seconds."""
    dataset: str
    architectures: list[str]
    methods: list[str]
    accuracy: pd.DataFrame
    region: pd.DataFrame
    steps: pd.DataFrame
    aopc: pd.DataFrame
    curves: pd.DataFrame
    examples: torch.Tensor
    """[E, 1, 28, 84] example inputs (the same for every architecture and method)."""
    example_labels: list[str]
    example_masks: torch.Tensor
    """[E, 1, 28, 84] bool: each example's data region."""
    maps: dict[tuple[str, str], torch.Tensor]
    """(architecture, method) -> [E, 1, 28, 84] signed maps of the examples."""
    chance: float = 2 / 3
    speed: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Maps per second of each architecture and method (columns architecture, method,
    maps_per_second)."""


LATENT_SHARE_COLUMNS = ("architecture", "predictive", "measure", "threshold", "share",
                        "share_near", "share_far", "points_near", "points_far")
"""Share of the latent grid scoring below ``threshold`` (the ID test set's median of the
measure under that predictive): everywhere, inside the encoded data's convex hull (near) and
outside it (far). Seed 003's finding is a large ``share_far``: confident far from the data."""
MIDPOINT_COLUMNS = ("architecture", "predictive", "measure", "path", "pairs", "mean", "median")
"""Scores at the midpoints of interpolations between pairs of different classes, along the
straight line in pixel space (``path`` "pixel") or the line between latent codes ("latent")."""


@dataclass
class LatentResults:
    """Seed 003's latent-space maps: where in a VAE's 2-D latent space a classifier is unsure."""

    header: dict[str, Any]
    dataset: str
    classes: list[str]
    architectures: list[str]
    predictives: list[str]
    """Every predictive scored; an architecture without dropout has no MC-dropout entries."""
    measures: list[str]
    resolution: int
    bound: float
    """The grid spans z in [-bound, bound]^2, row-major: z0 along columns, z1 along rows
    (``trustmap.evaluate.latent.LatentGrid``)."""
    codes: torch.Tensor
    """[M, 2] the encoded test set drawn on every map."""
    code_labels: torch.Tensor
    """[M] their labels (the colours)."""
    grid_images: torch.Tensor
    """[R*R, C, 28, 28] the decoded grid, the same under every architecture (the mosaic)."""
    near: torch.Tensor
    """[R*R] bool: grid points inside the encoded data's convex hull."""
    maps: dict[tuple[str, str, str], torch.Tensor]
    """(architecture, predictive, measure) -> [R*R] scores of the decoded grid."""
    predicted: dict[tuple[str, str], torch.Tensor]
    """(architecture, predictive) -> [R*R] the class each decoded grid image is given."""
    confident: dict[tuple[str, str], torch.Tensor]
    """(architecture, predictive) -> indices of the lowest-entropy grid points far from the
    data, most confident first (what the model is sure about where there is no data)."""
    shares: pd.DataFrame
    midpoints: pd.DataFrame
    midpoint_scores: dict[tuple[str, str, str, str], torch.Tensor]
    """(architecture, predictive, measure, path) -> [pairs] midpoint scores (histograms)."""
    path_images: dict[str, torch.Tensor]
    """path ("pixel" or "latent") -> [P, steps, C, 28, 28] a few example interpolations."""
    path_scores: dict[tuple[str, str, str, str], torch.Tensor]
    """(architecture, predictive, measure, path) -> [P, steps] their scores along the path."""
    path_labels: list[tuple[str, str]]
    """The class names of each example pair's two ends."""


PROJECTION_KEYS = ("pixels", "constant_pixels", "pairs", "pairs_at_bound", "pairs_not_converged",
                   "pixels_not_converged", "max_iterations")
"""``trustmap.explain.influence.Projection.summary()``: what the solver settled and how."""


@dataclass
class InfluenceResults:
    """Seed 004's entropic-projection maps of one ensemble on one grayscale test set.

    Every map is a change between the projections at tau = +1 and tau = -1: how much the
    weighted mean moves when the test set is reweighted so that the pixel's mean goes from its
    low side (the ``alpha`` quantile) to its high side (``1 - alpha``).
    """

    header: dict[str, Any]
    """Shown at the top: data, architecture, members, images, alpha, taus, tolerance, ..."""
    classes: list[str]
    mean_image: torch.Tensor
    """[H, W] the test set's mean image (the background of the curves' pixel markers)."""
    influence: torch.Tensor
    """[K, H, W] change of the ensemble's mean probability of each class (ethik's maps)."""
    member_std: torch.Tensor
    """[K, H, W] sample std over members of each member's influence map."""
    performance: dict[str, torch.Tensor]
    """metric name ("accuracy", "log-loss") -> [H, W] change of the ensemble's metric."""
    uncertainty: dict[str, torch.Tensor]
    """measure name ("entropy", "mutual_information") -> [H, W] change of its mean."""
    constant: torch.Tensor
    """[H, W] bool: pixels constant over the test set (no tilt, every map 0 there)."""
    not_converged: torch.Tensor
    """[H, W] bool: pixels whose tilt missed the tolerance at some tau."""
    projection: dict[str, int]
    """``PROJECTION_KEYS`` of the maps' projection."""
    accuracy: pd.DataFrame
    """Test accuracy: columns ``model`` ("member 0", ..., "ensemble") and ``accuracy``."""
    curve_pixels: list[tuple[int, int]]
    """(row, column) of the pixels whose curves are drawn."""
    curve_targets: torch.Tensor
    """[T, Q] each curve pixel's target mean at every tau."""
    curve_values: torch.Tensor
    """[T, Q, K] the ensemble's mean probability of each class at those targets."""
    curve_converged: torch.Tensor
    """[T, Q] bool: whether each point's tilt met the tolerance."""
    timings: pd.DataFrame
    """Columns ``step`` and ``seconds``: training, prediction, projection, each kind of map."""
    member_maps: torch.Tensor | None = None
    """[M, K, H, W] each member's influence maps (saved beside the page, not drawn)."""
