"""Seeds 000 and 003 made rigorous: which uncertainty measure, under which predictive, tells
in-distribution inputs from out-of-distribution and adversarial ones — measured by AUROC.

``UncertaintyStudy.compute`` trains (or reuses) an ensemble, scores every test set under every
predictive with every measure and evaluates detection, calibration and adversarial detection;
``write`` draws ``report.html`` and writes ``per_sample.parquet`` into ``runs/<name>/``.
"""

from __future__ import annotations

import functools
import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import trustmap
from trustmap import per_sample
from trustmap.atomic import Outputs
from trustmap.data import Dataset
from trustmap.data.references import is_path
from trustmap.errors import ConfigError, DataError
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
from trustmap.explain import disagreement
from trustmap.predictive import Prediction
from trustmap.report import page
from trustmap.report.results import RunResults, SetId
from trustmap.studies import feature_detection, run_page, trust_tables
from trustmap.studies.base import (
    Log,
    RunContext,
    Study,
    TensorCache,
    data_key,
    digest,
    ensemble_spec,
)
from trustmap.studies.ensemble_saliency import explanation_results, explanation_scores
from trustmap.studies.settings import RunSettings
from trustmap.training import EnsembleRun, split_validation
from trustmap.uncertainty import MEASURES, compute, uncertainty_scores


def _test_sets(ctx: RunContext) -> tuple[dict[str, Dataset], list[str]]:
    """The ID test set and every OOD set that is available here, each cut to max_per_set and
    brought to the ID images' channels and size by ``[data] conform``."""
    data = ctx.settings.data
    id_set = ctx.test_set(data.in_distribution)
    sets = {data.in_distribution: id_set}
    skipped = []
    for name in data.ood:
        try:
            sets[name] = ctx.conformed(ctx.test_set(name), id_set)
        except DataError as error:
            if is_path(name):
                raise  # the user's own set: a mistake to fix, not a set to skip
            skipped.append(f"{name}: {error}")
            ctx.log(f"skipping OOD set {name}: not available here (see `trustmap data list`)")
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


def _adversarial_sets(ctx: RunContext, members: list[nn.Module], clean: Dataset,
                      cache: TensorCache) -> tuple[dict[str, Dataset], list[SetId]]:
    """Attacked and same-norm-noise copies of the first ``n`` clean test inputs."""
    adv, seed = ctx.settings.adversarial, ctx.seed
    x, y = clean.images[: adv.n], clean.labels[: adv.n]
    sets: dict[str, Dataset] = {}
    made_sets: list[SetId] = []
    for attacked in adv.attacked:
        forward = mean_log_probs(members if attacked == "ensemble" else members[:1],
                                 ctx.settings.predictives.mc_samples
                                 if attacked == "mc-dropout" else 0)
        for attack in adv.attacks:
            for epsilon in adv.epsilons:
                identity = SetId("adversarial", attack=attack, epsilon=epsilon,
                                 attacked=attacked)
                name, noise_name = str(identity), str(identity.noise)
                attack_now = functools.partial(_attack, forward, attack, epsilon, x, y,
                                               adv.steps, seed, ctx.log, attacked)
                made = cache.get({**data_key(clean), "attack": name, "first": len(x),
                                  "steps": adv.steps, "seed": seed}, attack_now)
                x_adv, noisy = made["adversarial"], made["noise"]
                note = f"{attack} (L-inf, eps {epsilon:g}) against the {attacked} model"
                provenance = {"source": {"attacked": clean.name, "attack": note},
                              "transforms": [note]}
                sets[name] = Dataset(name, "test", x_adv.detach(), y, clean.classes, provenance)
                sets[noise_name] = Dataset(
                    noise_name, "test", noisy, y, clean.classes,
                    {"source": provenance["source"],
                     "transforms": [note, "replaced by Gaussian noise of the same L2 norm"]})
                made_sets.append(identity)
    return sets, made_sets


