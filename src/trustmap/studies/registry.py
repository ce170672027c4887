"""Every study by name, the settings file they share, and the two ways to run them.

Adding a study is one module (its settings table, ``compute``, ``sections``, ``metrics``,
``write``; its page's layout in a template) and one line in ``STUDIES``. ``trustmap run``
computes the studies its settings enable on one context and draws one page; ``trustmap study
NAME`` computes one and writes its own page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import create_model, model_validator

from trustmap import persist
from trustmap.atomic import check_writable, remove_stale_temporaries, together
from trustmap.errors import CheckpointError, ConfigError, did_you_mean
from trustmap.report.results import RunResults
from trustmap.studies import settings as loader
from trustmap.studies.base import Log, Provided, RunContext, Study, quiet
from trustmap.studies.influence_maps import InfluenceStudy
from trustmap.studies.latent_maps import LatentStudy
from trustmap.studies.recurrent_relevance import RecurrentStudy
from trustmap.studies.settings import RunSettings
from trustmap.studies.uncertainty_measures import UncertaintyStudy
from trustmap.training import write_json

STUDIES: dict[str, Study] = {
    "uncertainty": UncertaintyStudy(),
    "latent": LatentStudy(),
    "influence": InfluenceStudy(),
    "recurrent": RecurrentStudy(),
}
"""Every study by name: the one place a new study is added."""


def _studies_known(settings: RunSettings) -> RunSettings:
    loader.allowed("studies", settings.studies,
                   [name for name, study in STUDIES.items() if study.in_run])
    if "uncertainty" not in settings.studies:
        raise ConfigError("studies must include 'uncertainty': the run's page is built on it")
    return settings


Settings = create_model(
    "Settings", __base__=RunSettings,
    __validators__={"studies_known": model_validator(mode="after")(_studies_known)},
    **{name: (study.settings_type, study.settings_type()) for name, study in STUDIES.items()
       if study.settings_type is not None},
)
"""Every table of the settings file: the run's own and one per study."""


def run_preset() -> dict[str, Any]:
    """The settings ``trustmap run`` starts from: each study's smaller in-run table."""
    return {name: dict(study.run_preset) for name, study in STUDIES.items()
            if study.run_preset}


def load_settings(study: str | None = None, path: Path | str | None = None,
                  overrides: Mapping[str, Any] | None = None,
                  datasets: Iterable[str] = ()) -> RunSettings:
    """Settings for ``trustmap run`` (``study=None``) or ``trustmap study NAME``: the command's
    preset, then the TOML file, then the command-line options (``datasets``: names of datasets
    given in memory)."""
    if study is not None and study not in STUDIES:
        raise ConfigError(f"unknown study {study!r}{did_you_mean(study, STUDIES)}; "
                          f"choose from {', '.join(STUDIES)}")
    preset = run_preset() if study is None else STUDIES[study].alone_preset
    return loader.load(Settings, path, preset, overrides, datasets)


RESULTS_DIR = "results"
"""Where a command keeps its studies' results, so that ``redraw`` needs no computation: a
study alone in ``results/NAME.*``, the studies of a run in ``results/run/NAME.*``."""
RUN_RESULTS = "run"


def run(settings: RunSettings, out: Path, progress: bool = True, log: Log = quiet,
        command: str = "trustmap run", provided: Provided | None = None
        ) -> tuple[Path, dict[str, Any]]:
    """``trustmap run``: every enabled study on one context, one page; returns the page and
    every study's results by name."""
    _claim(out, log)
    ctx = RunContext(settings, out, command, log, progress, provided or Provided())
    computed = {name: STUDIES[name].compute(ctx) for name in settings.studies}
    core: RunResults = computed["uncertainty"]
    core.header["cache"] = (f"{ctx.cache_hits} attack, forward-pass and explanation results "
                            f"reused from {out / 'cache'}" if ctx.cache_hits
                            else "nothing reused")
    core.header["seconds"] = ctx.timings
    for name, results in computed.items():
        persist.save(results, out / RESULTS_DIR / RUN_RESULTS, name)
    return _draw_run(computed, ctx), computed


