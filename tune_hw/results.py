"""The results contract: the parquet schema, building its tables, atomic writes, `load_run`.

A run directory holds `trials.parquet`, `epochs.parquet`, `grads.parquet` (when gradient
tracking was on) and `study.yaml` (file names in `layout`), next to Ray's own experiment files.
Tables are built from `TrialRecord`s, what a search produced for each trial (Ray's files of a
run are read as text by `ray_files`), with the study's `ranking.Ranking`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tune_hw import strict_yaml
from tune_hw.errors import UserError
from tune_hw.layout import EPOCHS_FILE, GRADS_FILE, STUDY_FILE, TRIALS_FILE
from tune_hw.ranking import DEFAULT_RANKING, Ranking, finite, is_true
from tune_hw.storage import ObjectPath, atomic_write, location

__all__ = ["atomic_write"]  # re-exported: the one atomic write lives in storage

EPOCH_COLUMNS = [
    "trial_id", "group_id", "epoch", "steps", "train_loss", "train_acc", "val_loss", "val_acc",
    "test_loss", "test_acc", "lr", "epoch_s", "samples_per_s", "step_loss_std", "diverged",
    "train_loss_running",  # the mean of the epoch's step losses (train_loss: after the epoch)
]
# measured once per epoch; a diverged epoch has none (NaN), whatever the searcher was shown
MEASURED_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                    "step_loss_std", "train_loss_running")
# each trial's own split sizes, and the training rows its train accuracy is measured on
SPLIT_SIZE_COLUMNS = ("train_size", "val_size", "test_size", "train_eval_size")
REPEAT_COLUMNS = ("config_id", "repeat")  # the repeats (seeds) of one config share config_id
TRIAL_SUMMARY_COLUMNS = [
    "best_epoch", "best_val_acc", "val_loss_at_best", "train_acc_at_best", "test_acc_at_best",
    "final_epoch", "final_val_acc", "final_test_acc", "wall_s", "node_id", "gpu_ids", "seed",
    "num_params", *SPLIT_SIZE_COLUMNS, *REPEAT_COLUMNS, "error",
]
# set by the results from the Tune trial a row came from, never reported by the trial itself
ASSIGNED_COLUMNS = ("trial_id", "group_id")
REPORTED_COLUMNS = [c for c in EPOCH_COLUMNS if c not in ASSIGNED_COLUMNS]  # epoch, metrics
METRIC_COLUMNS = [c for c in REPORTED_COLUMNS if c != "epoch"]  # what trackers log by epoch
GRAD_COLUMNS = ["trial_id", "group_id", "epoch", "layer", "name", "grad_norm"]
# columns added after runs were first written, and what a run from before them means (the
# name of a column to copy, or a value): before fusion each trial was its own group; before
# repeats each trial its own config, repeat 0; sizes and the running loss were not measured
LATER_COLUMNS: dict[str, Any] = {"group_id": "trial_id", "config_id": "trial_id", "repeat": 0,
                                 "train_eval_size": math.nan, "train_loss_running": math.nan}
# plus one config/<key> each
TRIAL_COLUMNS = ["trial_id", "group_id", "status", *TRIAL_SUMMARY_COLUMNS]
STATUSES = ("completed", "early_stopped", "diverged", "error", "running", "pending")
FINAL_STATUSES = STATUSES[:4]  # a trial with one of these will not run again

CONFIG_PREFIX = "config/"  # trials.parquet holds each hyperparameter as config/<dotted key>
# a trial's repeat index in its config: Ray's Repeater sets this key (ray.tune.search.repeater.
# TRIAL_INDEX), the grid and random searches a grid over it; the trial's seed is train.seed + it
REPEAT_KEY = "__trial_index__"

# THE column types of the tables (README, Results), applied before every write, so DuckDB,
# polars and pandas read one type per column, in empty tables and all-missing columns too:
# "str" text (may be missing), "Int64" a whole number that may be missing, "float64" (NaN is
# written as null), "bool". A config/<key> column takes the type of its values (`value_dtype`).
_FLOAT = "float64"
EPOCH_DTYPES = {"trial_id": "str", "group_id": "str", "epoch": "int64", "steps": "Int64",
                "diverged": "bool"}
EPOCH_DTYPES.update({c: _FLOAT for c in EPOCH_COLUMNS if c not in EPOCH_DTYPES})
TRIAL_DTYPES = {
    "trial_id": "str", "group_id": "str", "status": "str",
    "best_epoch": _FLOAT,  # NaN when the trial had no healthy epoch (it diverged in its first)
    **dict.fromkeys(["best_val_acc", "val_loss_at_best", "train_acc_at_best",
                     "test_acc_at_best"], _FLOAT),
    "final_epoch": "int64", "final_val_acc": _FLOAT, "final_test_acc": _FLOAT, "wall_s": _FLOAT,
    "node_id": "str", "gpu_ids": "str", "seed": "Int64", "num_params": "Int64",
    **dict.fromkeys(SPLIT_SIZE_COLUMNS, "Int64"), "config_id": "str", "repeat": "Int64",
    "error": "str",
}
GRAD_DTYPES = {"trial_id": "str", "group_id": "str", "epoch": "int64", "layer": "int64",
               "name": "str", "grad_norm": _FLOAT}


@dataclass
class TrialRecord:
    """What a search produced for one trial: its config, every reported epoch, its error.

    `ended` is Ray's word that the trial stopped (finished, stopped early or failed);
    a trial of an interrupted search has not ended. `group_id` is the Tune trial a fused
    member trained in (None: the trial is its own Tune trial).
    """

    trial_id: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    error: str | None = None
    ended: bool = True
    group_id: str | None = None


@dataclass
class Run:
    """A run directory read back: the three tables and the resolved study."""

    path: Path | ObjectPath
    trials: pd.DataFrame
    epochs: pd.DataFrame
    grads: pd.DataFrame
    study: dict[str, Any]


def epoch_rows(record: TrialRecord) -> list[dict[str, Any]]:
    """One row per epoch; a retried epoch (after a restore) keeps its latest report.

    A diverged epoch keeps its flag and loses its measurements: the finite sentinels it
    reported exist for the searcher and ASHA only.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in record.rows:
        if "epoch" in row and row["epoch"] is not None and not is_missing(row["epoch"]):
            by_epoch[int(row["epoch"])] = row
    out = []
    for epoch in sorted(by_epoch):
        row = {"trial_id": record.trial_id, "group_id": record.group_id or record.trial_id,
               **{c: by_epoch[epoch].get(c) for c in REPORTED_COLUMNS}}
        row["diverged"] = is_true(row["diverged"])
        if row["diverged"]:
            row.update(dict.fromkeys(MEASURED_COLUMNS, math.nan))
        out.append(row)
    return out


