"""Seeds 000 and 001 inside ``trustmap run``: what the members' maps say, and whether to trust them.

Seed 000 asked whether the disagreement of an ensemble's Grad-CAM maps flags inputs the model
should not be trusted on; seed 001 averaged guided-backprop maps into class saliency maps with a
standard error. Here both run on the run's own ensemble: explanation-disagreement measures are
scored next to entropy and mutual information (so the OOD table answers seed 000's question), and
the report shows the maps, class saliency maps, and how faithful (region perturbation) and how
model-dependent (parameter randomisation) each method's maps are.
"""

from __future__ import annotations

import functools
from typing import Any

import pandas as pd
import torch
from torch import nn

from trustmap.data import Dataset
from trustmap.evaluate.faithfulness import PerturbationCurve, aopc_table, region_perturbation
from trustmap.evaluate.sanity import parameter_randomisation, weighted_layers
from trustmap.explain import disagreement
from trustmap.explain.aggregate import (
    attribute_samples,
    class_saliency,
    rank_disagreement,
    summarize,
)
from trustmap.explain.methods import MethodRef, get
from trustmap.explain.reduce import reduce
from trustmap.predictive import Prediction, Predictive, make_predictive
from trustmap.report.results import SANITY_COLUMNS, ExplanationResults, SetId
from trustmap.studies.base import RunContext, TensorCache, data_key
from trustmap.studies.settings import RunSettings


def explanation_scores(cache: TensorCache, measures: list[str], members: list[nn.Module],
                       dataset: Dataset, predictions: dict[str, Prediction],
                       config: RunSettings) -> dict[str, dict[str, torch.Tensor]]:
    """Scores [N] of the selected explanation measures, for each explained predictive.

    The maps of every sample are computed once per (predictive, method), for the class the
    predictive predicts, and fed to every measure that reads that method; only the scores are
    cached (the maps of a whole set would be hundreds of megabytes).
    """
    grouped = disagreement.by_method([m for m in measures if disagreement.is_measure(m)])
    out: dict[str, dict[str, torch.Tensor]] = {}
    data = data_key(dataset)
    for kind in config.explained_kinds:
        predictive = make_predictive(kind, members, config.predictives.mc_samples, config.seed)
        out[kind] = {}
        for method, names in grouped.items():
            key = {**data, "explained": kind, "method": method, "measures": names,
                   "mc_samples": config.predictives.mc_samples, "seed": config.seed,
                   "batch_size": config.batch_size}  # MC dropout's masks follow the batches
            found = cache.get(key, functools.partial(
                _disagreement, method, names, predictive, dataset.images, predictions[kind],
                config.batch_size))
            # in the measures' order: a cache file gives its tensors back sorted by name
            out[kind].update({name: found[name] for name in names})
    return out


def _disagreement(method: str, names: list[str], predictive: Predictive, images: torch.Tensor,
                  prediction: Prediction, batch_size: int) -> dict[str, torch.Tensor]:
    """The measures ``names`` of ``method``'s sample maps, ``batch_size`` inputs at a time: a
    set's maps [S, N, C, H, W] are never held at once (5 members x 1,000 RGB 224x224 images
    would be 3 GB per method), and each input's score depends on its own maps only."""
    parts = [disagreement.compute({method: attribute_samples(method, predictive, x, target)},
                                  names)
             for x, target in zip(images.split(batch_size),
                                  prediction.predicted.split(batch_size), strict=True)]
    return {name: torch.cat([part[name] for part in parts]) for name in names}


def _examples(sets: dict[str, Dataset], per_set: int, explained: str
              ) -> tuple[torch.Tensor, list[str]]:
    """A few inputs of the ID set, of every OOD set, and of the strongest attack: the largest
    epsilon, against the explained predictive where there is one, iterative over FGSM."""
    identities = {name: SetId.parse(name) for name in sets}
    attacks = [i for i in identities.values() if i.role == "adversarial"]

    def strength(identity: SetId) -> tuple[float, bool, bool]:
        return identity.epsilon, identity.attacked == explained, identity.attack != "fgsm"

    strongest = max(attacks, key=strength, default=None)
    chosen = [n for n, i in identities.items() if i.role in ("id", "ood")]
    chosen += [str(strongest)] if strongest else []
    images = torch.cat([sets[n].images[:per_set] for n in chosen])
    labels = [n for n in chosen for _ in range(min(per_set, len(sets[n])))]
    return images, labels


def _grid(members: list[nn.Module], sets: dict[str, Dataset], config: RunSettings
          ) -> tuple[str, torch.Tensor, list[str], dict[str, Any], dict[str, Any],
                     dict[str, list[float]]]:
    kind = config.explained_kinds[0]
    predictive = make_predictive(kind, members, config.predictives.mc_samples, config.seed)
    images, set_names = _examples(sets, config.explanations.examples, kind)
    predicted = predictive.predict(images).predicted
    classes = sets[config.data.in_distribution].classes
    labels = [f"{name} · {classes[int(c)]}" for name, c in zip(set_names, predicted, strict=True)]
    means, stds, ranks = {}, {}, {}
    for method in config.explanations.methods:
        samples = attribute_samples(method, predictive, images, predicted)
        summary = summarize(samples.sum(2, keepdim=True))  # of the channel-summed maps
        means[method], stds[method] = summary.mean[:, 0], summary.std[:, 0]
        ranks[method] = rank_disagreement(samples).tolist()
    return kind, images, labels, means, stds, ranks


