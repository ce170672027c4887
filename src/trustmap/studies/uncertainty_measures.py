"""Seeds 000 and 003 made rigorous: which uncertainty measure, under which predictive, tells
in-distribution inputs from out-of-distribution and adversarial ones — measured by AUROC.

``run(config)`` trains (or reuses) an ensemble, scores every test set under every predictive
with every measure, evaluates detection, calibration and adversarial detection, and writes
``report.html``, ``metrics.json`` and ``per_sample.parquet`` into ``runs/<name>/``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import trustmap
from trustmap.atomic import write_atomic
from trustmap.data import Dataset, load
from trustmap.errors import DataError
from trustmap.evaluate.adversarial import (
    detection_table,
    mean_log_probs,
    run_attack,
    same_norm_noise,
    success,
    success_rate,
)
from trustmap.evaluate.calibration import (
    apply_temperature,
    calibration_metrics,
    fit_temperature,
    reliability_bins,
)
from trustmap.evaluate.ood import detection_metrics, misclassification_metrics
from trustmap.explain import influence
from trustmap.predictive import Prediction, make_predictive, predict_kinds
from trustmap.report.html import write_report
from trustmap.report.results import InfluenceMap, LatentMap, RunResults
from trustmap.studies.config import RunConfig, validate
from trustmap.studies.ensemble_saliency import explanation_results, explanation_scores
from trustmap.studies.influence_maps import InfluenceConfig
from trustmap.studies.latent_maps import THRESHOLD_MEASURE, latent_plane, score_grid
from trustmap.training import RunSpec, TrainConfig, fit_ensemble, split_validation, write_json
from trustmap.uncertainty import MEASURES, compute

Log = Callable[[str], None]
INFLUENCE_METRICS = InfluenceConfig().metrics
INFLUENCE_MEASURES = InfluenceConfig().measures


def _spec(config: RunConfig) -> RunSpec:
    model = config.model
    return RunSpec(model=model.name, members=model.members, seed=config.seed,
                   train=TrainConfig(epochs=model.epochs, batch_size=model.batch_size,
                                     lr=model.lr, optimizer=model.optimizer,
                                     weight_decay=model.weight_decay, augment=model.augment),
                   val_fraction=model.val_fraction,
                   model_kwargs={"dropout": model.dropout} if model.dropout > 0 else {})


def checkpoint_dir(out: Path, config: RunConfig) -> Path:
    """Checkpoints are keyed by what defines them, so a changed config trains anew."""
    key = json.dumps({"spec": _spec(config).to_json(), "data": config.data.in_distribution},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return out / "checkpoints" / f"{config.model.name}-{digest}"


class TensorCache:
    """Tensors computed from a run's checkpoints, kept in safetensors files by content key.

    Attacks, forward passes and the maps behind explanation disagreement are the slow part of
    a run; their results depend only on the checkpoints and on the settings named in the key,
    so a second run with the same settings
    loads them instead (measures, tables and figures are always computed afresh).
    """

    def __init__(self, directory: Path, scope: str) -> None:
        self.directory = directory
        self.scope = scope
        self.hits = 0

    def get(self, key: dict[str, Any], compute: Callable[[], dict[str, torch.Tensor]]
            ) -> dict[str, torch.Tensor]:
        text = json.dumps({"scope": self.scope, **key}, sort_keys=True, default=str)
        path = self.directory / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.safetensors"
        if path.is_file():
            try:
                tensors = load_file(str(path))
                self.hits += 1
                return tensors
            except (OSError, SafetensorError):
                path.unlink(missing_ok=True)  # damaged: compute again
        tensors = {k: v.detach().cpu().clone() for k, v in compute().items()}  # no shared views
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp)))
        return tensors


def noise_of(adversarial_set: str) -> str:
    """The name of the same-norm noise control of an adversarial set ``adv:...``."""
    return "noise:" + adversarial_set.removeprefix("adv:")


def _first(dataset: Dataset, n: int) -> Dataset:
    return dataset if len(dataset) <= n else dataset.subset(
        torch.arange(n), f"first {n} of {len(dataset)}")


def _test_sets(config: RunConfig, log: Log) -> tuple[dict[str, Dataset], list[str]]:
    """The ID test set and every OOD set that is available here, each cut to max_per_set."""
    n = config.data.max_per_set
    sets = {config.data.in_distribution: _first(load(config.data.in_distribution, "test"), n)}
    skipped = []
    for name in config.data.ood:
        try:
            sets[name] = _first(load(name, "test"), n)
        except DataError as error:
            skipped.append(f"{name}: {error}")
            log(f"skipping OOD set {name}: not available here (see `trustmap data list`)")
    return sets, skipped


def _attack(forward: Callable[[torch.Tensor], torch.Tensor], attack: str, epsilon: float,
            x: torch.Tensor, y: torch.Tensor, steps: int, seed: int, log: Log, attacked: str
            ) -> dict[str, torch.Tensor]:
    """One attack and its same-norm noise control, seeded."""
    log(f"attack {attack} eps={epsilon:g} on the {attacked} model")
    torch.manual_seed(seed)  # the dropout masks of an attack on the MC-dropout mean
    generator = torch.Generator().manual_seed(seed)
    kwargs: dict[str, Any] = {} if attack == "fgsm" else {"steps": steps}
    if attack == "pgd":
        kwargs["generator"] = generator
    x_adv = run_attack(attack, forward, x, y, epsilon, **kwargs)
    return {"adversarial": x_adv, "noise": same_norm_noise(x, x_adv, generator)}


def _adversarial_sets(config: RunConfig, members: list[nn.Module], clean: Dataset,
                      cache: TensorCache, log: Log
                      ) -> tuple[dict[str, Dataset], dict[str, dict[str, Any]]]:
    """Attacked and same-norm-noise copies of the first ``n`` clean test inputs."""
    adv = config.adversarial
    x, y = clean.images[: adv.n], clean.labels[: adv.n]
    sets: dict[str, Dataset] = {}
    info: dict[str, dict[str, Any]] = {}
    for attacked in adv.attacked:
        forward = mean_log_probs(members if attacked == "ensemble" else members[:1],
                                 config.predictives.mc_samples if attacked == "mc-dropout"
                                 else 0)
        for attack in adv.attacks:
            for epsilon in adv.epsilons:
                name = f"adv:{attack}:{epsilon:g}:{attacked}"
                attack_now = functools.partial(_attack, forward, attack, epsilon, x, y,
                                               adv.steps, config.seed, log, attacked)
                made = cache.get({"set": name, "n": len(x), "steps": adv.steps,
                                  "seed": config.seed, "data": clean.provenance}, attack_now)
                x_adv, noisy = made["adversarial"], made["noise"]
                note = f"{attack} (L-inf, eps {epsilon:g}) against the {attacked} model"
                provenance = {"source": {"attacked": clean.name, "attack": note},
                              "transforms": [note]}
                sets[name] = Dataset(name, "test", x_adv.detach(), y, clean.classes, provenance)
                sets[noise_of(name)] = Dataset(
                    noise_of(name), "test", noisy, y, clean.classes,
                    {"source": provenance["source"],
                     "transforms": [note, "replaced by Gaussian noise of the same L2 norm"]})
                info[name] = {"attack": attack, "epsilon": epsilon, "attacked": attacked}
    return sets, info


def _predict(cache: TensorCache, kinds: list[str], members: list[nn.Module], dataset: Dataset,
             config: RunConfig) -> dict[str, Prediction]:
    """Every predictive's sample logits on ``dataset``, from the cache when it has them."""
    key = {"set": dataset.name, "split": dataset.split, "n": len(dataset),
           "provenance": dataset.provenance, "kinds": kinds,
           "mc_samples": config.predictives.mc_samples, "seed": config.seed,
           "checksum": float(dataset.images.double().sum())}

    def forward() -> dict[str, torch.Tensor]:
        made = predict_kinds(kinds, members, dataset.images, config.predictives.mc_samples,
                             config.seed)
        return {kind: prediction.sample_logits for kind, prediction in made.items()}

    return {kind: Prediction(logits) for kind, logits in cache.get(key, forward).items()}


