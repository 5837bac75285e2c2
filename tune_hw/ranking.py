"""THE ranking of a study: its epochs and trials by `search.metric` in `search.mode`.

The search prints the best trial by it, each trial saves its best epoch's state by it, `run:`
weights transfer from its best trial, and the report's winner is its first trial.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# the validation metrics a study may rank by, each with its natural direction
VALIDATION_METRICS = {"val_acc": "max", "val_loss": "min"}
# the trials.parquet column of each metric at a trial's best epoch
TRIAL_SCORE_COLUMNS = {"val_acc": "best_val_acc", "val_loss": "val_loss_at_best"}


@dataclass(frozen=True)
class Ranking:
    """Epochs and trials by a study's `search.metric` in its `search.mode`.

    One tie-break everywhere: the other validation metric in its natural direction (higher
    accuracy, lower loss), then the earlier epoch or the earlier trial (Tune's creation
    order). Diverged epochs and non-finite scores never rank.
    """

    metric: str = "val_acc"
    mode: str = "max"

    @classmethod
    def of(cls, study: dict[str, Any]) -> Ranking:
        """The ranking a resolved study (study.yaml) asks for; defaults when it says nothing."""
        search = study.get("search") or {}
        return cls(search.get("metric", cls.metric), search.get("mode", cls.mode))

    @property
    def tie_metric(self) -> str:
        return next(m for m in VALIDATION_METRICS if m != self.metric)

    def key(self, score: Any, tie: Any, position: int) -> tuple[float, float, int]:
        """Sort key, smallest first: the score, the tie metric, the position."""
        return (_smaller_is_better(score, self.mode),
                _smaller_is_better(tie, VALIDATION_METRICS[self.tie_metric]), position)

    def best_epoch(self, rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """The best healthy epoch of one trial's rows (each with `epoch`, `val_acc`, ...)."""
        healthy = [r for r in rows if not is_true(r.get("diverged"))
                   and finite(r.get(self.metric))]
        if not healthy:
            return None
        return min(healthy, key=lambda r: self.key(r[self.metric], r.get(self.tie_metric),
                                                   int(r["epoch"])))

    def order(self, trials: pd.DataFrame) -> list[int]:
        """Row positions of the ranked trials (a finite score at their best epoch), best first."""
        score, tie = (trials[TRIAL_SCORE_COLUMNS[m]] if TRIAL_SCORE_COLUMNS[m] in trials
                      else pd.Series(math.nan, index=trials.index)
                      for m in (self.metric, self.tie_metric))
        keys = [(self.key(s, t, i), i) for i, (s, t) in enumerate(zip(score, tie, strict=True))
                if finite(s)]
        return [i for _, i in sorted(keys)]

    def ranked(self, trials: pd.DataFrame) -> pd.DataFrame:
        """The ranked trials, best first (unranked ones left out)."""
        return trials.iloc[self.order(trials)]


DEFAULT_RANKING = Ranking()  # a study that names no search.metric ranks by val_acc, max


def _smaller_is_better(value: Any, mode: str) -> float:
    if not finite(value):
        return math.inf
    return -float(value) if mode == "max" else float(value)


def finite(value: Any) -> bool:
    """A value that reads as a finite number (not None, a bool, NaN or inf)."""
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def is_true(value: Any) -> bool:
    """A reported flag (Python or numpy bool, or its text in a CSV) that is set."""
    if isinstance(value, str):
        return value == "True"
    return value is True or (isinstance(value, np.bool_) and bool(value))
