"""Read and validate a study file (`search_spaces/*.yaml`) into a `Study`.

Every error names the file, the key, the rule, the value received and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune_hw import data, grouping, mlflow_store, models, strict_yaml
from tune_hw.claims import Claim, parse_claims
from tune_hw.distributions import LOWER_LIMITS, Distribution
from tune_hw.errors import StudyError, UserError
from tune_hw.ranking import VALIDATION_METRICS, Ranking
from tune_hw.study_files import SECTIONS, TOP_KEYS, apply_overrides, read_yaml, study_path
from tune_hw.training import OPTIMIZERS, TRAIN_DEFAULTS

SEARCH_DEFAULTS = {"algorithm": "optuna", "num_samples": 10, "metric": Ranking.metric,
                   "mode": Ranking.mode, "max_concurrent": 0, "repeats": 1,
                   "fuse": None}  # None: "auto" (grouping.parse_fuse checks the value)
SCHEDULER_DEFAULTS = {"name": "asha", "grace_period": 1, "reduction_factor": 3}
RESOURCE_DEFAULTS = {"cpu": 1.0, "gpu": 0.0}  # floats: fractions share a GPU (gpu: 0.25)
FAILURE_DEFAULTS = {"max_failures": 2}
LOG_DEFAULTS = {"mlflow": None}  # tracking: an MLflow URI (mlflow_store.check_uri)
ALGORITHMS, SCHEDULERS, MODES = ("optuna", "random", "grid"), ("asha", "fifo"), ("max", "min")
METRICS = tuple(VALIDATION_METRICS)  # never test_*: the test split feeds no choice


@dataclass
class Study:
    """A validated study: fixed settings per section, the searched space, how to search."""

    name: str
    path: Path
    description: str
    dataset: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    space: dict[str, dict[str, Any]]
    search: dict[str, Any]
    scheduler: dict[str, Any]
    resources: dict[str, Any]
    failure: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, Distribution] = field(default_factory=dict)  # space, parsed
    claims: tuple[Claim, ...] = ()  # the expected findings the report tests
    raw_claims: list[Any] | None = None  # as written: study.yaml keeps them for the report

    @property
    def log(self) -> dict[str, Any]:
        """Where the run is also tracked: {"mlflow": URI}, or {} (optuna.db is always kept)."""
        return self.extra.get("log", {})

    @property
    def ranking(self) -> Ranking:
        """How this study ranks epochs and trials (its search.metric and mode)."""
        return Ranking(self.search["metric"], self.search["mode"])

    def searched(self, config: dict[str, Any]) -> dict[str, Any]:
        """The searched entries of a flat trial config: a searched key, or one of a searched
        section (a `model:` choice spreads into model.name, model.width, ...)."""
        return {k: v for k, v in config.items()
                if k in self.space or k.partition(".")[0] in self.space}

    def fixed_config(self) -> dict[str, Any]:
        """The fixed values as the flat dotted config a trial takes (`train.lr`, ...)."""
        return {f"{section}.{key}": value for section in SECTIONS
                for key, value in getattr(self, section).items()}

    def resolved(self) -> dict[str, Any]:
        """The study as it runs, for `study.yaml` in the run directory."""
        return {"name": self.name, "description": self.description, "dataset": self.dataset,
                "model": self.model, "train": self.train, "space": self.space,
                "search": self.search, "scheduler": self.scheduler,
                "resources": self.resources, "failure": self.failure,
                **({"claims": self.raw_claims} if self.raw_claims else {}), **self.extra}


def load_study(name_or_path: str, quick: bool = False,
               overrides: dict[str, Any] | None = None) -> Study:
    """Read, override (quick profile, then --set values) and validate a study."""
    path = study_path(name_or_path)
    raw = read_yaml(path)
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {sorted(unknown)}: allowed top-level keys "
                         f"are {sorted(TOP_KEYS)}")
    if quick:
        if not isinstance(raw.get("quick"), dict):
            raise StudyError(f"{path}: --quick needs a 'quick:' profile mapping, e.g. "
                             "quick: {num_samples: 4, train.epochs: 2}")
        raw = apply_overrides(raw, raw["quick"], path)
    if not overrides:
        return validate(raw, path)
    overridden = apply_overrides(raw, overrides, path)  # first: a bad --set is the error
    # Claims (no --set changes them) are checked against the study its file and quick profile
    # define: a --set that narrows the space leaves a claim about values it no longer reaches
    # inconclusive in this run, instead of refusing the run
    try:
        claims = validate(raw, path).claims
    except StudyError:  # the file is whole only with its --set values: check against those
        claims = None
    return validate(overridden, path, claims)


def validate(raw: dict[str, Any], path: Path, claims: tuple[Claim, ...] | None = None
             ) -> Study:
    """Check every section and the space; fill defaults; `claims`, when given, were checked
    already (against the study before --set overrides)."""
    where = str(path)
    dataset = _section(raw, "dataset", where)
    model = _section(raw, "model", where)
    train = {**TRAIN_DEFAULTS, **_section(raw, "train", where)}
    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise StudyError(f"{where}: space is empty: search at least one key, e.g. "
                         "space: {train.lr: {loguniform: [1.0e-4, 1.0e-1]}}")
    search = _merge(SEARCH_DEFAULTS, raw.get("search"), "search", where)
    if search["algorithm"] == "grid" and "num_samples" not in (raw.get("search") or {}):
        search["num_samples"] = 1  # with grid, num_samples counts repeats of the whole grid
    scheduler = _merge(SCHEDULER_DEFAULTS, raw.get("scheduler"), "scheduler", where)
    resources = _merge(RESOURCE_DEFAULTS, raw.get("resources"), "resources", where)
    failure = _merge(FAILURE_DEFAULTS, raw.get("failure"), "failure", where)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise StudyError(f"{where}: description must be a string (one line of text), got "
                         f"{type(description).__name__}")
    study = Study(path.stem, path, description, dataset, model, train, space, search,
                  scheduler, resources, failure)
    study.distributions = _parse_space(study, where)
    _check_log(study, raw.get("log"), where)
    _check_search(study, where)
    # the same check for the fixed values and for every value the space can put in their place
    for section, check in (("train", _check_train), ("model", _check_model),
                           ("dataset", _check_dataset)):
        if section not in study.space:  # a section searched whole has no fixed mapping alone
            check(getattr(study, section), where)
        for variant, origin in _variants(study, section):
            check(variant, where + _origin_text(origin))
    study.raw_claims = raw.get("claims")
    study.claims = _parse_claims(study, where) if claims is None else claims
    return study


def _parse_claims(study: Study, where: str) -> tuple[Claim, ...]:
    """The study's claims, checked against the values it lets each key take."""
    try:
        return parse_claims(study.raw_claims, study.resolved(), where)
    except UserError as exc:
        raise StudyError(str(exc)) from None