def _per_sample(name: str, dataset: Dataset, predictions: dict[str, Prediction],
                scores: dict[str, dict[str, torch.Tensor]]) -> pd.DataFrame:
    columns: dict[str, Any] = {"dataset": name, "index": np.arange(len(dataset)),
                               "label": dataset.labels.numpy()}
    for kind, prediction in predictions.items():
        predicted = prediction.predicted
        columns[f"{kind}:predicted"] = predicted.numpy()
        columns[f"{kind}:confidence"] = prediction.mean_probs.gather(
            1, predicted[:, None])[:, 0].numpy()
        columns[f"{kind}:vote_ratio"] = prediction.vote_ratio.numpy()
        for measure, values in scores[kind].items():
            columns[f"{kind}:{measure}"] = values.numpy()
    return pd.DataFrame(columns)


def _ood_table(id_name: str, ood_names: list[str], kinds: list[str], measures: list[str],
               scores: dict[str, dict[str, dict[str, torch.Tensor]]]) -> pd.DataFrame:
    rows = []
    for ood in ood_names:
        for kind in kinds:
            for measure in [m for m in measures if m in scores[id_name][kind]]:
                metrics = detection_metrics(scores[id_name][kind][measure],
                                            scores[ood][kind][measure])
                rows.append({"ood_set": ood, "predictive": kind, "measure": measure, **metrics})
    return pd.DataFrame(rows)


