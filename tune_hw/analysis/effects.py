"""Gaps and effects: each trial's generalisation gap and its label, each hyperparameter's
winning value and whether it sits on a bound, per-value tables and two-way heatmaps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from tune_hw.analysis.params import ParamSpec, is_discrete, levels
from tune_hw.analysis.selection import winner_position
from tune_hw.analysis.trials import col, native, scored, with_schema
from tune_hw.distributions import LOWER_LIMITS
from tune_hw.ranking import DEFAULT_RANKING, Ranking, finite

# Gap labels (train − val accuracy at the best epoch), in the order they are tested:
#   diverged  the trial's status is `diverged` (its loss went NaN/inf) or it never had a
#             finite validation score;
#   underfit  train accuracy is more than UNDERFIT_MARGIN below the best train accuracy any
#             trial of the run reached: the model did not even fit its training data. Relative
#             to the run, not absolute, because reachable accuracy depends on the dataset.
#             It wins over `overfit` because training error is the first thing to fix;
#   overfit   train − val > OVERFIT_GAP: what it learned does not carry over to new data;
#   good      otherwise.
OVERFIT_GAP = 0.05
UNDERFIT_MARGIN = 0.10
GAP_LABELS = ("good", "overfit", "underfit", "diverged")

BOUND_FRACTION = 0.05  # best value within 5% of the (log-)range of a bound counts as on it
HEATMAP_BINS = 6  # a continuous axis of a heatmap is cut into this many (log-)equal bins


def gap_table(trials: pd.DataFrame, overfit_gap: float = OVERFIT_GAP,
              underfit_margin: float = UNDERFIT_MARGIN) -> pd.DataFrame:
    """Per trial: train and val accuracy at the best epoch, gap = train − val, and a label.

    Trials with no measured epoch (pending, or failed before one) are left out.
    """
    t = with_schema(trials)
    out = pd.DataFrame({"trial_id": t.trial_id, "status": t.status,
                        "train_acc": t.train_acc_at_best.astype(float),
                        "val_acc": t.best_val_acc.astype(float)})
    out["gap"] = out.train_acc - out.val_acc
    diverged = (out.status == "diverged") | ~out.val_acc.map(finite)
    measured = out.train_acc.map(finite) & out.val_acc.map(finite)
    keep = measured | (out.status == "diverged")
    reference = out.train_acc[measured & ~diverged].max()
    labels = np.where(out.train_acc < reference - underfit_margin, "underfit",
                      np.where(out.gap > overfit_gap, "overfit", "good"))
    out["label"] = np.where(diverged, "diverged", labels)
    return out[keep].reset_index(drop=True)


def param_effect(trials: pd.DataFrame, spec: ParamSpec, ranking: Ranking = DEFAULT_RANKING
                 ) -> dict[str, Any]:
    """The validation winner's value of `spec`, and whether it sits on a search bound.

    Only a numeric range (uniform, loguniform, int) has bounds one can widen; an ordered
    numeric grid or choice has edges, and a hard limit (batch size 1) has nothing beyond it.
    """
    df = scored(trials)
    w = winner_position(df, ranking)
    out = {"key": spec.key, "kind": spec.kind, "log": spec.log, "low": spec.low,
           "high": spec.high, "values": spec.values, "best_value": None, "on_bound": None,
           "warning": None}
    if w is None or col(spec.key) not in df:
        return out
    best = native(df[col(spec.key)][w])
    out["best_value"] = best
    out["on_bound"] = side = bound_side(spec, best)
    if side:
        out["warning"] = _bound_warning(spec, best, side)
    return out


def _bound_warning(spec: ParamSpec, best: Any, side: str) -> str:
    edge = {"low": "lower", "high": "upper"}[side]
    hard = side == "low" and LOWER_LIMITS.get(spec.key) == best
    limit = f", the smallest {spec.key} there is" if hard else ""
    if spec.categorical:
        beyond = "" if hard else ": values beyond it were not tried"
        return (f"The best {spec.key} ({_num(best)}) is at the {edge} edge of the {spec.kind} "
                f"{[native(v) for v in spec.values]}{limit}{beyond}.")
    bound = spec.low if side == "low" else spec.high
    advice = "" if hard else ": the optimum may lie beyond it; widen the range"
    return (f"The best {spec.key} ({_num(best)}) sits on the {edge} search bound "
            f"({_num(bound)}){limit}{advice}.")


def bound_side(spec: ParamSpec, value: Any) -> str | None:
    """'low' / 'high' when `value` is on (or within BOUND_FRACTION of) a search bound.

    Unordered categoricals and two-value choices have no bound worth a warning.
    """
    if spec.categorical:
        if not spec.numeric_values or len(spec.values) < 3 or not finite(value):
            return None
        return "low" if value <= min(spec.values) else "high" if value >= max(spec.values) \
            else None
    if spec.low is None or spec.high is None or not finite(value) or spec.high <= spec.low:
        return None
    scale = np.log if spec.log else (lambda x: x)
    if spec.log and (value <= 0 or spec.low <= 0):
        return None
    position = (scale(value) - scale(spec.low)) / (scale(spec.high) - scale(spec.low))
    if value <= spec.low or position <= BOUND_FRACTION:
        return "low"
    if value >= spec.high or position >= 1 - BOUND_FRACTION:
        return "high"
    return None


def _num(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def group_table(trials: pd.DataFrame, key: str, ranking: Ranking = DEFAULT_RANKING) -> pd.DataFrame:
    """Per value of a hyperparameter: trials, best val, the test of that value's winner, medians.

    This is the comparison of a categorical factor (norm on/off, transfer mode, model).
    Numeric values are listed in numeric order, others best first by the ranking.
    """
    df = scored(trials)
    columns = ["value", "n_trials", "best_val_acc", "test_acc_of_best", "median_val_acc",
               "median_best_epoch", "median_wall_s"]
    if col(key) not in df:
        return pd.DataFrame(columns=columns)
    position = {t: i for i, t in enumerate(df.trial_id[ranking.order(df)])}
    rows = []
    for value, group in df.groupby(col(key), sort=False, dropna=False):
        g = group.reset_index(drop=True)
        w = winner_position(g, ranking)
        if w is None:  # no trial of this value has the ranking's score
            continue
        rows.append({"value": native(value), "n_trials": len(g),
                     "best_val_acc": float(g.best_val_acc[w]),
                     "test_acc_of_best": float(g.test_acc_at_best[w]),
                     "median_val_acc": float(g.best_val_acc.median()),
                     "median_best_epoch": float(g.best_epoch.astype(float).median()),
                     "median_wall_s": float(g.wall_s.astype(float).median()),
                     "_order": position[g.trial_id[w]]})
    out = pd.DataFrame(rows, columns=[*columns, "_order"])
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in out.value)
    out = out.sort_values("value" if numeric else "_order", kind="stable")
    return out[columns].reset_index(drop=True)


def heatmap_table(trials: pd.DataFrame, a: ParamSpec, b: ParamSpec,
                  bins: int = HEATMAP_BINS) -> pd.DataFrame:
    """Best validation accuracy per cell of a two-way grid (rows: `a`, columns: `b`).

    Continuous axes are cut into `bins` equal (log-equal for log ranges) bins over the search
    range; empty cells are NaN.
    """
    df = scored(trials)
    axis_a, axis_b = _axis(df, a, trials, bins), _axis(df, b, trials, bins)
    table = pd.DataFrame({"a": axis_a, "b": axis_b, "v": df.best_val_acc.astype(float)})
    pivot = table.pivot_table(index="a", columns="b", values="v", aggfunc="max",
                              observed=False, dropna=False)
    return pivot.rename_axis(index=a.key, columns=b.key)


def _axis(df: pd.DataFrame, spec: ParamSpec, trials: pd.DataFrame, bins: int) -> pd.Series:
    values = df[col(spec.key)]
    if is_discrete(spec, trials):
        return pd.Categorical(values.map(native), categories=levels(spec, trials))
    lo = spec.low if spec.low is not None else float(values.min())
    hi = spec.high if spec.high is not None else float(values.max())
    lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    edges = np.geomspace(lo, hi, bins + 1) if spec.log and lo > 0 else \
        np.linspace(lo, hi, bins + 1)
    labels = [f"{edges[i]:.2g}–{edges[i + 1]:.2g}" for i in range(bins)]
    return pd.cut(values.astype(float), edges, labels=labels, include_lowest=True)