def _per_sample(name: str, id_name: str, dataset: Dataset, classes: tuple[str, ...],
                predictions: dict[str, Prediction],
                scores: dict[str, dict[str, torch.Tensor]],
                class_sets: dict[str, dict[str, torch.Tensor]] | None,
                calibration: torch.Tensor | None) -> pd.DataFrame:
    """The set's rows of the per-sample table: labels only where they are the model's classes
    (the ID set and the attacked copies of it), the set's own class names everywhere."""
    identity = SetId.parse(name, id_name)
    labels = dataset.labels if identity.role != "ood" and dataset.classes == classes else None
    own = [dataset.classes[k] if k >= 0 else "" for k in dataset.labels.tolist()]
    attack = ({"attack": identity.attack, "epsilon": identity.epsilon,
               "attacked": identity.attacked} if identity.attack else None)
    return per_sample.rows(name, identity.role, labels=labels, label_names=own, classes=classes,
                           predictions=predictions, scores=scores, attack=attack,
                           class_sets=class_sets, calibration=calibration)


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


def _validation_scores(ctx: RunContext, ensemble: EnsembleRun, val: Dataset,
                       predictions: dict[str, Prediction], measures: list[str],
                       cache: TensorCache, detected: dict[str, dict[str, torch.Tensor]]
                       ) -> dict[str, dict[str, torch.Tensor]]:
    """Every score on the ID validation split (held out of training, never scored by a table),
    by predictive, as uncertainties: what the combined score is fitted on."""
    plain = [m for m in measures if m in MEASURES]
    scores = {kind: compute(p, plain) for kind, p in predictions.items()}
    if len(plain) < len(measures):
        made = explanation_scores(cache, measures, ensemble.members, val, predictions,
                                  ctx.settings)
        for kind, values in made.items():
            scores[kind].update(values)
    for kind, values in detected.items():
        scores[kind].update(values)
    return {kind: uncertainty_scores(values) for kind, values in scores.items()}


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