def _misclassification_table(id_set: Dataset, kinds: list[str], measures: list[str],
                             predictions: dict[str, Prediction],
                             scores: dict[str, dict[str, torch.Tensor]]) -> pd.DataFrame:
    rows = []
    for kind in kinds:
        correct = predictions[kind].predicted == id_set.labels
        if bool(correct.all()) or not bool(correct.any()):
            continue  # no errors (or no hits): nothing to detect
        for measure in [m for m in measures if m in scores[kind]]:
            rows.append({"predictive": kind, "measure": measure,
                         **misclassification_metrics(scores[kind][measure], correct)})
    return pd.DataFrame(rows)


def _calibration(kinds: list[str], val: Dataset, test: Dataset, members: list[nn.Module],
                 config: RunConfig, test_predictions: dict[str, Prediction],
                 cache: TensorCache) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Before/after temperature scaling, one temperature per predictive fitted on validation."""
    val_predictions = _predict(cache, kinds, members, val, config)
    rows, bins = [], []
    for kind in kinds:
        log_val = val_predictions[kind].mean_probs.clamp_min(1e-30).log()
        temperature = fit_temperature(log_val, val.labels)
        before = test_predictions[kind].mean_probs
        after = apply_temperature(before.clamp_min(1e-30).log(), temperature)
        for stage, probs, t in (("before", before, 1.0), ("after", after, temperature)):
            rows.append({"predictive": kind, "stage": stage, "temperature": t,
                         **calibration_metrics(probs, test.labels)})
            table = reliability_bins(probs, test.labels)
            bins.append(table.assign(predictive=kind, stage=stage))
    return pd.DataFrame(rows), pd.concat(bins, ignore_index=True)


def _adversarial_table(info: dict[str, dict[str, Any]], clean_name: str, n: int,
                       kinds: list[str], measures: list[str], id_set: Dataset,
                       predictions: dict[str, dict[str, Prediction]],
                       scores: dict[str, dict[str, dict[str, torch.Tensor]]]) -> pd.DataFrame:
    frames = []
    labels = id_set.labels[:n]
    for name, meta in info.items():
        attacked = meta["attacked"]
        before = predictions[clean_name][attacked].predicted[:n]
        after = predictions[name][attacked].predicted
        successful = success(labels, before, after)
        rate = success_rate(labels, before, after)
        for kind in kinds:
            measures_here = [m for m in measures if m in scores[name][kind]]
            clean = {m: scores[clean_name][kind][m][:n] for m in measures_here}
            noise = {m: scores[noise_of(name)][kind][m] for m in measures_here}
            adv = {m: scores[name][kind][m] for m in measures_here}
            table = detection_table(clean, noise, adv, successful)
            frames.append(table.assign(attack=meta["attack"], epsilon=meta["epsilon"],
                                       attacked=attacked, success_rate=rate,
                                       predictive=kind))
    columns = ["attack", "epsilon", "attacked", "success_rate", "negatives", "subset",
               "predictive", "measure", "auroc"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(
        columns=columns)


def run(config: RunConfig, runs_dir: Path | str = "runs", progress: bool = True,
        log: Log = print, command: str = "trustmap run") -> Path:
    """The whole study; returns the path of ``report.html``."""
    started = time.perf_counter()
    validate(config)
    out = Path(runs_dir) / config.name
    kinds = list(config.predictives.kinds)
    measures = list(config.measures.names) or list(MEASURES)
    torch.manual_seed(config.seed)

    train = load(config.data.in_distribution, "train")
    checkpoints = checkpoint_dir(out, config)
    resumed: list[int] = []
    log(f"ensemble: {config.model.members} x {config.model.name} on {train.name} "
        f"-> {checkpoints}")
    ensemble = fit_ensemble(_spec(config), train, checkpoints, progress=progress,
                            device=config.device,
                            on_member=lambda i, r: resumed.append(i) if r is None else None)
    members = [m.cpu().eval() for m in ensemble.members]
    trained_seconds = time.perf_counter() - started

    sets, skipped = _test_sets(config, log)
    id_name = config.data.in_distribution
    cache = TensorCache(out / "cache", checkpoints.name)
    adv_sets, adv_info = _adversarial_sets(config, members, sets[id_name], cache, log)
    sets.update(adv_sets)

    log(f"scoring {sum(len(d) for d in sets.values())} inputs in {len(sets)} sets "
        f"under {', '.join(kinds)}")
    predictions = {name: _predict(cache, kinds, members, d, config)
                   for name, d in sets.items()}
    plain = [m for m in measures if MEASURES[m].attributions is None]
    scores = {name: {kind: compute(p, plain) for kind, p in by_kind.items()}
              for name, by_kind in predictions.items()}
    if len(plain) < len(measures):
        log(f"explanation disagreement under {', '.join(config.explanations.predictives)}")
        for name, dataset in sets.items():
            made = explanation_scores(cache, measures, members, dataset, predictions[name],
                                      config)
            for kind, values in made.items():
                scores[name][kind].update(values)
    explanations = explanation_results(members, sets, config, measures, log)
    latent = _latent_map(config, train, sets[id_name], members, kinds, predictions[id_name],
                         out, progress, log) if config.latent.resolution else None
    influence_maps = _influence_map(config, sets[id_name], predictions[id_name], log) \
        if config.influence.images else None

    ood_names = [n for n in sets if n != id_name and not n.startswith("noise:")]
    _, val = split_validation(train, config.model.val_fraction, config.seed)
    assert val is not None  # validate() requires val_fraction > 0
    calibration, reliability = _calibration(kinds, val, sets[id_name], members, config,
                                            predictions[id_name], cache)
    results = RunResults(
        header={},
        in_distribution=id_name,
        predictives=kinds,
        measures={m: MEASURES[m].definition for m in measures},
        per_sample=pd.concat([_per_sample(n, d, predictions[n], scores[n])
                              for n, d in sets.items()], ignore_index=True),
        ood=_ood_table(id_name, ood_names, kinds, measures, scores),
        misclassification=_misclassification_table(sets[id_name], kinds, measures,
                                                    predictions[id_name], scores[id_name]),
        calibration=calibration,
        reliability=reliability,
        adversarial=_adversarial_table(adv_info, id_name, config.adversarial.n, kinds,
                                       measures, sets[id_name], predictions, scores),
        images={name: d.images for name, d in sets.items()},
        explanations=explanations,
        latent=latent,
        influence=influence_maps,
    )
    results.header = _header(config, command, ensemble, sets, skipped, resumed,
                             trained_seconds, time.perf_counter() - started)
    results.header["cache"] = (f"{cache.hits} attack, forward-pass and explanation results "
                               f"reused from {cache.directory}" if cache.hits
                               else "nothing reused")
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "per_sample.parquet",
                 lambda tmp: results.per_sample.to_parquet(tmp, index=False))
    report = write_report(results, out)
    results.header["seconds_total"] = round(time.perf_counter() - started, 1)  # with drawing
    write_json(out / "metrics.json", _metrics(results))
    return report


def _latent_map(config: RunConfig, train: Dataset, test: Dataset, members: list[nn.Module],
                kinds: list[str], on_test: dict[str, Prediction], out: Path, progress: bool,
                log: Log) -> LatentMap:
    """Seed 003's map, small: the ensemble's uncertainty over a 2-D VAE's decoded plane."""
    settings = config.latent
    log(f"latent map: VAE on {train.name}, {settings.resolution}x{settings.resolution} grid")
    plane = latent_plane(train, test, out / "vae", settings.resolution, settings.bound,
                         settings.vae_epochs, config.seed, progress, config.device)
    predictives = {kind: make_predictive(kind, members, config.predictives.mc_samples,
                                         config.seed) for kind in kinds}
    thresholds = {kind: float(compute(on_test[kind], [THRESHOLD_MEASURE])[THRESHOLD_MEASURE]
                              .median()) for kind in kinds}
    measures = [THRESHOLD_MEASURE, "mutual_information"]
    scored = score_grid(config.model.name, plane, predictives, measures, thresholds)
    return LatentMap(architecture=config.model.name, classes=list(test.classes),
                     predictives=kinds, measures=measures, resolution=settings.resolution,
                     bound=settings.bound, codes=plane.codes, code_labels=test.labels,
                     maps=scored.maps, confident=scored.confident,
                     shares=pd.DataFrame(scored.shares))


