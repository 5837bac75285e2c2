"""The study language's distributions: what a `space:` key searches, parsed and checked once.

    train.lr: {loguniform: [1.0e-4, 1.0]}     # uniform | loguniform: floats in [low, high]
    train.epochs: {int: [1, 30]}              # whole numbers in [low, high], both included
    train.batch_size: {choice: [16, 128]}     # choice: sampled; grid: every value, in order
    model: {grid: [{name: mlp}, {name: cnn}]} # a whole section: a choice or grid of mappings

A `Distribution` knows its values, bounds, grid size and its translation to Optuna (the
importance, the plain-Optuna benchmark); `tuner.to_tune` translates it to Ray Tune, in the
one layer that imports Ray. Every error states the rule, the value received and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tune_hw import strict_yaml
from tune_hw.errors import StudyError

KINDS = ("uniform", "loguniform", "int", "choice", "grid")
RANGES = ("uniform", "loguniform", "int")
# Hard lower limits of hyperparameters: validation refuses values below them, and the report
# never suggests searching beyond them (a batch size cannot go under 1).
LOWER_LIMITS: dict[str, int] = {"train.epochs": 1, "train.batch_size": 1}


@dataclass(frozen=True)
class Distribution:
    """One searched key: a range (`low`, `high`) or listed `values` (choice, grid)."""

    kind: str
    low: Any = None
    high: Any = None
    values: tuple[Any, ...] = ()

    @classmethod
    def parse(cls, spec: Any, key: str, where: str) -> Distribution:
        """`{kind: args}` of a study file, checked; `key` (e.g. space.train.lr) and `where`
        (the file) name it in the one-line error."""
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise StudyError(f"{where}: {key} must be one distribution of {list(KINDS)}, e.g. "
                             f"{{loguniform: [1.0e-4, 1.0]}}; got {spec!r}")
        kind, args = next(iter(spec.items()))
        if kind in ("choice", "grid"):
            if not isinstance(args, list) or not args:
                raise StudyError(f"{where}: {key}: {kind} needs a non-empty list of values")
            return cls(kind, values=tuple(args))
        _check_bounds(key, kind, args, where)
        return cls(kind, args[0], args[1])

    @property
    def is_range(self) -> bool:
        return self.kind in RANGES

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid")

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    @property
    def grid_size(self) -> int:
        """How many trials one pass over it takes: every value of a grid, else one."""
        return len(self.values) if self.kind == "grid" else 1

    @property
    def upper(self) -> Any:
        """The largest value it can draw."""
        return self.high if self.is_range else max(self.values)

    def edge_values(self) -> list[Any]:
        """The values that decide whether all it draws is legal: every choice or grid value,
        and both bounds of a range as the type it draws (int draws ints; uniform and
        loguniform draw floats). Every rule checked is a bound, so the range's ends suffice."""
        if self.categorical:
            return list(self.values)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def mappings(self) -> list[dict[str, Any]]:
        """The mappings of a whole-section choice or grid (empty for an ordinary key)."""
        if self.categorical and all(isinstance(v, dict) for v in self.values):
            return list(self.values)
        return []

    def to_optuna(self, seen: Iterable[Any] = ()) -> Any:
        """Optuna's distribution of the same values, widened to every value in `seen` (values
        tried outside it, e.g. after a --set override); `seen` holds plain Python values."""
        from optuna import distributions  # lazy: optuna takes a second to import

        seen = list(seen)
        if self.categorical:
            # a whole-section mapping becomes its text: Optuna's choices are plain values
            choices = dict.fromkeys(self.optuna_value(v) for v in [*self.values, *seen])
            return distributions.CategoricalDistribution(list(choices))
        numbers = [v for v in seen if not (isinstance(v, float) and math.isnan(v))]
        low, high = min([self.low, *numbers]), max([self.high, *numbers])
        if self.kind == "int":
            return distributions.IntDistribution(int(math.floor(low)), int(math.ceil(high)))
        return distributions.FloatDistribution(float(low), float(high), log=self.log)

    def optuna_value(self, value: Any) -> Any:
        """A value this distribution drew, as the parameter value Optuna records."""
        if self.kind == "int":
            return int(value)
        if self.kind in ("uniform", "loguniform"):
            return float(value)
        # Optuna categoricals hold None, bool, int, float or str; anything else as its text
        return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def variant_label(variant: dict[str, Any]) -> str:
    """A mapping of a whole-section space as one label: {name: cnn, kernel_size: 3} ->
    `cnn kernel_size=3`; {residual: true} -> `residual=True`."""
    rest = ", ".join(f"{k}={v}" for k, v in variant.items() if k != "name")
    return f"{variant['name']} {rest}".strip() if "name" in variant else rest


def _check_bounds(key: str, kind: str, args: Any, where: str) -> None:
    if not isinstance(args, list) or len(args) != 2:
        raise StudyError(f"{where}: {key}: {kind} needs [low, high], got {args!r}")
    for value in args:
        if isinstance(value, str) and strict_yaml.looks_numeric(value):
            raise StudyError(f"{where}: {key}: {value!r} is a string (YAML reads 1e-4 as text): "
                             "write it with a dot, e.g. 1.0e-4")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                not math.isfinite(value):
            raise StudyError(f"{where}: {key}: bounds must be finite numbers, got {value!r}")
    low, high = args
    if low >= high:
        raise StudyError(f"{where}: {key}: low must be < high, got [{low}, {high}]; swap or "
                         "widen the range")
    if kind == "loguniform" and low <= 0:
        raise StudyError(f"{where}: {key}: a log range must be > 0, got low={low}; use a small "
                         "positive bound like 1.0e-6")
    if kind == "int" and not all(isinstance(v, int) for v in args):
        raise StudyError(f"{where}: {key}: int bounds must be whole numbers written without a "
                         f"dot, got {args}")