def class_maps(model: nn.Module, test: Dataset, method: MethodRef, n: int
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Seed 001: per class, mean ± SEM of |channel-summed map| min-max normalised, explaining
    that class, over the first `n` inputs of every class (fewer where a class has fewer).

    Returns means and SEMs [K, H, W] (one map per class, whatever the images' channels) and the
    number of inputs per class. `method` is any method reference (``methods.resolve``).
    """
    index = [(test.labels == k).nonzero().flatten()[:n] for k in range(test.num_classes)]
    n = min(len(i) for i in index)
    chosen = torch.cat([i[:n] for i in index])
    maps = get(method)(model, test.images[chosen], test.labels[chosen])
    # channels are summed first: the reduced maps have one channel, whatever the images have
    maps = reduce(maps, ["sum_channels", "absolute", "minmax"])
    maps = maps.view(test.num_classes, n, *maps.shape[1:])
    stats = [class_saliency(maps[k], k, k) for k in range(test.num_classes)]
    return (torch.stack([s.mean[0] for s in stats]), torch.stack([s.sem[0] for s in stats]), n)


def _class_maps(model: nn.Module, test: Dataset, config: RunSettings
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    return class_maps(model, test, config.explanations.class_method, config.explanations.class_n)


def _faithfulness(model: nn.Module, test: Dataset, config: RunSettings, cache: TensorCache
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Region perturbation of each method's maps, most and least relevant first, and a random
    order as the baseline every faithful map should beat; each curve kept in the cache."""
    x = test.images[: config.explanations.faithfulness_n]
    with torch.no_grad():
        target = model(x).argmax(1)
    patch, seed = config.explanations.patch, config.seed
    data = data_key(test)

    @functools.cache
    def maps_of(method: str) -> torch.Tensor:  # MoRF and LeRF read the same maps
        return get(method)(model, x, target) if method != "random" else torch.zeros_like(x)

    def curve(method: str, order: str) -> PerturbationCurve:
        def perturb() -> dict[str, torch.Tensor]:
            maps = maps_of(method)
            found = region_perturbation(model, x, maps, target, patch=patch, order=order,
                                        seed=seed)
            return {"logits": found.logits, "probs": found.probs, "predicted": found.predicted}

        made = cache.get({**data, "first": len(x), "faithfulness": method, "order": order,
                          "patch": patch, "seed": seed}, perturb)
        return PerturbationCurve(order, patch, made["logits"], made["probs"], made["predicted"])

    curves: dict[str, list[PerturbationCurve]] = {
        method: [curve(method, order) for order in ("morf", "lerf")]
        for method in config.explanations.methods}
    curves["random"] = [curve("random", "random")]
    frames = []
    for method, method_curves in curves.items():
        for found in method_curves:
            probs = found.probs
            sem = (probs.std(0, correction=1) / len(x) ** 0.5 if len(x) > 1
                   else torch.full_like(probs[0], float("nan")))
            frames.append(pd.DataFrame({"method": method, "order": found.order,
                                        "step": range(probs.shape[1]), "mean": probs.mean(0),
                                        "sem": sem}))
    return pd.concat(frames, ignore_index=True), aopc_table(curves)


def _sanity(ctx: RunContext, model: nn.Module, test: Dataset, config: RunSettings
            ) -> pd.DataFrame:
    """The parameter-randomisation check of every method; left out, with a note, for a model
    whose layers cannot be reached (TorchScript), where nothing could be randomised."""
    x = test.images[: config.explanations.sanity_n]
    if not weighted_layers(model, x):
        ctx.log("the parameter-randomisation check left out: the first member exposes no "
                "Linear or Conv2d layer to randomise (TorchScript hides them)")
        return pd.DataFrame(columns=list(SANITY_COLUMNS))
    with torch.no_grad():
        target = model(x).argmax(1)
    frames = [parameter_randomisation(model, x, target, get(method), seed=config.seed)
              .assign(method=method) for method in config.explanations.methods]
    return pd.concat(frames, ignore_index=True)[["method", "step", "layer", "similarity", "sem"]]


def explanation_results(ctx: RunContext, members: list[nn.Module], sets: dict[str, Dataset],
                        measures: list[str], cache: TensorCache) -> ExplanationResults:
    """Everything the report's explanation section shows."""
    config = ctx.settings
    test = sets[config.data.in_distribution]
    model = members[0]
    ctx.log(f"explaining examples with {', '.join(config.explanations.methods)}")
    with ctx.timed("explanations: maps of examples"):
        kind, images, labels, means, stds, rank = _grid(members, sets, config)
    ctx.log(f"class saliency maps ({config.explanations.class_method}), region perturbation "
            "and the parameter-randomisation check on the first member")
    with ctx.timed("explanations: class saliency"):
        class_means, class_sems, n = _class_maps(model, test, config)
    with ctx.timed("explanations: faithfulness"):
        perturbation, aopc = _faithfulness(model, test, config, cache)
    with ctx.timed("explanations: sanity"):
        sanity = _sanity(ctx, model, test, config)
    return ExplanationResults(
        predictive=kind, measures=[m for m in measures if disagreement.is_measure(m)],
        methods=list(config.explanations.methods), examples=images,
        example_labels=labels, mean_maps=means, std_maps=stds, disagreement=rank,
        class_method=config.explanations.class_method, class_names=list(test.classes),
        class_means=class_means, class_sems=class_sems, class_n=n,
        perturbation=perturbation, aopc=aopc, sanity=sanity)