def _influence_map(config: RunConfig, test: Dataset, on_test: dict[str, Prediction], log: Log
                   ) -> InfluenceMap:
    """Seed 004's maps, small: the ensemble (else the first predictive) on the ID test set."""
    kind = "ensemble" if "ensemble" in on_test else next(iter(on_test))
    count = min(config.influence.images, len(test))
    images, labels = test.images[:count], test.labels[:count]
    prediction = Prediction(on_test[kind].sample_logits[:, :count])
    log(f"influence maps: every pixel of {count} {test.name} test images projected ({kind})")
    projection = influence.project(images.to(prediction.sample_logits.device),
                                   alpha=config.influence.alpha)
    probabilities = prediction.mean_probs
    changes = {metric: influence.performance_map(projection, metric, labels, probabilities)
               for metric in INFLUENCE_METRICS}
    changes.update({measure: influence.uncertainty_map(projection, prediction, measure)
                    for measure in INFLUENCE_MEASURES})
    shape = images.shape[2:]
    return InfluenceMap(
        architecture=config.model.name, classes=list(test.classes), images=count,
        alpha=config.influence.alpha,
        influence=influence.influence_map(projection, probabilities)[:, 0].cpu(),
        member_std=influence.member_maps(projection, prediction.sample_probs).std[:, 0].cpu(),
        changes={name: change[0].cpu() for name, change in changes.items()},
        constant=projection.constant.reshape(shape).cpu(),
        not_converged=(~projection.converged).any(0).reshape(shape).cpu(),
        projection=projection.summary())


