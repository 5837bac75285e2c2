"""A run's Optuna storage, `optuna.db`: one Optuna study `<study>/<run>` with one trial per
tune_hw trial, for optuna-dashboard (`optuna-dashboard sqlite:///RUN/optuna.db`).

Only the driver writes it (tracking.StoreCallback while the search runs, then `sync` from the
parquet tables), so no trial worker ever opens the SQLite file. The search's own choices stay
with its searcher: this study mirrors what ran. States: COMPLETE completed, PRUNED
early-stopped, FAIL diverged or error, RUNNING while it runs, WAITING never started. The value
of a finished trial is the study's metric at its best epoch (THE ranking, in `results`); the
intermediate values are that metric per healthy epoch; test metrics are user attributes only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from tune_hw.distributions import Distribution
from tune_hw.layout import OPTUNA_FILE
from tune_hw.ranking import TRIAL_SCORE_COLUMNS, Ranking, finite, is_true
from tune_hw.results import CONFIG_PREFIX, is_missing

# tune_hw's trial status -> the Optuna state it ends in (running/pending trials stay open)
FINAL_STATES = {"completed": TrialState.COMPLETE, "early_stopped": TrialState.PRUNED,
                "diverged": TrialState.FAIL, "error": TrialState.FAIL}
OPEN_STATES = {"running": TrialState.RUNNING, "pending": TrialState.WAITING}
ID_ATTR = "tune_trial_id"  # the user attribute that ties an Optuna trial to a tune_hw trial


def study_name(study: str, run_name: str) -> str:
    """The Optuna study of a run: `<study>/<run>`."""
    return f"{study}/{run_name}"


class OptunaStore:
    """The Optuna study of one run in its `optuna.db`, opened lazily (it is pickled with the
    Tuner's callbacks: only settings travel, the connection is opened in `open`)."""

    def __init__(self, run_dir: Path, name: str, ranking: Ranking,
                 distributions: dict[str, Distribution]):
        self.url = f"sqlite:///{Path(run_dir) / OPTUNA_FILE}"
        self.name, self.ranking, self.distributions = name, ranking, distributions
        self._storage: Any = None
        self._study: Any = None
        self._trials: dict[str, tuple[int, TrialState]] = {}  # tune_hw id -> (Optuna id, state)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_storage": None, "_study": None, "_trials": {}}

    def open(self) -> None:
        """Open (or create) the study; trials it already holds (a resumed run) are found again
        by their tune_hw trial id."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines
        self._storage = optuna.storages.RDBStorage(self.url)
        self._study = optuna.create_study(
            storage=self._storage, study_name=self.name, load_if_exists=True,
            direction="maximize" if self.ranking.mode == "max" else "minimize")
        self._trials = {t.user_attrs[ID_ATTR]: (t._trial_id, t.state)
                        for t in self._study.get_trials(deepcopy=False) if ID_ATTR in t.user_attrs}

    def start(self, trial_id: str, config: dict[str, Any],
              state: TrialState = TrialState.RUNNING) -> int:
        """The Optuna trial of a tune_hw trial, created with its parameters when new; a waiting
        trial that starts becomes RUNNING."""
        known = self._trials.get(trial_id)
        if known is None:
            params = optuna_params(self.distributions, config)
            template = optuna.trial.create_trial(
                state=state, params=params, user_attrs={ID_ATTR: trial_id},
                distributions={k: d.to_optuna() for k, d in self.distributions.items()
                               if k in params})
            known = (self._storage.create_new_trial(self._study._study_id,
                                                    template_trial=template), state)
        elif known[1] == TrialState.WAITING and state == TrialState.RUNNING:
            self._storage.set_trial_state_values(known[0], TrialState.RUNNING)
            known = (known[0], TrialState.RUNNING)
        self._trials[trial_id] = known
        return known[0]

    def report(self, trial_id: str, config: dict[str, Any], row: dict[str, Any]) -> None:
        """One epoch row (as in epochs.parquet): its metric as the epoch's intermediate value.
        A diverged epoch has none; a re-reported epoch (after a restore) overwrites."""
        optuna_id = self.start(trial_id, config)
        if self._trials[trial_id][1].is_finished():
            return
        value = row.get(self.ranking.metric)
        if not is_true(row.get("diverged")) and finite(value):
            self._storage.set_trial_intermediate_value(optuna_id, int(row["epoch"]), float(value))

    def finish(self, trial_id: str, config: dict[str, Any], summary: dict[str, Any]) -> None:
        """End the trial as its trials.parquet row (`summary`) says; a finished trial stays as
        it is (Optuna freezes it), a running or pending one stays open."""
        state = FINAL_STATES.get(summary["status"]) or OPEN_STATES.get(summary["status"])
        optuna_id = self.start(trial_id, config, OPEN_STATES.get(summary["status"],
                                                                  TrialState.RUNNING))
        if self._trials[trial_id][1].is_finished() or state is None or not state.is_finished():
            return
        for key, column in (("status", "status"), ("test_acc", "test_acc_at_best"),
                            ("best_epoch", "best_epoch")):
            value = plain(summary.get(column))
            if value is not None:  # before the state: a finished trial takes no attributes
                self._storage.set_trial_user_attr(optuna_id, key, value)
        score = plain(summary.get(TRIAL_SCORE_COLUMNS[self.ranking.metric]))
        if state == TrialState.PRUNED:  # Optuna's rule: a pruned trial's value is its last
            steps = self._storage.get_trial(optuna_id).intermediate_values
            score = steps[max(steps)] if steps else None
        if state == TrialState.COMPLETE and score is None:
            state = TrialState.FAIL  # a COMPLETE trial needs a value
        values = [score] if score is not None and state != TrialState.FAIL else None
        self._storage.set_trial_state_values(optuna_id, state, values)
        self._trials[trial_id] = (optuna_id, state)

    def sync(self, trials: pd.DataFrame, epochs: pd.DataFrame) -> None:
        """Make the study match the run's tables: create the trials it lacks, set every healthy
        epoch's value and end what has ended. Idempotent; it mends what the callback missed
        (an interrupted driver, trials from before a resume)."""
        by_trial = {tid: rows for tid, rows in epochs.groupby("trial_id", sort=False)}
        for summary in trials.to_dict("records"):
            config = {k.removeprefix(CONFIG_PREFIX): plain(v) for k, v in summary.items()
                      if k.startswith(CONFIG_PREFIX)}
            trial_id = str(summary["trial_id"])
            self.start(trial_id, config, OPEN_STATES.get(summary["status"], TrialState.RUNNING))
            rows = by_trial.get(summary["trial_id"])
            for row in ([] if rows is None else rows.to_dict("records")):
                self.report(trial_id, config, row)
            self.finish(trial_id, config, summary)


def optuna_params(distributions: dict[str, Distribution], config: dict[str, Any]
                  ) -> dict[str, Any]:
    """The searched values of a flat config as Optuna parameters; a whole searched section
    (model: {grid: [{name: mlp}, {name: cnn}]}) is the mapping its dotted keys match."""
    params = {}
    for key, dist in distributions.items():
        if key in config and not is_missing(config[key]):
            params[key] = dist.optuna_value(plain(config[key]))
            continue
        match = [v for v in dist.mappings()
                 if all(plain(config.get(f"{key}.{k}")) == x for k, x in v.items())]
        if match:
            params[key] = dist.optuna_value(match[0])
    return params


def plain(value: Any) -> Any:
    """A table cell as a plain Python value (numpy scalars unwrapped); None when missing."""
    value = value.item() if hasattr(value, "item") else value
    if value is pd.NA or is_missing(value):
        return None
    return None if isinstance(value, float) and not math.isfinite(value) else value
