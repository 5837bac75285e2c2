"""Per-config statistics over repeats: where the leaderboard's differences are real.

A config is the set of trials sharing a `config_id` (its repeats, one seed each); a run
without repeats has one trial per config. Intervals are percentile bootstraps over both
sources of noise (see tune_hw.analysis.findings): the repeats of each config drawn again, and every
accuracy redrawn as Binomial(n, acc) / n on its split's n examples. With one repeat per config
only the evaluation noise is left, and the interval says so by being narrow: add repeats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tune_hw.analysis import trial_metrics as TM
from tune_hw.analysis.selection import rank_correlations
from tune_hw.analysis.trials import N_BOOTSTRAP, scored
from tune_hw.ranking import DEFAULT_RANKING
from tune_hw.results import CONFIG_PREFIX

TOP_FRACTION, MIN_TOP = 0.25, 5  # rank agreement among the top quarter by validation, >= 5


def config_table(trials: pd.DataFrame, study: dict[str, Any], n_boot: int = N_BOOTSTRAP,
                 seed: int = 0) -> pd.DataFrame:
    """Per config, best by validation first: repeats, mean val and test accuracy, 95% CIs."""
    t, members = _configs(trials)
    cols = ["config_id", "n_repeats", "val_mean", "val_low", "val_high", "test_mean",
            "test_low", "test_high"]
    if not members:
        return pd.DataFrame(columns=cols)
    rng = np.random.default_rng(seed)
    sizes = TM.split_sizes(t, study)
    out = pd.DataFrame({"config_id": list(members), "n_repeats": [len(m) for m in
                                                                   members.values()]})
    for name, column, split in (("val", "best_val_acc", "val"),
                                ("test", "test_acc_at_best", "test")):
        point, boot = _boot_means(t, column, sizes[split], members, rng, n_boot)
        out[f"{name}_mean"] = point
        out[f"{name}_low"], out[f"{name}_high"] = np.percentile(boot, [2.5, 97.5], axis=1)
    varied = [c for c in t.columns if c.startswith(CONFIG_PREFIX) and
              t[c].astype(str).nunique() > 1]
    first = [m[0] for m in members.values()]
    for c in varied:
        out[c.removeprefix(CONFIG_PREFIX)] = t[c].to_numpy()[first]
    rank = {c: i for i, c in enumerate(_ranked(t, members))}
    return out.iloc[np.argsort([rank[c] for c in out.config_id])].reset_index(drop=True)


def winner_vs_runner_up(trials: pd.DataFrame, study: dict[str, Any],
                        n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Is the validation winner's lead over the runner-up larger than seed and eval noise?

    The difference of their mean validation accuracies with a 95% interval from resampling
    both configs' repeats and redrawing their validation examples; `distinguishable` when
    the interval excludes 0.
    """
    t, members = _configs(trials)
    out: dict[str, Any] = {"winner": None, "runner_up": None, "val_diff": math.nan,
                           "ci_low": math.nan, "ci_high": math.nan, "distinguishable": None}
    if len(members) < 2:
        out["sentence"] = "Fewer than two configs have scores: there is no runner-up."
        return out
    top = {c: members[c] for c in _ranked(t, members)[:2]}
    sizes = TM.split_sizes(t, study)
    point, boot = _boot_means(t, "best_val_acc", sizes["val"], top,
                              np.random.default_rng(seed), n_boot)
    low, high = np.percentile(boot[0] - boot[1], [2.5, 97.5])
    (w, wm), (r, rm) = top.items()
    out.update(winner=w, runner_up=r, n_winner=len(wm), n_runner_up=len(rm),
               val_diff=float(point[0] - point[1]), ci_low=float(low), ci_high=float(high),
               distinguishable=bool(low > 0))
    noise = "seed variance and evaluation noise" if max(len(wm), len(rm)) > 1 else \
        "evaluation noise (one seed each: seed variance is not counted; add repeats)"
    verdict = "is distinguishable from" if low > 0 else "is not distinguishable from"
    out["sentence"] = (f"The validation winner ({w}, {_seeds(len(wm))}) leads the runner-up "
                       f"({r}, {_seeds(len(rm))}) by {point[0] - point[1]:.3f} validation accuracy "
                       f"(95% CI {low:.3f} to {high:.3f}) and {verdict} it once {noise} are "
                       "counted.")
    return out