def trial_status(record: TrialRecord, epochs: list[dict]) -> str:
    """completed | early_stopped | diverged | error | running | pending (search interrupted)."""
    last = record.rows[-1] if record.rows else {}
    if is_true(last.get("diverged")):
        return "diverged"
    if trial_error(record):
        return "error"
    target = int(record.config.get("train.epochs", 0) or 0)
    final_epoch = epochs[-1]["epoch"] if epochs else 0
    if final_epoch >= target > 0:
        return "completed"
    if record.ended:
        return "early_stopped"
    return "running" if epochs else "pending"


def trial_error(record: TrialRecord) -> str | None:
    """Why a trial failed: Ray's error, or the error the trial reported and ended on
    (a configuration error, which no retry can mend, is reported instead of raised)."""
    if record.error:
        return record.error
    reported = record.rows[-1].get("error") if record.rows else None
    return reported if isinstance(reported, str) and reported else None


def trial_summary(record: TrialRecord, epochs: list[dict], ranking: Ranking = DEFAULT_RANKING
                  ) -> dict[str, Any]:
    """One `trials.parquet` row: status, config, best epoch (by `ranking`), final metrics.

    A trial with no healthy epoch (it diverged in its first) has no best epoch: NaN.
    """
    last = record.rows[-1] if record.rows else {}
    best = ranking.best_epoch(epochs) or {}
    final = epochs[-1] if epochs else {}
    # the sum of the epochs' report times (a retried epoch's latest), not Ray's time_total_s:
    # that restarts when a trial resumes (--resume, or a retry), losing the epochs before
    reports = {r["epoch"]: r for r in record.rows if isinstance(r.get("epoch"), int)}
    wall_s = sum(float(r.get("time_this_iter_s") or r.get("epoch_s") or 0.0)
                 for r in reports.values())
    sized = next((r for r in reversed(record.rows) if finite(r.get("train_size"))), {})
    config = {k: v for k, v in record.config.items() if k != REPEAT_KEY}
    row = {
        "trial_id": record.trial_id,
        "group_id": record.group_id or record.trial_id,
        "status": trial_status(record, epochs),
        **{f"{CONFIG_PREFIX}{k}": _parquet_safe(v) for k, v in sorted(config.items())},
        "best_epoch": best.get("epoch"),
        "best_val_acc": best.get("val_acc"),
        "val_loss_at_best": best.get("val_loss"),
        "train_acc_at_best": best.get("train_acc"),
        "test_acc_at_best": best.get("test_acc"),
        "final_epoch": final.get("epoch", 0),
        "final_val_acc": final.get("val_acc"),
        "final_test_acc": final.get("test_acc"),
        "wall_s": wall_s,
        "node_id": last.get("node_id"),
        "gpu_ids": last.get("gpu_ids"),
        "seed": last.get("seed", record.config.get("train.seed")),
        "num_params": last.get("num_params"),
        **{c: sized.get(c) for c in SPLIT_SIZE_COLUMNS},
        "config_id": config_id(config), "repeat": int(record.config.get(REPEAT_KEY) or 0),
        "error": trial_error(record),
    }
    return row