def _check_log(study: Study, given: Any, where: str) -> None:
    """`log: {mlflow: URI}`: a tracking URI MLflow can open; kept in the resolved study."""
    log = _merge(LOG_DEFAULTS, given, "log", where)
    uri = log["mlflow"]
    if uri is None:
        return
    if not isinstance(uri, str) or not uri.strip():
        raise StudyError(f"{where}: log.mlflow must be a tracking URI (text), e.g. "
                         f"sqlite:///mlruns.db; got {uri!r}")
    study.extra["log"] = {"mlflow": mlflow_store.check_uri(uri.strip(), f"{where}: log.mlflow")}


def _section(raw: dict, name: str, where: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise StudyError(f"{where}: {name} must be a mapping, got {value!r}")
    return dict(value)


def _merge(defaults: dict, given: Any, name: str, where: str) -> dict[str, Any]:
    given = given or {}
    if not isinstance(given, dict):
        raise StudyError(f"{where}: {name} must be a mapping, got {given!r}")
    unknown = set(given) - set(defaults)
    if unknown:
        raise StudyError(f"{where}: {name} has unknown key(s) {sorted(unknown)}: allowed are "
                         f"{sorted(defaults)}")
    merged = {**defaults, **given}
    for key, default in defaults.items():
        _check_type(f"{name}.{key}", merged[key], default, where)
    return merged


def _check_type(key: str, value: Any, default: Any, where: str) -> None:
    """A value must have the type of its default (an int where an int belongs, not 32.0), and
    a number must be finite; YAML's string '1e-4' gets a pointed hint."""
    if default is None or value is None:
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = number and isinstance(value, int)
    elif isinstance(default, float):
        ok = number
    else:
        ok = isinstance(value, type(default))
    if ok and number and not math.isfinite(value):
        raise StudyError(f"{where}: {key} must be a finite number, got {value!r}")
    if ok:
        return
    hint = ""
    if isinstance(value, str) and strict_yaml.looks_numeric(value):
        hint = f" (YAML reads {value} as a string: write it with a dot, e.g. 1.0e-4)"
    elif isinstance(default, int) and isinstance(value, float):
        hint = " (a whole number without a decimal point; a searched int key takes int: or " \
               "choice:, not uniform:)"
    raise StudyError(f"{where}: {key} must be {type(default).__name__}, got {value!r}{hint}")


def _check_train(train: dict[str, Any], where: str) -> None:
    unknown = set(train) - set(TRAIN_DEFAULTS)
    if unknown:
        raise StudyError(f"{where}: train has unknown key(s) {sorted(unknown)}: allowed are "
                         f"{sorted(TRAIN_DEFAULTS)}")
    for key, default in TRAIN_DEFAULTS.items():
        _check_type(f"train.{key}", train[key], default, where)
    if train["optimizer"] not in OPTIMIZERS:
        raise StudyError(f"{where}: train.optimizer is {train['optimizer']!r}: use one of "
                         f"{sorted(OPTIMIZERS)}")
    for key, low in LOWER_LIMITS.items():
        name = key.removeprefix("train.")
        if train[name] < low:
            raise StudyError(f"{where}: {key} must be >= {low}, got {train[name]}")
    if train["lr"] <= 0:
        raise StudyError(f"{where}: train.lr must be > 0, got {train['lr']}")
    for key in ("momentum", "weight_decay"):
        if train[key] < 0:
            raise StudyError(f"{where}: train.{key} must be >= 0, got {train[key]}")


def _check_search(study: Study, where: str) -> None:
    search, scheduler, resources = study.search, study.scheduler, study.resources
    for key, value, allowed in (("search.algorithm", search["algorithm"], ALGORITHMS),
                                ("search.mode", search["mode"], MODES),
                                ("search.metric", search["metric"], METRICS),
                                ("scheduler.name", scheduler["name"], SCHEDULERS)):
        if value not in allowed:
            raise StudyError(f"{where}: {key} is {value!r}: use one of {list(allowed)}")
    if search["num_samples"] < 1:
        raise StudyError(f"{where}: search.num_samples must be >= 1, got "
                         f"{search['num_samples']}")
    if search["repeats"] < 1:
        raise StudyError(f"{where}: search.repeats must be >= 1 (seeds per config), got "
                         f"{search['repeats']}")
    if scheduler["grace_period"] < 1 or scheduler["reduction_factor"] <= 1:
        raise StudyError(f"{where}: scheduler needs grace_period >= 1 and reduction_factor > 1")
    if resources["cpu"] <= 0 or resources["gpu"] < 0:
        raise StudyError(f"{where}: resources need cpu > 0 and gpu >= 0, got {resources}")
    if study.failure["max_failures"] < 0:
        raise StudyError(f"{where}: failure.max_failures must be >= 0")
    _check_fuse(study, where)


def _check_fuse(study: Study, where: str) -> None:
    """search.fuse: auto (the default), off or a group size K."""
    search = study.search
    try:
        search["fuse"] = grouping.parse_fuse("auto" if search["fuse"] is None else search["fuse"])
    except ValueError as exc:
        raise StudyError(f"{where}: {exc}") from None


def _parse_space(study: Study, where: str) -> dict[str, Distribution]:
    """Each searched key's distribution, checked against the key and the search algorithm."""
    algorithm, distributions = study.search["algorithm"], {}
    for key, spec in study.space.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise StudyError(f"{where}: space key {key!r} must start with one of {SECTIONS}, "
                             "e.g. train.lr")
        dist = distributions[key] = Distribution.parse(spec, f"space.{key}", where)
        if not name and dist.is_range:
            raise StudyError(f"{where}: space.{key} searches a whole section: use choice or "
                             "grid of mappings")
        if not name and any(k.startswith(f"{section}.") for k in study.space):
            raise StudyError(f"{where}: space.{key} searches the whole section and space also "
                             f"searches keys inside it: put those keys into each {key} mapping")
        _check_algorithm(key, dist, algorithm, where)
    return distributions


def _check_algorithm(key: str, dist: Distribution, algorithm: str, where: str) -> None:
    if algorithm == "grid" and dist.kind != "grid":
        raise StudyError(f"{where}: space.{key} is {dist.kind} but search.algorithm is grid: use "
                         "grid: [values] for every key, or algorithm random/optuna")
    if algorithm == "optuna" and dist.kind == "grid":
        raise StudyError(f"{where}: space.{key}: grid is not supported by optuna: use choice, "
                         "or search.algorithm grid/random")
    if algorithm == "optuna" and dist.kind == "choice" and any(
            isinstance(v, (dict, list)) for v in dist.values):
        raise StudyError(f"{where}: space.{key}: optuna cannot choose between mappings: use "
                         "search.algorithm grid or random")


def section_variants(study: Study, section: str) -> list[dict[str, Any]]:
    """Every fixed-plus-searched mapping a section can take, for validation of each."""
    return [variant for variant, _ in _variants(study, section)]


def _variants(study: Study, section: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each mapping of `section` the search can produce (every combination of the values that
    decide legality), with the space values that made it."""
    base = dict(getattr(study, section))
    variants: list[tuple[dict[str, Any], dict[str, Any]]] = [(base, {})]
    whole = study.distributions.get(section)
    if whole is not None:
        choices = whole.values
        for choice in choices:
            if not isinstance(choice, dict):
                raise StudyError(f"{study.path}: space.{section} must list mappings, got "
                                 f"{choice!r}")
        variants = [({**base, **choice}, {f"space.{section}": choice}) for choice in choices]
    for key, dist in study.distributions.items():
        sec, _, name = key.partition(".")
        if sec == section and name:
            values = dist.edge_values()
            variants = [({**v, name: value}, {**o, f"space.{key}": value})
                        for v, o in variants for value in values]
    return variants


def _origin_text(origin: dict[str, Any]) -> str:
    """` (from space.train.lr = -1.0)`: the searched values an error came from."""
    if not origin:
        return ""
    return " (from " + ", ".join(f"{key} = {value!r}" for key, value in origin.items()) + ")"


def _check_model(model: dict[str, Any], where: str) -> None:
    if "name" not in model:
        raise StudyError(f"{where}: model.name is missing: use one of {models.names()}")
    name = model["name"]
    if name not in models.names():
        raise StudyError(f"{where}: unknown model {name!r}: use one of {models.names()}")
    _check_options("model", model, models.hyperparameters(name), "hyperparameter", where)


def _check_dataset(dataset: dict[str, Any], where: str) -> None:
    name = dataset.get("name")
    if name is None:
        raise StudyError(f"{where}: dataset.name is missing: use one of {sorted(data.DATASETS)}")
    try:
        accepted = data.dataset_options(name)
    except UserError as exc:
        raise StudyError(f"{where}: {exc}") from None
    _check_options("dataset", dataset, accepted, "option", where)


def _check_options(section: str, values: dict[str, Any], accepted: dict[str, Any], what: str,
                   where: str) -> None:
    """Every key of a model or dataset mapping but its name is one it takes, of its type."""
    unknown = set(values) - set(accepted) - {"name"}
    if unknown:
        raise StudyError(f"{where}: {section} {values['name']!r} has no {what}(s) "
                         f"{sorted(unknown)}: it takes {sorted(accepted)}")
    for key, value in values.items():
        if key != "name":
            _check_type(f"{section}.{key}", value, accepted[key], where)