def rank_agreement(trials: pd.DataFrame, top_fraction: float = TOP_FRACTION,
                   min_top: int = MIN_TOP) -> dict[str, Any]:
    """Spearman and Kendall between config means on val and test: all, and the top ones.

    Over all configs the easy calls dominate (broken configs last on both); among the top
    quarter by validation (at least `min_top`) is where selection actually happens.
    """
    t, members = _configs(trials)
    val = np.array([t.best_val_acc.to_numpy(float)[m].mean() for m in members.values()])
    test = np.array([t.test_acc_at_best.to_numpy(float)[m].mean() for m in members.values()])
    k = min(len(val), max(min_top, math.ceil(top_fraction * len(val))))
    top = np.argsort(-val, kind="stable")[:k]
    return {"all": {"n_configs": len(val), **rank_correlations(val, test)},
            "top": {"n_configs": k, "top_fraction": top_fraction,
                    **rank_correlations(val[top], test[top])}}


def early_stopping_note(trials: pd.DataFrame) -> dict[str, Any]:
    """How much earlier early-stopped trials were compared than finished ones, in words."""
    t = scored(trials)
    early, done = t[t.status == "early_stopped"], t[t.status == "completed"]
    out = {"n_early_stopped": len(early), "n_completed": len(done),
           "median_final_epoch_early": _median(early.final_epoch),
           "median_final_epoch_completed": _median(done.final_epoch), "sentence": None}
    if len(early) and len(done):
        out["sentence"] = (
            f"{len(early)} of {len(t)} scored trials were stopped early by the scheduler "
            f"(median last epoch {out['median_final_epoch_early']:g}, against "
            f"{out['median_final_epoch_completed']:g} for the {len(done)} that finished): their "
            "validation and test scores come from an earlier point of training, so a rank "
            "correlation over all trials mixes training length with config quality.")
    return out


def _configs(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Scored trials and the row positions of each config, in order of first appearance."""
    t = scored(trials)
    ids = TM.config_ids(t)
    order = list(dict.fromkeys(ids))
    return t, {c: np.flatnonzero(ids == c) for c in order}


def _ranked(t: pd.DataFrame, members: dict[str, np.ndarray]) -> list[str]:
    """Config ids best first by the ranking of trials, applied to config means (mean val
    accuracy, then lower mean val loss, then appearance)."""
    means = pd.DataFrame({column: [t[column].to_numpy(float)[m].mean() for m in
                                   members.values()]
                          for column in ("best_val_acc", "val_loss_at_best")})
    return [list(members)[i] for i in DEFAULT_RANKING.order(means)]


def _boot_means(t: pd.DataFrame, column: str, n: np.ndarray, members: dict[str, np.ndarray],
                rng: np.random.Generator, n_boot: int) -> tuple[np.ndarray, np.ndarray]:
    """Per config: the mean of `column`, and (configs × n_boot) bootstrap means."""
    acc = t[column].to_numpy(float)
    draws = TM.redraw(acc, n, rng, n_boot)
    ids = TM.config_ids(t)
    point, boot = [], []
    for m in members.values():
        idx, _ = TM.resample_positions(m, ids, rng, n_boot)
        point.append(acc[m].mean())
        boot.append(np.take_along_axis(draws, idx, axis=1).mean(axis=1))
    return np.array(point), np.array(boot)


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n != 1 else "")


def _median(values: pd.Series) -> float:
    return float(values.astype(float).median()) if len(values) else math.nan