def run_study(name: str, settings: RunSettings, out: Path, progress: bool = True,
              log: Log = quiet, command: str = "") -> Path:
    """``trustmap study NAME``: one study, its own page; returns the page."""
    study = STUDIES[name]
    _claim(out, log)
    ctx = RunContext(settings, out, command or f"trustmap study {name}", log, progress)
    results = study.compute(ctx)
    results.header["seconds"] = ctx.timings
    persist.save(results, out / RESULTS_DIR, name)
    return _draw_alone(study, results, ctx)


def _claim(out: Path, log: Log) -> None:
    """Before anything is computed: ``out`` must be a folder this user can write (nothing is
    created here), and what a killed earlier command left half-written in it is removed."""
    check_writable(out, folder=True)
    stale = remove_stale_temporaries(out, recursive=True)
    if stale:
        log(f"removed {len(stale)} temporary file(s) a stopped earlier command left in {out}")


def _draw_alone(study: Study, results: Any, ctx: RunContext) -> Path:
    """A study's own page, its files and ``metrics.json``, replacing the earlier ones together;
    the drawing timed like the rest."""
    with together() as outputs:
        with ctx.timed("drawing"):
            page = study.write(results, ctx.out, outputs)
        write_json(ctx.out / "metrics.json",
                   {**study.metrics(results), "header": results.header}, outputs)
    return page


def _draw_run(computed: Mapping[str, Any], ctx: RunContext) -> Path:
    """The run's page and ``metrics.json``: its own study's, then each other study's."""
    core = STUDIES["uncertainty"]
    results: RunResults = computed["uncertainty"]
    beside = [(STUDIES[name], found) for name, found in computed.items()
              if name != "uncertainty"]
    with together() as outputs:  # metrics.json after the drawing, to hold its seconds
        with ctx.timed("drawing"):
            page = core.write(results, ctx.out, outputs, beside)
        write_json(ctx.out / "metrics.json", {
            "header": results.header, **core.metrics(results),
            **{study.name: study.metrics(found) for study, found in beside}}, outputs)
    return page


def redraw(out: Path, log: Log = quiet) -> list[Path]:
    """Draw every page of a finished run or study in ``out`` again from its saved results."""
    saved = out / RESULTS_DIR
    alone = sorted(path.stem for path in saved.glob("*.json") if path.stem in STUDIES)
    in_run = saved / RUN_RESULTS
    if not alone and not (in_run / "uncertainty.json").is_file():
        raise CheckpointError(f"{out} holds no saved results ({saved} is empty or missing); "
                              "run `trustmap run` or `trustmap study NAME` there first")
    _claim(out, log)
    pages = []
    if (in_run / "uncertainty.json").is_file():
        found = sorted(path.stem for path in in_run.glob("*.json") if path.stem in STUDIES)
        computed = {name: persist.load(STUDIES[name].results_type, in_run, name)
                    for name in ["uncertainty", *(n for n in found if n != "uncertainty")]}
        log(f"drawing the run's page again from {in_run}")
        pages.append(_draw_run(computed, _context(out, computed["uncertainty"].header, log)))
    for name in alone:
        study = STUDIES[name]
        results = persist.load(study.results_type, saved, name)
        log(f"drawing {name} again from {saved}")
        pages.append(_draw_alone(study, results, _context(out, results.header, log)))
    return pages


def _context(out: Path, header: dict[str, Any], log: Log) -> RunContext:
    """A context that only draws: the saved seconds, to which the new drawing is added."""
    ctx = RunContext(Settings(), out, str(header.get("command", "")), log, False)
    ctx.timings.extend(header.get("seconds", []))
    header["seconds"] = ctx.timings
    return ctx
