"""Pure analysis of a run's tables: validation vs test, generalisation gaps, effects.

Every function takes DataFrames in the schema of `tune_hw/results.py` (plus the resolved
study dict) and returns numbers, dicts or DataFrames. Nothing here plots, prints or touches
files, so each piece is unit-tested on small hand-made tables (tests/test_analysis.py).

Conventions used throughout:
- a trial is *scored* when it has a finite `best_val_acc` and `test_acc_at_best`, whatever
  its status (early-stopped, diverged-after-peaking and still-running trials were candidates
  the search could have picked too). A trial with no healthy epoch (diverged in its first,
  failed, pending) has none: it is left out of every statistic and counted apart
  (`left_out`);
- the *validation winner* and every "best" is the first scored trial by the study's ranking,
  `ranking.Ranking` (its search.metric and mode, one tie-break), the same ranking the search
  prints and `weights: run:` transfers from;
- the *trial index* is the row order of trials.parquet.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tune_hw.distributions import LOWER_LIMITS, Distribution, variant_label
from tune_hw.layout import STUDY_FILE
from tune_hw.ranking import DEFAULT_RANKING, Ranking
from tune_hw.results import STATUSES, TRIAL_SUMMARY_COLUMNS

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
STRONG_RANK, MODERATE_RANK = 0.7, 0.4  # |Spearman| thresholds for the plain-words verdict
CONFIDENT_P = 0.8  # bootstrap P above which validation's choice is called reliable
N_BOOTSTRAP = 2000
HEATMAP_BINS = 6  # a continuous axis of a heatmap is cut into this many (log-)equal bins
DISCRETE_MAX = 12  # an int parameter with at most this many distinct values is a category


def col(key: str) -> str:
    """The trials.parquet column of a dotted hyperparameter key."""
    return f"config/{key}"


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


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- parameters

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
        specs = _inferred(trials, prefix="config/")
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
    if isinstance(value, float) and _finite(cell):
        return math.isclose(float(cell), value, rel_tol=1e-9)
    # lists in a config column are stored as their text (results._parquet_safe)
    return cell == value or (cell is not None and str(cell) == str(value))


def _inferred(trials: pd.DataFrame, prefix: str) -> list[ParamSpec]:
    specs = []
    for name in trials.columns:
        if name.startswith(prefix):
            values = trials[name].dropna().unique().tolist()
            if len(values) > 1:
                specs.append(ParamSpec(name.removeprefix("config/"),
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


# ------------------------------------------------------------------------ val vs test

def scored(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with a finite best validation accuracy and test accuracy at that epoch."""
    t = with_schema(trials)
    ok = t.best_val_acc.map(_finite) & t.test_acc_at_best.map(_finite)
    return t[ok].reset_index(drop=True)


def left_out(trials: pd.DataFrame) -> dict[str, int]:
    """Trials without scores, which no statistic includes, counted by status."""
    t = with_schema(trials)
    unscored = t[~(t.best_val_acc.map(_finite) & t.test_acc_at_best.map(_finite))]
    return {str(k): int(v) for k, v in unscored.status.value_counts().items()}


def winner_position(df: pd.DataFrame, ranking: Ranking = DEFAULT_RANKING) -> int | None:
    """Row position of the validation winner by the study's ranking."""
    order = ranking.order(df)
    return order[0] if order else None


