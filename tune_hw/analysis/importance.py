"""Parameter importance: Optuna's fANOVA evaluator over the scored trials, or a sentence saying
why it cannot be computed."""

from __future__ import annotations

import warnings

import pandas as pd

from tune_hw.analysis.params import ParamSpec
from tune_hw.analysis.trials import col, native, scored


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
