"""Per-trial values of the claim metrics, and how to redraw them under evaluation noise.

`trial_values(metric, trials, epochs, grads, sizes)` gives one value per row of `trials`
(NaN where the trial does not have it) and a `draw(rng, n_boot)` that re-evaluates every
trial `n_boot` times: an accuracy measured on n examples is redrawn as Binomial(n, acc) / n
(the examples of that split drawn again), and whatever is derived from accuracies (the gap,
the epoch a curve first reaches an accuracy) is derived from the redrawn ones. Losses, step
counts, loss spreads and gradient norms have no such model and are not redrawn.

`resample_positions` is the other half of the bootstrap: trials drawn again within a group,
repeats within each config where the run has repeats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tune_hw.claims import Metric

FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # a zero gradient norm is float underflow
ACCURACIES = {"best_val_acc": "val", "test_acc_at_best": "test", "train_acc_at_best": "train",
              "final_val_acc": "val", "final_test_acc": "test"}


@dataclass
class TrialValues:
    """One metric for every trial: the measured values and a redraw under evaluation noise."""

    point: np.ndarray  # (T,), NaN where not measurable
    draw: Callable[[np.random.Generator, int], np.ndarray]  # (n_boot, T)
    noisy: bool  # whether `draw` redraws evaluation examples
    # (T,) True where the value is a stand-in, not a measurement (an accuracy never reached
    # counts one epoch past the last): trials that all stand in say nothing about the claim
    censored: np.ndarray | None = None


def split_sizes(trials: pd.DataFrame, study: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per trial, how many examples each accuracy was measured on (NaN: unknown).

    The trial's own columns (results.SPLIT_SIZE_COLUMNS: `train_eval_size`, the training rows
    its train accuracy is measured on, `val_size`, `test_size`) win; otherwise study.yaml
    `data_sizes` (`train_eval`, else `train`, `val`, `test`) of runs before them.
    """
    sizes = study.get("data_sizes") or {}
    fallback = {"train": sizes.get("train_eval", sizes.get("train")), "val": sizes.get("val"),
                "test": sizes.get("test")}
    columns = {"train": "train_eval_size", "val": "val_size", "test": "test_size"}
    out = {}
    for split, column in columns.items():
        default = math.nan if fallback[split] is None else float(fallback[split])
        values = trials[column].astype(float) if column in trials else \
            pd.Series(math.nan, index=trials.index)
        out[split] = values.fillna(default).to_numpy(float)
    return out


def redraw(acc: np.ndarray, n: np.ndarray, rng: np.random.Generator, n_boot: int
           ) -> np.ndarray:
    """(n_boot, T): each accuracy as Binomial(n, acc) / n; unknown n keeps the value."""
    acc, n = np.asarray(acc, float), np.asarray(n, float)
    out = np.broadcast_to(acc, (n_boot, *acc.shape)).copy()
    ok = np.isfinite(acc) & np.isfinite(n) & (n > 0)
    if ok.any():
        k = rng.binomial(n[ok].astype(np.int64), np.clip(acc[ok], 0, 1),
                         size=(n_boot, int(ok.sum())))
        out[:, ok] = k / n[ok]
    return out


def resample_positions(positions: np.ndarray, configs: np.ndarray, rng: np.random.Generator,
                       n_boot: int) -> tuple[np.ndarray, bool]:
    """(n_boot, len(positions)) trial positions drawn with replacement, and whether by config.

    With repeats (some config holds 2+ of the positions) each config keeps its number of
    trials and only its repeats are drawn again, so the interval is about these configs and
    their seeds; without, the trials themselves are drawn again (they stand in for seeds).
    """
    positions = np.asarray(positions)
    _, inverse, counts = np.unique(configs[positions], return_inverse=True, return_counts=True)
    if counts.max(initial=0) < 2:
        return positions[rng.integers(0, len(positions), (n_boot, len(positions)))], False
    parts = []
    for c in range(len(counts)):
        members = positions[inverse == c]
        parts.append(members[rng.integers(0, len(members), (n_boot, len(members)))])
    return np.hstack(parts), True


def config_ids(trials: pd.DataFrame) -> np.ndarray:
    """Each trial's config: `config_id` where the run has repeats, else its own trial id."""
    ids = trials.trial_id.astype(str)
    if "config_id" in trials:
        ids = trials.config_id.astype(object).where(trials.config_id.notna(), ids).astype(str)
    return ids.to_numpy()


# ------------------------------------------------------------------------------ metrics

def trial_values(metric: Metric, trials: pd.DataFrame, epochs: pd.DataFrame,
                 grads: pd.DataFrame, sizes: dict[str, np.ndarray]) -> TrialValues:
    """The metric of every trial (see tune_hw.claims for what each one measures)."""
    name = metric.name
    if name in ACCURACIES:
        return _accuracy(trials[name].astype(float).to_numpy(), sizes[ACCURACIES[name]])
    if name == "gap":
        return _gap(trials, sizes)
    if name in ("epochs_to_acc", "steps_to_acc"):
        return _to_acc(trials, epochs, sizes["val"], metric.param, steps=name == "steps_to_acc")
    point = {"val_loss_at_best": lambda: trials.val_loss_at_best.astype(float).to_numpy(),
             "best_epoch_before_final": lambda: (trials.final_epoch.astype(float)
                                                 - trials.best_epoch.astype(float)).to_numpy(),
             "steps_per_epoch": lambda: _per_trial(trials, _healthy(epochs, False),
                                                   lambda e: e.steps.astype(float).median()),
             "step_loss_noise": lambda: _per_trial(trials, _healthy(epochs, True), _noise),
             "grad_ratio": lambda: _grad_ratio(trials, grads, metric.param),
             "val_below_train_running": lambda: _below_running(trials, epochs, metric.param),
             }[name]()
    return _exact(point)