def rank_correlations(val: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Spearman and Kendall (tau-b) correlation of val and test accuracy, with p-values.

    NaN when fewer than 2 trials or when either side is constant (no ranking to compare).
    """
    from scipy import stats

    nan = {"spearman": math.nan, "spearman_p": math.nan, "kendall": math.nan,
           "kendall_p": math.nan}
    val, test = np.asarray(val, float), np.asarray(test, float)
    if len(val) < 2 or np.ptp(val) == 0 or np.ptp(test) == 0:
        return nan
    rho, rho_p = stats.spearmanr(val, test)
    tau, tau_p = stats.kendalltau(val, test)
    return {"spearman": float(rho), "spearman_p": float(rho_p), "kendall": float(tau),
            "kendall_p": float(tau_p)}


def bootstrap_same_winner(val_acc: np.ndarray, test_acc: np.ndarray, n_val: Any, n_test: Any,
                          n_boot: int = N_BOOTSTRAP, seed: int = 0) -> float:
    """P(the validation winner is also the test winner) under re-drawn evaluation examples.

    A parametric bootstrap over examples: each resample draws every trial's validation and
    test accuracy as Binomial(n, acc) / n, then asks whether the arg-max on validation is the
    arg-max on test (ties broken at random). Resampling *trials* cannot answer this: the
    question is about the winner, not about the population of configs. Trials are drawn
    independently, while in truth they share the same examples, so their errors correlate and
    the real noise between two trials is usually smaller: read the value as a lower-side
    estimate. An exact paired bootstrap would need per-example predictions, which are not
    stored.
    """
    val_acc, test_acc = np.asarray(val_acc, float), np.asarray(test_acc, float)
    k = len(val_acc)
    if k == 0:
        return math.nan
    if k == 1:
        return 1.0
    rng = np.random.default_rng(seed)
    # one size for all trials, or each trial's own (a searched dataset changes them)
    n_val = np.broadcast_to(np.asarray(n_val, dtype=np.int64), (k,))
    n_test = np.broadcast_to(np.asarray(n_test, dtype=np.int64), (k,))
    val = rng.binomial(n_val, np.clip(val_acc, 0, 1), size=(n_boot, k)) / n_val
    test = rng.binomial(n_test, np.clip(test_acc, 0, 1), size=(n_boot, k)) / n_test
    # jitter below one example (1/n) only reorders exact ties, and does so at random
    val_win = np.argmax(val + rng.random((n_boot, k)) * 0.5 / n_val, axis=1)
    test_win = np.argmax(test + rng.random((n_boot, k)) * 0.5 / n_test, axis=1)
    return float(np.mean(val_win == test_win))


def val_test_stats(trials: pd.DataFrame, n_val: int | None = None, n_test: int | None = None,
                   n_boot: int = N_BOOTSTRAP, seed: int = 0, ranking: Ranking = DEFAULT_RANKING
                   ) -> dict[str, Any]:
    """Validation vs test: correlations, the winner, selection regret, optimism, bootstrap.

    regret = best test accuracy of any trial − test accuracy of the validation winner;
    optimism = the winner's validation accuracy − its test accuracy. Each trial's own split
    sizes (`val_size`, `test_size`) weigh its noise; `n_val`/`n_test` stand in for trials
    that did not record them (older runs); without sizes the bootstrap is skipped (None).
    """
    df = scored(trials)
    val_n, test_n = split_sizes(df, "val", n_val), split_sizes(df, "test", n_test)
    out: dict[str, Any] = {"n_trials": len(df), **rank_correlations(df.best_val_acc,
                                                                     df.test_acc_at_best)}
    out.update(winner=None, best_test=None, regret=math.nan, optimism=math.nan,
               winner_is_test_winner=None, p_same_winner=None, test_se=math.nan,
               regret_within_noise=None, n_val=_one_size(val_n), n_test=_one_size(test_n),
               val_sizes=_distinct(val_n), test_sizes=_distinct(test_n), n_boot=n_boot,
               seed=seed)
    w = winner_position(df, ranking)
    if w is None:
        return out
    val, test = df.best_val_acc.astype(float), df.test_acc_at_best.astype(float)
    b = int(np.argmax(test.to_numpy()))
    out["winner"] = {"trial_id": str(df.trial_id[w]), "val_acc": float(val[w]),
                     "test_acc": float(test[w]), "test_rank": int((test > test[w]).sum()) + 1}
    out["best_test"] = {"trial_id": str(df.trial_id[b]), "test_acc": float(test[b])}
    out["regret"] = float(test.max() - test[w])
    out["optimism"] = float(val[w] - test[w])
    out["winner_is_test_winner"] = bool(test[w] >= test.max())
    if test_n is not None:
        se = [math.sqrt(test[i] * (1 - test[i]) / test_n[i]) for i in (b, w)]
        out["test_se"] = se[0]
        # the difference of two accuracies carries both their errors
        out["regret_within_noise"] = bool(out["regret"] <= 2 * math.hypot(*se))
    if val_n is not None and test_n is not None and len(df) >= 2:
        out["p_same_winner"] = bootstrap_same_winner(val.to_numpy(), test.to_numpy(), val_n,
                                                     test_n, n_boot, seed)
    return out


def split_sizes(df: pd.DataFrame, split: str, fallback: int | None) -> np.ndarray | None:
    """Each trial's own size of `split` (val or test), `fallback` where a trial has none;
    None when some trial has neither."""
    column = f"{split}_size"
    sizes = df[column].astype(float) if column in df else pd.Series(np.nan, index=df.index)
    sizes = sizes.fillna(np.nan if fallback is None else float(fallback))
    if sizes.isna().any() or (sizes <= 0).any():
        return None
    return sizes.to_numpy(dtype=np.int64)


def _distinct(sizes: np.ndarray | None) -> list[int] | None:
    return None if sizes is None else sorted({int(n) for n in sizes})


def _one_size(sizes: np.ndarray | None) -> int | None:
    distinct = _distinct(sizes)
    return distinct[0] if distinct and len(distinct) == 1 else None


def rank_strength(rho: float) -> str:
    """strongly / moderately / weakly / not (by |Spearman| against documented thresholds)."""
    if not _finite(rho):
        return "not"
    a = abs(rho)
    return "strongly" if a >= STRONG_RANK else "moderately" if a >= MODERATE_RANK else "weakly"


def verdict(s: dict[str, Any]) -> str:
    """A plain-words reading of `val_test_stats` for the study's user."""
    if s["n_trials"] == 0:
        return "No trial has a validation and a test score yet, so there is nothing to compare."
    w = s["winner"]
    if s["n_trials"] == 1:
        return (f"Only one trial has scores, so validation had nothing to choose between: "
                f"trial {w['trial_id']} reached {w['val_acc']:.3f} on validation and "
                f"{w['test_acc']:.3f} on test. Run more trials to learn whether validation "
                "picks well.")
    p = s["p_same_winner"]
    lines = []
    if s["winner_is_test_winner"]:
        lines.append(f"The validation winner (trial {w['trial_id']}) is also the best trial on "
                     f"test ({w['test_acc']:.3f}), so choosing by validation cost nothing here.")
    else:
        lines.append(f"The validation winner (trial {w['trial_id']}) ranks {w['test_rank']} of "
                     f"{s['n_trials']} on test: choosing by validation cost {s['regret']:.3f} "
                     f"test accuracy against the best trial ({s['best_test']['trial_id']}, "
                     f"{s['best_test']['test_acc']:.3f}).")
        if s["regret_within_noise"]:
            lines.append(f"That loss is within the test set's own noise (one standard error "
                         f"of an accuracy on {s['n_test']} examples is {s['test_se']:.3f}), so "
                         "the top configs are indistinguishable on this data.")
        elif s["regret_within_noise"] is False:
            lines.append("That loss is larger than the test set's noise: the validation split "
                         "ranks the top configs differently from test; enlarge it, or average "
                         "several seeds per config before trusting the winner.")
    if p is not None:
        if p >= CONFIDENT_P:
            lines.append(f"With re-drawn evaluation examples validation would pick the test "
                         f"winner {p:.0%} of the time: its choice among these configs can be "
                         "trusted.")
        else:
            lines.append(f"With re-drawn evaluation examples validation would pick the test "
                         f"winner only {p:.0%} of the time: the leading configs are within "
                         "evaluation noise of each other, so treat them as equally good (or "
                         "use a larger validation split) rather than crowning one.")
    if _finite(s["spearman"]):
        lines.append(f"Across all trials validation and test rank the configs "
                     f"{rank_strength(s['spearman'])} alike (Spearman {_fmt(s['spearman'])}, "
                     f"Kendall {_fmt(s['kendall'])}).")
    else:
        lines.append("The rank correlation is undefined: every trial has the same validation "
                     "or the same test score.")
    if s["optimism"] > 0:
        lines.append(f"Expect less than the winner's validation score on new data: it "
                     f"overstates its test score by {s['optimism']:.3f} (picking the maximum of "
                     "noisy scores favours lucky ones).")
    else:
        lines.append(f"The winner's test score is {-s['optimism']:.3f} above its validation "
                     "score, so its validation score is not inflated here.")
    return " ".join(lines)


def _fmt(x: float) -> str:
    return f"{x:.2f}" if _finite(x) else "undefined"


# -------------------------------------------------------------------- generalisation gap

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
    diverged = (out.status == "diverged") | ~out.val_acc.map(_finite)
    measured = out.train_acc.map(_finite) & out.val_acc.map(_finite)
    keep = measured | (out.status == "diverged")
    reference = out.train_acc[measured & ~diverged].max()
    labels = np.where(out.train_acc < reference - underfit_margin, "underfit",
                      np.where(out.gap > overfit_gap, "overfit", "good"))
    out["label"] = np.where(diverged, "diverged", labels)
    return out[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------ effects

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
        if not spec.numeric_values or len(spec.values) < 3 or not _finite(value):
            return None
        return "low" if value <= min(spec.values) else "high" if value >= max(spec.values) \
            else None
    if spec.low is None or spec.high is None or not _finite(value) or spec.high <= spec.low:
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


def best_so_far(trials: pd.DataFrame) -> pd.DataFrame:
    """Per trial index (1-based row order): its best val accuracy and the running maximum."""
    t = with_schema(trials)
    val = t.best_val_acc.astype(float)
    return pd.DataFrame({"trial_index": np.arange(1, len(t) + 1), "trial_id": t.trial_id,
                         "status": t.status, "best_val_acc": val,
                         "best_so_far": val.cummax().ffill()})


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """How many trials ended in each status (every known status listed, zeros included)."""
    counts = with_schema(trials).status.value_counts().to_dict()
    out = {s: int(counts.pop(s, 0)) for s in STATUSES}
    out.update({str(k): int(v) for k, v in counts.items()})
    return out


def top_trials(trials: pd.DataFrame, k: int, ranking: Ranking = DEFAULT_RANKING) -> list[str]:
    """The `k` best trial ids by the study's ranking (the winner first)."""
    df = scored(trials)
    return [str(df.trial_id[i]) for i in ranking.order(df)[:k]]


def leaderboard(trials: pd.DataFrame, specs: list[ParamSpec], k: int = 20,
                ranking: Ranking = DEFAULT_RANKING) -> pd.DataFrame:
    """The `k` best trials by validation with their test accuracy and test rank beside them."""
    df = scored(trials)
    by_id = df.set_index("trial_id")
    test = df.test_acc_at_best.astype(float)
    rows = []
    for rank, trial_id in enumerate(top_trials(trials, k, ranking), 1):
        r = by_id.loc[trial_id]
        rows.append({"rank": rank, "trial_id": trial_id, "status": r.status,
                     **{s.key: native(r[col(s.key)]) for s in specs},
                     "best_epoch": native(r.best_epoch), "val_acc": float(r.best_val_acc),
                     "val_loss": float(r.val_loss_at_best),
                     "test_acc": float(r.test_acc_at_best),
                     "test_rank": int((test > r.test_acc_at_best).sum()) + 1})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- importance

def param_importance(trials: pd.DataFrame, specs: list[ParamSpec], seed: int = 0
                     ) -> tuple[dict[str, float] | None, str]:
    """Optuna's fANOVA importance of each varied hyperparameter for best val accuracy.

    Builds an Optuna study from the scored trials (create_trial + add_trials) and calls
    optuna.importance.get_param_importances. Returns (importances or None, a sentence saying
    what was computed or why it could not be).
    """
    df = scored(trials)
    if len(specs) < 2:
        which = f"only {specs[0].key} was varied" if specs else "no hyperparameter was varied"
        return None, (f"Parameter importance is not computed: {which}, so there is nothing to "
                      "apportion; see the per-parameter plot instead.")
    if len(df) < 2:
        return None, (f"Parameter importance needs at least 2 trials with a validation score; "
                      f"this run has {len(df)}.")
    live = [s for s in specs if df[col(s.key)].nunique(dropna=False) > 1]
    if len(live) < 2:
        return None, ("Parameter importance is not computed: among the scored trials at most "
                      "one hyperparameter took more than one value.")
    if df.best_val_acc.nunique() < 2:
        return None, ("Parameter importance is not computed: every scored trial reached the "
                      "same validation accuracy, so no parameter explains any difference.")
    try:
        importances = _optuna_importance(df, live, seed)
    except (ValueError, RuntimeError, TypeError) as exc:
        return None, f"Optuna could not compute parameter importance ({exc})."
    return importances, (f"fANOVA importance (Optuna) of {len(live)} hyperparameters for the "
                         f"best validation accuracy over {len(df)} scored trials, early-stopped "
                         "and diverged ones included; the values sum to 1.")


def _optuna_importance(df: pd.DataFrame, specs: list[ParamSpec], seed: int) -> dict[str, float]:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {s.key: s.distribution.to_optuna(native(v) for v in df[col(s.key)].unique())
             for s in specs}
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        optuna.trial.create_trial(
            params={s.key: s.distribution.optuna_value(native(row[col(s.key)]))
                    for s in specs},
            distributions=dists, value=float(row.best_val_acc))
        for _, row in df.iterrows()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna flags the evaluator API as experimental
        result = optuna.importance.get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(seed=seed))
    return {k: float(v) for k, v in result.items()}


# ---------------------------------------------------------------- study-specific tables

def batch_noise_table(trials: pd.DataFrame, epochs: pd.DataFrame,
                      key: str = "train.batch_size") -> pd.DataFrame:
    """Per batch size: optimizer steps per epoch and the spread of per-step losses.

    `step_loss_std` is the median over every healthy epoch of every trial with that batch
    size (diverged epochs have none); smaller batches give noisier gradient steps.
    """
    t = with_schema(trials)
    cols = ["batch_size", "n_trials", "steps_per_epoch", "step_loss_std", "train_loss"]
    if col(key) not in t or epochs.empty:
        return pd.DataFrame(columns=cols)
    merged = epochs.merge(t[["trial_id", col(key)]], on="trial_id")
    rows = []
    for size, g in merged.groupby(col(key)):
        healthy = g[g.step_loss_std.map(_finite)]
        rows.append({"batch_size": native(size), "n_trials": int(g.trial_id.nunique()),
                     "steps_per_epoch": float(g.steps.astype(float).median()),
                     "step_loss_std": float(healthy.step_loss_std.median())
                     if len(healthy) else math.nan,
                     "train_loss": float(healthy.train_loss.median())
                     if len(healthy) else math.nan})
    return pd.DataFrame(rows, columns=cols)


def grad_groups(trials: pd.DataFrame, specs: list[ParamSpec]) -> pd.Series:
    """A label per trial from its discrete varied params (e.g. `depth=100, residual=True`)."""
    t = with_schema(trials)
    keys = [s.key for s in specs if is_discrete(s, t)]
    if not keys:
        return pd.Series(t.trial_id.astype(str).to_numpy(), index=t.trial_id)
    # a whole-section variant (key without a dot) is already a `k=v` label
    labels = t[[col(k) for k in keys]].apply(
        lambda r: ", ".join(str(native(v)) if "." not in k else f"{k.split('.')[-1]}="
                            f"{native(v)}" for k, v in zip(keys, r, strict=True)), axis=1)
    return pd.Series(labels.to_numpy(), index=t.trial_id)


def grad_flow_table(grads: pd.DataFrame, groups: pd.Series, epoch: str = "first"
                    ) -> pd.DataFrame:
    """Median gradient norm per (group, layer) at each trial's first or last recorded epoch.

    The first epoch shows gradients closest to initialisation, where vanishing or exploding
    gradients in deep plain nets are clearest.
    """
    cols = ["group", "layer", "name", "grad_norm", "n_trials"]
    if grads.empty:
        return pd.DataFrame(columns=cols)
    pick = grads.groupby("trial_id").epoch.transform("min" if epoch == "first" else "max")
    g = grads[grads.epoch == pick].copy()
    g["group"] = g.trial_id.map(groups).fillna(g.trial_id.astype(str))
    out = g.groupby(["group", "layer"], sort=True).agg(
        name=("name", "first"), grad_norm=("grad_norm", "median"),
        n_trials=("trial_id", "nunique")).reset_index()
    return out[cols]


def grad_ratio(flow: pd.DataFrame) -> pd.DataFrame:
    """Per group: gradient norm at the input layer ÷ at the output layer (≪1: vanishing),
    and how many layers got a gradient of exactly 0 (float underflow)."""
    rows = []
    for group, g in flow.groupby("group", sort=False):
        g = g.sort_values("layer")
        first, last = float(g.grad_norm.iloc[0]), float(g.grad_norm.iloc[-1])
        rows.append({"group": group, "layers": len(g), "input_grad_norm": first,
                     "output_grad_norm": last,
                     "input_over_output": first / last if last > 0 else math.nan,
                     "zero_layers": int((g.grad_norm <= 0).sum())})
    return pd.DataFrame(rows, columns=["group", "layers", "input_grad_norm",
                                       "output_grad_norm", "input_over_output", "zero_layers"])


def best_vs_last(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Best epoch against last epoch per trial, and how much stopping at the end lost."""
    t = with_schema(trials)
    ok = t.best_epoch.map(_finite) & t.final_epoch.map(_finite) & t.final_val_acc.map(_finite)
    t = t[ok]
    table = pd.DataFrame({"trial_id": t.trial_id, "best_epoch": t.best_epoch.astype(int),
                          "final_epoch": t.final_epoch.astype(int),
                          "best_val_acc": t.best_val_acc.astype(float),
                          "final_val_acc": t.final_val_acc.astype(float)}).reset_index(drop=True)
    table["val_drop"] = table.best_val_acc - table.final_val_acc
    n = len(table)
    summary = {"n_trials": n,
               "n_best_before_last": int((table.best_epoch < table.final_epoch).sum()),
               "median_val_drop": float(table.val_drop.median()) if n else math.nan,
               "max_val_drop": float(table.val_drop.max()) if n else math.nan}
    return table, summary


def mode_key(study: dict[str, Any], specs: list[ParamSpec]) -> str | None:
    """The varied key that names the transfer mode (e.g. `train.mode`), if there is one."""
    for s in specs:
        if s.categorical and re.search(r"(^|_)mode($|_)", s.key.split(".")[-1]):
            return s.key
    if "transfer" in str(study.get("name", "")):
        cats = [s.key for s in specs if s.categorical]
        return cats[0] if cats else None
    return None
