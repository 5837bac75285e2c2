"""The varied hyperparameters of a run: each as a `ParamSpec` (its key and distribution), the
labels of whole-section variants, and the discrete values of a parameter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tune_hw.analysis.trials import col, native
from tune_hw.distributions import Distribution, variant_label
from tune_hw.layout import STUDY_FILE
from tune_hw.ranking import finite
from tune_hw.results import CONFIG_PREFIX

DISCRETE_MAX = 12  # an int parameter with at most this many distinct values is a category


@dataclass(frozen=True)
class ParamSpec:
    """One varied hyperparameter and its distribution (a whole-section one: its labels)."""

    key: str
    distribution: Distribution

    @property
    def kind(self) -> str:
        """uniform | loguniform | int | choice | grid"""
        return self.distribution.kind

    @property
    def low(self) -> float | None:
        return float(self.distribution.low) if self.distribution.is_range else None

    @property
    def high(self) -> float | None:
        return float(self.distribution.high) if self.distribution.is_range else None

    @property
    def values(self) -> list[Any]:
        return list(self.distribution.values)

    @property
    def log(self) -> bool:
        return self.distribution.log

    @property
    def categorical(self) -> bool:
        return self.distribution.categorical

    @property
    def numeric_values(self) -> bool:
        """Choices that are all numbers (not bools) have an order and bounds."""
        return bool(self.values) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.values)


def varied_params(study: dict[str, Any], trials: pd.DataFrame) -> list[ParamSpec]:
    """The searched hyperparameters, from study.yaml `space`, that trials.parquet holds.

    A space key that names a whole section (`model: {grid: [{name: mlp, ...}, ...]}`) is one
    categorical whose values are the variants' labels, once `with_variants` has added its
    column; otherwise its varying dotted columns count one by one. With no `space` at all
    (an old run) every config column with more than one value counts.
    """
    space = space_distributions(study)
    specs: list[ParamSpec] = []
    for key, dist in space.items():
        if col(key) in trials:
            labels = tuple(variant_label(v) for v in dist.mappings())
            specs.append(ParamSpec(key, Distribution(dist.kind, values=labels) if labels
                                   else dist))
        else:
            specs.extend(_inferred(trials, prefix=col(key) + "."))
    if not space:
        specs = _inferred(trials, prefix=CONFIG_PREFIX)
    return specs


def space_distributions(study: dict[str, Any]) -> dict[str, Distribution]:
    """The distribution of each key of a resolved study's `space` (study.yaml)."""
    return {key: Distribution.parse(spec, f"space.{key}", STUDY_FILE)
            for key, spec in (study.get("space") or {}).items()}


def with_variants(trials: pd.DataFrame, study: dict[str, Any]) -> pd.DataFrame:
    """Add a `config/<section>` column naming each trial's variant of a whole-section space.

    The search spreads `model: {grid: [{...}, ...]}` into dotted columns; this labels each
    trial with the variant whose every key matches, so the variants compare as one factor.
    """
    out = trials.copy()
    for section, dist in space_distributions(study).items():
        variants = dist.mappings()
        if variants and col(section) not in out:
            out[col(section)] = [_match_variant(row, section, variants)
                                 for _, row in out.iterrows()]
    return out


def _match_variant(row: pd.Series, section: str, variants: list[dict[str, Any]]) -> str:
    """The most specific variant whose every key matches (fixed section values can make a
    short variant match too); "other" when a --set override moved the trial off them all."""
    matches = [v for v in variants
               if all(_same(row.get(col(f"{section}.{k}")), x) for k, x in v.items())]
    if not matches:
        return "other"
    return variant_label(max(matches, key=len))  # max keeps the first of equal lengths


def _same(cell: Any, value: Any) -> bool:
    cell = native(cell)
    if isinstance(value, float) and finite(cell):
        return math.isclose(float(cell), value, rel_tol=1e-9)
    # lists in a config column are stored as their text (results._parquet_safe)
    return cell == value or (cell is not None and str(cell) == str(value))


def _inferred(trials: pd.DataFrame, prefix: str) -> list[ParamSpec]:
    specs = []
    for name in trials.columns:
        if name.startswith(prefix):
            values = trials[name].dropna().unique().tolist()
            if len(values) > 1:
                specs.append(ParamSpec(name.removeprefix(CONFIG_PREFIX),
                                       Distribution("choice", values=tuple(_sorted(values)))))
    return specs


def _sorted(values: list[Any]) -> list[Any]:
    try:
        return sorted(native(v) for v in values)
    except TypeError:  # mixed types (e.g. None and str) keep their order of appearance
        return [native(v) for v in values]


def is_discrete(spec: ParamSpec, trials: pd.DataFrame) -> bool:
    """Categorical, or an int range with few distinct values tried: an axis of categories."""
    if spec.categorical:
        return True
    return spec.kind == "int" and trials[col(spec.key)].nunique() <= DISCRETE_MAX


def levels(spec: ParamSpec, trials: pd.DataFrame) -> list[Any]:
    """The values of a discrete parameter: the study's (sampled or not), then any others."""
    seen = [native(v) for v in trials[col(spec.key)].dropna().unique()]
    order = [native(v) for v in spec.values]
    return order + [v for v in _sorted(seen) if v not in order]