def _header(config: RunConfig, command: str, ensemble: Any, sets: dict[str, Dataset],
            skipped: list[str], resumed: list[int], trained_seconds: float,
            seconds: float) -> dict[str, Any]:
    member_accuracy = [m["metrics"]["val_accuracy"] for m in ensemble.member_meta]
    origin = ("reused from " + str(ensemble.directory)
              if len(resumed) == len(member_accuracy) else "trained now")
    return {
        "command": command,
        "trustmap": trustmap.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": config.seed,
        "config": config.to_dict(),
        "model": f"{config.model.members} x {config.model.name} ({origin})",
        "member validation accuracy": [round(a, 4) for a in member_accuracy],
        "datasets": {name: {"n": len(d), "provenance": d.provenance}
                     for name, d in sets.items()},
        "skipped": skipped,
        "seconds_training": round(trained_seconds, 1),
        "seconds_before_drawing": round(seconds, 1),
    }


def _metrics(results: RunResults) -> dict[str, Any]:
    def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
        return json.loads(frame.to_json(orient="records"))
    return {"header": results.header, "ood": records(results.ood),
            "misclassification": records(results.misclassification),
            "calibration": records(results.calibration),
            "adversarial": records(results.adversarial),
            "latent": None if results.latent is None else records(results.latent.shares),
            "influence": None if results.influence is None else {
                "images": results.influence.images, "projection": results.influence.projection,
                "max_abs_influence": dict(zip(results.influence.classes, results.influence
                                              .influence.abs().flatten(1).amax(1).tolist(),
                                              strict=True)),
                "max_abs_change": {name: float(change.abs().max())
                                   for name, change in results.influence.changes.items()}},
            "explanations": None if results.explanations is None else {
                "predictive": results.explanations.predictive,
                "measures": results.explanations.measures,
                "aopc": records(results.explanations.aopc),
                "sanity": records(results.explanations.sanity)}}
