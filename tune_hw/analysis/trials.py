"""The trials table as every analysis reads it: its columns, which trials are scored, what
the others were, and the one resample count of the report's bootstraps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tune_hw.ranking import finite
from tune_hw.results import CONFIG_PREFIX, STATUSES, TRIAL_SUMMARY_COLUMNS

N_BOOTSTRAP = 2000  # one resample count for every bootstrap of the report


def col(key: str) -> str:
    """The trials.parquet column of a dotted hyperparameter key."""
    return f"{CONFIG_PREFIX}{key}"


def with_schema(trials: pd.DataFrame) -> pd.DataFrame:
    """`trials` with every summary column present (missing ones as NaN), for partial runs."""
    out = trials.copy()
    for name in ("trial_id", "status", *TRIAL_SUMMARY_COLUMNS):
        if name not in out:
            out[name] = np.nan
    return out.reset_index(drop=True)


def native(value: Any) -> Any:
    """A numpy scalar as the plain Python value (JSON, Optuna and YAML want those)."""
    return value.item() if isinstance(value, np.generic) else value


def scored(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with a finite best validation accuracy and test accuracy at that epoch."""
    t = with_schema(trials)
    ok = t.best_val_acc.map(finite) & t.test_acc_at_best.map(finite)
    return t[ok].reset_index(drop=True)


def left_out(trials: pd.DataFrame) -> dict[str, int]:
    """Trials without scores, which no statistic includes, counted by status."""
    t = with_schema(trials)
    unscored = t[~(t.best_val_acc.map(finite) & t.test_acc_at_best.map(finite))]
    return {str(k): int(v) for k, v in unscored.status.value_counts().items()}


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """How many trials ended in each status (every known status listed, zeros included)."""
    counts = with_schema(trials).status.value_counts().to_dict()
    out = {s: int(counts.pop(s, 0)) for s in STATUSES}
    out.update({str(k): int(v) for k, v in counts.items()})
    return out


def best_so_far(trials: pd.DataFrame) -> pd.DataFrame:
    """Per trial index (1-based row order): its best val accuracy and the running maximum."""
    t = with_schema(trials)
    val = t.best_val_acc.astype(float)
    return pd.DataFrame({"trial_index": np.arange(1, len(t) + 1), "trial_id": t.trial_id,
                         "status": t.status, "best_val_acc": val,
                         "best_so_far": val.cummax().ffill()})