def _calibration(ctx: RunContext, val: Dataset, val_predictions: dict[str, Prediction],
                 test: Dataset, test_predictions: dict[str, Prediction]
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Before/after temperature scaling, one temperature per predictive fitted on validation."""
    rows, bins = [], []
    for kind in ctx.settings.predictives.kinds:
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


def _adversarial_table(adversarial: list[SetId], clean_name: str, n: int,
                       kinds: list[str], measures: list[str], id_set: Dataset,
                       predictions: dict[str, dict[str, Prediction]],
                       scores: dict[str, dict[str, dict[str, torch.Tensor]]]) -> pd.DataFrame:
    frames = []
    labels = id_set.labels[:n]
    for identity in adversarial:
        name, attacked = str(identity), identity.attacked
        before = predictions[clean_name][attacked].predicted[:n]
        after = predictions[name][attacked].predicted
        successful = success(labels, before, after)
        rate = success_rate(labels, before, after)
        for kind in kinds:
            measures_here = [m for m in measures if m in scores[name][kind]]
            clean = {m: scores[clean_name][kind][m][:n] for m in measures_here}
            noise = {m: scores[str(identity.noise)][kind][m] for m in measures_here}
            adv = {m: scores[name][kind][m] for m in measures_here}
            table = detection_table(clean, noise, adv, successful)
            frames.append(table.assign(attack=identity.attack, epsilon=identity.epsilon,
                                       attacked=attacked, success_rate=rate,
                                       predictive=kind))
    columns = ["attack", "epsilon", "attacked", "success_rate", "negatives", "subset",
               "predictive", "measure", "auroc"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(
        columns=columns)


def _detection_tables(cache: TensorCache, id_name: str, ood_names: list[str],
                      adversarial: list[SetId], n: int, kinds: list[str], measures: list[str],
                      id_set: Dataset, predictions: dict[str, dict[str, Prediction]],
                      scores: dict[str, dict[str, dict[str, torch.Tensor]]]
                      ) -> dict[str, pd.DataFrame]:
    """The OOD, misclassification and adversarial tables, kept in the cache under a digest of
    every score, prediction and label they read: thousands of AUROCs that a rerun on the same
    scores would only compute again."""
    inputs = [("labels", id_set.labels)]
    inputs += [(f"{name}/{kind}/predicted", p.predicted)
               for name, by_kind in predictions.items() for kind, p in by_kind.items()]
    inputs += [(f"{name}/{kind}/{measure}", values) for name, by_kind in scores.items()
               for kind, by_measure in by_kind.items() for measure, values in by_measure.items()]
    key = {"tables": "detection", "id": id_name, "ood": ood_names,
           "adversarial": [str(a) for a in adversarial], "n": n, "kinds": kinds,
           "measures": measures, "inputs": digest(inputs)}
    return cache.frames(key, ("ood", "misclassification", "adversarial"), lambda: {
        "ood": _ood_table(id_name, ood_names, kinds, measures, scores),
        "misclassification": _misclassification_table(id_set, kinds, measures,
                                                      predictions[id_name], scores[id_name]),
        "adversarial": _adversarial_table(adversarial, id_name, n, kinds, measures, id_set,
                                          predictions, scores)})


VALIDATION = "(validation split)"
"""The ID validation split among the sets the detectors score (no dataset has this name)."""


class UncertaintyStudy:
    """The run's core: which measure, under which predictive, flags OOD and adversarial inputs;
    with the explanation section (seeds 000 and 001) on the same ensemble."""

    results_type = RunResults
    settings_type = None
    in_run = True
    alone_preset: dict[str, Any] = {}
    name = "uncertainty"
    title = "Uncertainty, detection, calibration and explanations"
    run_preset: dict[str, Any] = {}
    template = run_page.TEMPLATE

    def compute(self, ctx: RunContext) -> RunResults:
        settings = ctx.settings
        kinds = list(settings.predictives.kinds)
        measures = settings.measure_names
        torch.manual_seed(ctx.seed)
        train = ctx.load(settings.data.in_distribution, "train")
        _check_patch(settings.explanations.patch, train)
        sets, skipped = _test_sets(ctx)
        id_name = settings.data.in_distribution
        _check_labelled(train, sets[id_name])
        _check_test_set(sets[id_name], settings)
        fit, val = split_validation(train, settings.model.val_fraction, ctx.seed)
        assert val is not None  # the settings require val_fraction > 0
        calibration = trust_tables.calibration_mask(
            sets[id_name], settings.conformal.calibration_fraction, ctx.seed) \
            if settings.conformal.alpha and settings.conformal.methods else None
        if settings.model.given or ctx.provided.members:
            ensemble = ctx.given_ensemble(train)
            settings = ctx.settings  # without what the given members cannot take
            kinds, measures = list(settings.predictives.kinds), settings.measure_names
            feature_detection.check_fit_split(ctx, fit, ensemble.members)
        else:
            feature_detection.check_fit_split(ctx, fit)  # before anything is trained
            ensemble = ctx.ensemble(ensemble_spec(settings.model, ctx.seed), train)
        members = ensemble.members
        feature_detection.check_layer(ctx, members)
        cache = ctx.cache(ensemble)

        with ctx.timed("attacks"):
            adv_sets, adversarial = _adversarial_sets(ctx, members, sets[id_name], cache)
        sets.update(adv_sets)

        ctx.log(f"scoring {sum(len(d) for d in sets.values())} inputs in {len(sets)} sets "
                f"under {', '.join(kinds)}")
        with ctx.timed("scoring"):
            predictions = {name: ctx.predict(ensemble, d, kinds) for name, d in sets.items()}
            plain = [m for m in measures if m in MEASURES]
            scores = {name: {kind: compute(p, plain) for kind, p in by_kind.items()}
                      for name, by_kind in predictions.items()}
        if len(plain) < len(measures):
            ctx.log(f"explanation disagreement under {', '.join(ctx.settings.explained_kinds)}")
            with ctx.timed("explanation disagreement"):
                for name, dataset in sets.items():
                    made = explanation_scores(cache, measures, members, dataset,
                                              predictions[name], settings)
                    for kind, values in made.items():
                        scores[name][kind].update(values)
        with ctx.timed("feature detectors"):
            # the validation split's too, for the combined score: one fit per member for both
            detected = feature_detection.score(ctx, ensemble, fit, {**sets, VALIDATION: val},
                                               kinds)
            for name in sets:
                for kind, values in detected.by_kind.get(name, {}).items():
                    scores[name][kind].update(values)
        explanations = explanation_results(ctx, members, sets, measures, cache)
        scored = measures + detected.names  # every score the tables rank

        # adversarial sets are also ranked as OOD sets; their noise controls only as negatives
        ood_names = [n for n in sets if SetId.parse(n, id_name).role in ("ood", "adversarial")]
        with ctx.timed("calibration"):
            val_predictions = ctx.predict(ensemble, val, kinds)
            calibrated, reliability = _calibration(ctx, val, val_predictions, sets[id_name],
                                                   predictions[id_name])
        with ctx.timed("conformal sets"):
            class_sets, conformal, conformal_by_class = (
                trust_tables.conformal_sets(settings.conformal, ctx.seed, id_name, calibration,
                                            sets[id_name].labels, sets[id_name].classes,
                                            predictions)
                if calibration is not None else ({}, pd.DataFrame(), pd.DataFrame()))
        with ctx.timed("tables"):
            ranked = {name: {kind: uncertainty_scores(values) for kind, values in by_kind.items()}
                      for name, by_kind in scores.items()}
            tables = _detection_tables(cache, id_name, ood_names, adversarial,
                                       settings.adversarial.n, kinds, scored, sets[id_name],
                                       predictions, ranked)
            classes = sets[id_name].classes
            plain_ood = [n for n in ood_names if SetId.parse(n, id_name).role == "ood"]
            selective = trust_tables.selective_table(sets[id_name].labels,
                                                     predictions[id_name], ranked[id_name])
        with ctx.timed("combined score"):
            combined = trust_tables.combined_table(
                _validation_scores(ctx, ensemble, val, val_predictions, measures, cache,
                                   detected.by_kind.get(VALIDATION, {})),
                ranked[id_name], {n: ranked[n] for n in plain_ood}, kinds)
        with ctx.timed("per-sample table"):
            results = RunResults(
                header=_header(ctx, ensemble, sets, skipped, val),
                in_distribution=id_name,
                predictives=kinds,
                measures={**{m: (MEASURES.get(m) or disagreement.measure(m)).definition
                             for m in measures}, **detected.definitions},
                per_sample=per_sample.table(
                    [_per_sample(n, id_name, d, classes, predictions[n], scores[n],
                                 class_sets.get(n), calibration if n == id_name else None)
                     for n, d in sets.items()],
                    classes=classes, in_distribution=id_name, measures=scored),
                ood=tables["ood"],
                misclassification=tables["misclassification"],
                calibration=calibrated,
                reliability=reliability,
                adversarial=tables["adversarial"],
                images={name: d.images for name, d in sets.items()},
                explanations=explanations,
                near_ood=[n for n in plain_ood if n in settings.data.near_ood],
                detectors=feature_detection.member_table(detected, id_name, plain_ood,
                                                         settings.data.near_ood),
                conformal=conformal,
                conformal_by_class=conformal_by_class,
                selective=selective,
                combined=combined,
                notes=detected.skipped,
            )
        return results

    def sections(self, results: RunResults) -> list[page.Section]:
        return run_page.sections(results)

    def metrics(self, results: RunResults) -> dict[str, Any]:
        """Every table but the per-sample one (that is ``per_sample.parquet``)."""
        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return json.loads(frame.to_json(orient="records"))

        found = results.explanations
        return {"ood": records(results.ood),
                "detectors": records(results.detectors),
                "conformal": records(results.conformal),
                "conformal_by_class": records(results.conformal_by_class),
                "selective": records(results.selective),
                "combined": records(results.combined),
                "notes": results.notes,
                "misclassification": records(results.misclassification),
                "calibration": records(results.calibration),
                "adversarial": records(results.adversarial),
                "explanations": None if found is None else {
                    "predictive": found.predictive, "measures": found.measures,
                    "aopc": records(found.aopc), "sanity": records(found.sanity)}}

    def write(self, results: RunResults, out: Path, outputs: Outputs,
              beside: Sequence[tuple[Study, Any]] = ()) -> Path:
        """``report.html`` (with the sections of the studies ``beside``) and
        ``per_sample.parquet``."""
        out.mkdir(parents=True, exist_ok=True)
        outputs.write(out / "per_sample.parquet",
                      lambda tmp: results.per_sample.to_parquet(tmp, index=False))
        return run_page.write_report(results, out, beside=beside, outputs=outputs)


def _check_test_set(test: Dataset, settings: RunSettings) -> None:
    """Before any training: the ID test set (as ``data.max_per_set`` cuts it) must hold what
    the run takes from it, and two images of every class for a class map's standard error."""
    explanations = settings.explanations
    wanted = {"explanations.faithfulness_n": explanations.faithfulness_n,
              "explanations.sanity_n": explanations.sanity_n}
    if settings.adversarial.attacks and settings.adversarial.epsilons:
        wanted["adversarial.n"] = settings.adversarial.n
    key, need = max(wanted.items(), key=lambda item: item[1])
    cap = settings.data.max_per_set
    if len(test) < need:
        cut = f" (data.max_per_set = {cap})" if cap else ""
        raise ConfigError(f"{key} = {need} takes more images than the {len(test)} test images "
                          f"of {test.name!r} the run uses{cut}; lower {key} to at most "
                          f"{len(test)}" + (f", or raise data.max_per_set to {need} or 0 (all)"
                                            if cap else ""))
    counts = torch.bincount(test.labels, minlength=test.num_classes)
    if int(counts.min()) < 2:
        scarce = test.classes[int(counts.argmin())]
        raise ConfigError(f"the {len(test)} test images of {test.name!r} the run uses "
                          f"(data.max_per_set = {cap}) hold "
                          f"{int(counts.min())} of class {scarce!r}; the class saliency maps "
                          "need two of every class: raise data.max_per_set or set it to 0 (all)")


def _check_labelled(*parts: Dataset) -> None:
    """The in-distribution set is the one accuracy, calibration and class maps are measured
    on: every image needs its label (an unlabelled set is an OOD or audit set)."""
    for part in parts:
        if not part.labelled:
            raise DataError(f"the in-distribution set {part.name!r} ({part.split}) has "
                            f"{int((part.labels < 0).sum())} image(s) without a label; give "
                            "labelled images as data.in_distribution, and unlabelled ones as "
                            "an OOD set (data.ood)")


def _check_patch(patch: int, train: Dataset) -> None:
    """Region perturbation removes whole patches: the patch must tile the images."""
    height, width = train.images.shape[2:]
    if height % patch or width % patch:
        raise ConfigError(f"explanations.patch = {patch} does not tile the {height}x{width} "
                          f"images of {train.name}; choose a divisor of both")


def _header(ctx: RunContext, ensemble: EnsembleRun, sets: dict[str, Dataset],
            skipped: list[str], val: Dataset) -> dict[str, Any]:
    settings = ctx.settings
    if str(ensemble.directory) in ctx.given:
        files = settings.model.checkpoints or settings.model.torchscript
        name = getattr(ensemble.members[0], "name", type(ensemble.members[0]).__name__)
        shown = ", ".join(files) or "in memory"
        model = f"{len(ensemble.members)} x {name} (given: {shown})"
        logits = ctx.predict(ensemble, val, ["ensemble"])["ensemble"].sample_logits
        member_accuracy = (logits.argmax(2) == val.labels).double().mean(1).tolist()
        model += (f"; accuracy and temperature on {len(val)} images held out of the train "
                  "split, which the given members may have trained on")
    else:
        origin = ("reused from " + str(ensemble.directory)
                  if str(ensemble.directory) in ctx.resumed else "trained now")
        model = f"{settings.model.members} x {settings.model.name} ({origin})"
        member_accuracy = [m["metrics"]["val_accuracy"] for m in ensemble.member_meta]
    return {
        "command": ctx.command,
        "trustmap": trustmap.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "seed": settings.seed,
        "config": settings.model_dump(mode="json"),
        "model": model,
        "member validation accuracy": [round(a, 4) for a in member_accuracy],
        "datasets": {name: {"n": len(d), "provenance": d.provenance}
                     for name, d in sets.items()},
        "skipped": skipped,
    }