def config_id(config: dict[str, Any]) -> str:
    """The id the repeats of one config share: a digest of its values, the repeat index left
    out (the same values sampled twice are one config)."""
    text = json.dumps({k: v for k, v in config.items() if k != REPEAT_KEY}, sort_keys=True,
                      default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def grad_rows(record: TrialRecord) -> list[dict[str, Any]]:
    """Per-layer gradient norms, where the trainable reported them (layers input → output)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in record.rows:
        if isinstance(row.get("grad_norms"), (list, tuple)):
            by_epoch[int(row["epoch"])] = row
    out = []
    for epoch, row in sorted(by_epoch.items()):
        pairs = zip(row["grad_layers"], row["grad_norms"], strict=True)
        for layer, (name, norm) in enumerate(pairs):
            out.append({"trial_id": record.trial_id,
                        "group_id": record.group_id or record.trial_id, "epoch": epoch,
                        "layer": layer, "name": name, "grad_norm": float(norm)})
    return out


def build_tables(records: Iterable[TrialRecord], ranking: Ranking = DEFAULT_RANKING
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Turn trial records into the (trials, epochs, grads) DataFrames of the schema."""
    trials, epochs, grads = [], [], []
    for record in records:
        rows = epoch_rows(record)
        epochs.extend(rows)
        trials.append(trial_summary(record, rows, ranking))
        grads.extend(grad_rows(record))
    trials_df = typed(pd.DataFrame(trials, columns=_trial_columns(trials)), TRIAL_DTYPES)
    epochs_df = typed(pd.DataFrame(epochs, columns=EPOCH_COLUMNS), EPOCH_DTYPES)
    grads_df = typed(pd.DataFrame(grads, columns=GRAD_COLUMNS), GRAD_DTYPES)
    return trials_df, epochs_df, grads_df


def typed(frame: pd.DataFrame, dtypes: dict[str, str]) -> pd.DataFrame:
    """`frame` with the schema's column types; a column the schema does not name (config/<key>,
    columns added later) takes the type of its values."""
    return frame.astype({c: dtypes.get(c) or value_dtype(frame[c]) for c in frame.columns})


def value_dtype(column: pd.Series) -> str:
    """One type for a column of values: bool, whole numbers, numbers, else text."""
    values = [v for v in column if not is_missing(v)]
    if values and all(isinstance(v, (bool, np.bool_)) for v in values):
        return "boolean"
    if values and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                      for v in values):
        return "Int64"
    if values and all(isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
                      for v in values):
        return _FLOAT
    return "str"  # text, mixed values (1 and "auto"), or nothing at all


