"""The driver's Tune callbacks that mirror a run into the tools users already look at:
optuna.db (optuna-dashboard), MLflow (`log: {mlflow: URI}`) and TensorBoard event files.

Every callback expands a reported result with `ray_files.member_rows` (THE expansion of one
report into tune_hw trials) and turns it into THE epoch row (`results.epoch_rows`) and, when a
trial ends, THE trials.parquet row (`results.trial_summary`), so the stores show what the
parquet files hold. Callbacks are pickled into Ray's tuner.pkl and come back on --resume:
they carry settings only and open their stores in `setup()`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from tune_hw import layout, optuna_store, ray_files, results
from tune_hw.mlflow_store import MlflowStore
from tune_hw.optuna_store import OptunaStore
from tune_hw.ranking import Ranking, finite
from tune_hw.results import METRIC_COLUMNS, TrialRecord
from tune_hw.storage import ObjectPath
from tune_hw.studies import Study

FAILED = "Ray reported the trial as failed"  # error text of a trial Tune ended in ERROR


def epoch_row(trial_id: str, config: dict[str, Any], row: dict[str, Any]
              ) -> dict[str, Any] | None:
    """One reported row as its epochs.parquet row; None for a row without an epoch."""
    rows = results.epoch_rows(TrialRecord(trial_id, config, [row]))
    return rows[0] if rows else None


def members(trial: Any, result: dict[str, Any]) -> list[tuple[str, dict, dict]]:
    return ray_files.member_rows(trial.trial_id, trial.config, result)


class StoreCallback(Callback):
    """Feeds a store (OptunaStore, MlflowStore: open, report, finish) from Tune's events."""

    def __init__(self, store: Any, run_dir: Path | ObjectPath, ranking: Ranking):
        self.store, self.run_dir, self.ranking = store, run_dir, ranking
        self._rows: dict[str, list[dict]] = defaultdict(list)  # member id -> reported rows

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": defaultdict(list)}

    def setup(self, **info: Any) -> None:
        self.store.open()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        for member_id, config, row in members(trial, result):
            self._rows[member_id].append(row)
            epoch = epoch_row(member_id, config, row)
            if epoch is not None:
                self.store.report(member_id, config, epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, FAILED)

    def _finish(self, trial: Any, error: str | None) -> None:
        """End each member as its trials.parquet row will say: from the trial's own rows file
        when it holds more than this driver saw (a resumed run saw only the newest epochs)."""
        on_disk = ray_files.trial_rows(self.run_dir / layout.trial_dir_name(trial.trial_id))
        expanded: dict[str, list[dict]] = defaultdict(list)
        for row in on_disk:
            for member_id, _, member_row in members(trial, row):
                expanded[member_id].append(member_row)
        for member_id, config, _ in members(trial, {}):  # {}: every member, also those that left
            seen = self._rows.pop(member_id, [])
            rows = expanded[member_id] if len(expanded[member_id]) >= len(seen) else seen
            record = TrialRecord(member_id, config, rows, error=error, ended=True)
            summary = results.trial_summary(record, results.epoch_rows(record), self.ranking)
            self.store.finish(member_id, config, summary)


class EpochTensorBoard(TBXLoggerCallback):
    """TensorBoard scalars named as in epochs.parquet (`val_acc`, `train_loss`, ...; diverged
    as 0/1) with step = epoch, in each tune_hw trial's directory of the run, flushed per epoch.

    It replaces Ray's TBXLoggerCallback (Tune adds its own only when none is given), which
    writes `ray/tune/<key>` by training_iteration (restarting after a restore) into the driver's
    staging directory, copied to the run only at experiment snapshots."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)
        self._writers: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writers": {}, "_trial_writer": {}, "_trial_result": {}}

    def log_trial_start(self, trial: Any) -> None:
        """Writers open on a trial's first result, one per tune_hw trial."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        for member_id, config, row in members(trial, result):
            epoch = epoch_row(member_id, config, row)
            if epoch is None:
                continue
            writer = self._writer(member_id)
            for key in METRIC_COLUMNS:
                value = float(epoch[key]) if finite(epoch[key]) or key == "diverged" else math.nan
                if not math.isnan(value):
                    writer.add_scalar(key, value, global_step=int(epoch["epoch"]))
            writer.flush()

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        for member_id, _, _ in members(trial, {}):  # {}: every member, also those that left
            writer = self._writers.pop(member_id, None)
            if writer is not None:
                writer.close()

    def _writer(self, member_id: str) -> Any:
        if member_id not in self._writers:
            trial_dir = self.run_dir / layout.trial_dir_name(member_id)
            trial_dir.mkdir(parents=True, exist_ok=True)
            self._writers[member_id] = self._summary_writer_cls(str(trial_dir), flush_secs=30)
        return self._writers[member_id]


def optuna_of(study: Study, run_dir: Path) -> OptunaStore:
    """The run's optuna.db store: study `<study>/<run>`, the study's distributions."""
    return OptunaStore(run_dir, optuna_store.study_name(study.name, Path(run_dir).name),
                       study.ranking, study.distributions)


def callbacks(study: Study, run_dir: Path | ObjectPath) -> list[Any]:
    """The driver's callbacks of a run: optuna.db, TensorBoard, and MLflow when asked for.

    optuna.db (SQLite) and the event files need a local or mounted run directory; a run on
    object storage gets Ray's own TensorBoard logger, which Ray syncs to the bucket."""
    local = isinstance(run_dir, Path)
    found = [StoreCallback(optuna_of(study, run_dir), run_dir, study.ranking),
             EpochTensorBoard(run_dir)] if local else []
    uri = study.log.get("mlflow")
    if uri:
        store = MlflowStore(uri, study.name, run_dir.name)
        found.append(StoreCallback(store, run_dir, study.ranking))
    return found


def sync_optuna(study: Study, run_dir: Path) -> None:
    """Make optuna.db match the run's parquet files (after the search, or an interrupt)."""
    run = results.load_run(run_dir)
    store = optuna_of(study, run_dir)
    store.open()
    store.sync(run.trials, run.epochs)
