"""Selection: did validation pick the config that is best on test? Rank correlations, the
winner, selection regret and optimism, a bootstrap over evaluation examples, their reading in
plain words, and the leaderboard by validation with test beside it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tune_hw.analysis.params import ParamSpec
from tune_hw.analysis.trials import N_BOOTSTRAP, col, native, scored
from tune_hw.ranking import DEFAULT_RANKING, Ranking, finite

STRONG_RANK, MODERATE_RANK = 0.7, 0.4  # |Spearman| thresholds for the plain-words verdict
CONFIDENT_P = 0.8  # bootstrap P above which validation's choice is called reliable


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
    if not finite(rho):
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
        lines.append(_bootstrap_sentence(p))
    if finite(s["spearman"]):
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


def _bootstrap_sentence(p: float) -> str:
    """What the bootstrap probability that validation picks the test winner means."""
    if p >= CONFIDENT_P:
        return (f"With re-drawn evaluation examples validation would pick the test winner "
                f"{p:.0%} of the time: its choice among these configs can be trusted.")
    return (f"With re-drawn evaluation examples validation would pick the test winner only "
            f"{p:.0%} of the time: the leading configs are within evaluation noise of each "
            "other, so treat them as equally good (or use a larger validation split) rather "
            "than crowning one.")


def _fmt(x: float) -> str:
    return f"{x:.2f}" if finite(x) else "undefined"


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