def _exact(point: np.ndarray) -> TrialValues:
    point = np.asarray(point, float)
    return TrialValues(point, lambda rng, b: np.broadcast_to(point, (b, len(point))), False)


def _accuracy(acc: np.ndarray, n: np.ndarray) -> TrialValues:
    return TrialValues(acc, lambda rng, b: redraw(acc, n, rng, b), bool(np.isfinite(n).any()))


def _gap(trials: pd.DataFrame, sizes: dict[str, np.ndarray]) -> TrialValues:
    train = trials.train_acc_at_best.astype(float).to_numpy()
    val = trials.best_val_acc.astype(float).to_numpy()
    return TrialValues(train - val, lambda rng, b: redraw(train, sizes["train"], rng, b)
                       - redraw(val, sizes["val"], rng, b),
                       bool(np.isfinite(sizes["val"]).any()))


def _healthy(epochs: pd.DataFrame, measured: bool) -> pd.DataFrame:
    """Epochs that trained normally (a diverged epoch has sentinel metrics, not measurements)."""
    e = epochs
    if "diverged" in e:
        e = e[~e.diverged.fillna(False).astype(bool)]
    if measured:
        e = e[np.isfinite(e.step_loss_std.astype(float))]
    return e


def _per_trial(trials: pd.DataFrame, epochs: pd.DataFrame,
               reduce: Callable[[pd.DataFrame], float]) -> np.ndarray:
    by_trial = {tid: reduce(g.sort_values("epoch")) for tid, g in epochs.groupby("trial_id")}
    return np.array([by_trial.get(tid, math.nan) for tid in trials.trial_id], float)


def _noise(e: pd.DataFrame) -> float:
    """Median per-step loss spread; the first epoch's spread is mostly the loss falling."""
    spread = e.step_loss_std.astype(float)
    return float(spread.iloc[1:].median() if len(spread) > 1 else spread.median())


def _grad_ratio(trials: pd.DataFrame, grads: pd.DataFrame, which: str) -> np.ndarray:
    """log10(first-layer ÷ head gradient norm) at each trial's first (or last) epoch."""
    def ratio(g: pd.DataFrame) -> float:
        g = g[g.epoch == (g.epoch.min() if which == "first" else g.epoch.max())]
        g = g.sort_values("layer")
        first, head = float(g.grad_norm.iloc[0]), float(g.grad_norm.iloc[-1])
        if len(g) < 2 or not head > 0:
            return math.nan
        return math.log10(max(first, FLOAT32_TINY) / head)
    if grads.empty:
        return np.full(len(trials), math.nan)
    return _per_trial(trials, grads, ratio)


def _below_running(trials: pd.DataFrame, epochs: pd.DataFrame, epoch: int) -> np.ndarray:
    if "train_loss_running" not in epochs:
        return np.full(len(trials), math.nan)
    e = _healthy(epochs, False)
    e = e[e.epoch == epoch]
    return _per_trial(trials, e, lambda g: float(g.train_loss_running.iloc[0]
                                                 - g.val_loss.iloc[0]))


def _to_acc(trials: pd.DataFrame, epochs: pd.DataFrame, n_val: np.ndarray, acc: float,
            steps: bool) -> TrialValues:
    """First epoch (or steps up to it) whose val accuracy reaches `acc`; never: one past."""
    healthy = _healthy(epochs, False)
    curves = {tid: g.sort_values("epoch") for tid, g in healthy.groupby("trial_id")}
    rows = [curves.get(tid) for tid in trials.trial_id]

    def crossing(val: np.ndarray, curve: pd.DataFrame) -> np.ndarray:
        """Per row of `val` (draws × epochs): the epoch (or steps) of the first crossing."""
        reached = val >= acc
        first = np.where(reached.any(axis=1), reached.argmax(axis=1), len(curve))
        if steps:
            done = np.cumsum(curve.steps.astype(float).to_numpy())
            done = np.append(done, done[-1] + curve.steps.iloc[-1])
            return done[first]
        numbers = curve.epoch.astype(float).to_numpy()
        return np.append(numbers, numbers[-1] + 1)[first]

    def draw(rng: np.random.Generator, b: int) -> np.ndarray:
        out = np.full((b, len(rows)), math.nan)
        for i, curve in enumerate(rows):
            if curve is not None and len(curve):
                val = curve.val_acc.astype(float).to_numpy()
                out[:, i] = crossing(redraw(val, np.full(len(val), n_val[i]), rng, b), curve)
        return out

    point = np.array([crossing(c.val_acc.astype(float).to_numpy()[None, :], c)[0]
                      if c is not None and len(c) else math.nan for c in rows], float)
    never = np.array([c is not None and len(c) and not (c.val_acc.astype(float) >= acc).any()
                      for c in rows], bool)
    return TrialValues(point, draw, bool(np.isfinite(n_val).any()), never)