def write_run(run_dir: str | Path | ObjectPath, records: Iterable[TrialRecord],
              study: dict[str, Any]) -> Run:
    """Write every results file of a run atomically and return what was written."""
    run_dir = location(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trials, epochs, grads = build_tables(records, Ranking.of(study))
    _refuse_shrinking(run_dir / TRIALS_FILE, len(trials))
    atomic_write(run_dir / TRIALS_FILE, lambda p: trials.to_parquet(p, index=False))
    atomic_write(run_dir / EPOCHS_FILE, lambda p: epochs.to_parquet(p, index=False))
    if len(grads):
        atomic_write(run_dir / GRADS_FILE, lambda p: grads.to_parquet(p, index=False))
    write_study(run_dir, study)
    return Run(run_dir, trials, epochs, grads, study)


def write_study(run_dir: str | Path | ObjectPath, study: dict[str, Any]) -> None:
    """Write `study.yaml` alone (at the start of a run, so a running run can be read)."""
    run_dir = location(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / STUDY_FILE, lambda p: Path(p).write_text(strict_yaml.dump(study)))


def read_study(run_dir: str | Path | ObjectPath) -> dict[str, Any]:
    """The resolved study of a run, or {} when it has none (read as untrusted YAML)."""
    path = location(run_dir) / STUDY_FILE
    if not path.is_file():
        return {}
    study = strict_yaml.read(path, allow_null=True) or {}
    if not isinstance(study, dict):
        raise UserError(f"{path} is not a study (a mapping of keys): restore it or delete it")
    return study


def load_run(run_dir: str | Path | ObjectPath) -> Run:
    """Read a run directory back; a directory that is not a run is a `UserError`."""
    run_dir = location(run_dir)
    if not (run_dir / TRIALS_FILE).is_file():
        raise UserError(f"{run_dir} is not a tune_hw run: it has no {TRIALS_FILE}; "
                        "pass a directory like runs/<study>/<run_name>")
    trials = read_table(run_dir / TRIALS_FILE, TRIAL_COLUMNS)
    epochs = read_table(run_dir / EPOCHS_FILE, EPOCH_COLUMNS) \
        if (run_dir / EPOCHS_FILE).is_file() else pd.DataFrame(columns=EPOCH_COLUMNS)
    grads = read_table(run_dir / GRADS_FILE, GRAD_COLUMNS) \
        if (run_dir / GRADS_FILE).is_file() else pd.DataFrame(columns=GRAD_COLUMNS)
    return Run(run_dir, trials, epochs, grads, read_study(run_dir))


def read_table(path: Path | ObjectPath, required: Iterable[str]) -> pd.DataFrame:
    """A parquet file of the schema; a damaged file or a missing column is one `UserError`."""
    try:
        table = pd.read_parquet(io.BytesIO(path.read_bytes()))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ValueError...
        raise UserError(f"{path} cannot be read as parquet ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); restore it "
                        "from a backup, or rerun the search") from None
    required = list(required)
    for column, fill in LATER_COLUMNS.items():  # a run written before the column existed
        if column in required and column not in table.columns and "trial_id" in table:
            table[column] = table[fill] if fill in table.columns else fill
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {missing} of the tune_hw schema: it was "
                        "not written by tune_hw.search; pass a run directory it made")
    return table


def _trial_columns(trials: list[dict]) -> list[str]:
    config_keys = sorted({k for t in trials for k in t if k.startswith(CONFIG_PREFIX)})
    return ["trial_id", "group_id", "status", *config_keys, *TRIAL_SUMMARY_COLUMNS]


def _refuse_shrinking(path: Path | ObjectPath, n_new: int) -> None:
    """Results are never replaced by fewer trials than they hold: that is a damaged run."""
    try:
        n_old = pq.read_metadata(io.BytesIO(path.read_bytes())).num_rows \
            if path.is_file() else 0
    except Exception:  # an unreadable file holds no trials worth keeping
        n_old = 0
    if n_new < n_old:
        raise UserError(f"refusing to replace {path} ({n_old} trials) with {n_new} trials: "
                        "Ray's state of this run lost trials; the file is kept as it was")


def _parquet_safe(value: Any) -> Any:
    """Lists and dicts in a config column become strings so one column keeps one type."""
    return str(value) if isinstance(value, (list, tuple, dict)) else value


def is_missing(value: Any) -> bool:
    """None or a float NaN: a cell or a reported value that holds nothing."""
    return value is None or (isinstance(value, float) and math.isnan(value))
