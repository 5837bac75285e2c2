"""The results contract: the parquet schema, building its tables, atomic writes, `load_run`.

A run directory holds `trials.parquet`, `epochs.parquet`, `grads.parquet` (when gradient
tracking was on) and `study.yaml` (file names in `layout`), next to Ray's own experiment files.
Tables are built from `TrialRecord`s, what a search produced for each trial (Ray's files of a
run are read as text by `ray_files`), with the study's `ranking.Ranking`.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from tune_hw import strict_yaml
from tune_hw.errors import UserError
from tune_hw.layout import EPOCHS_FILE, GRADS_FILE, STUDY_FILE, TRIALS_FILE
from tune_hw.ranking import DEFAULT_RANKING, Ranking, finite, is_true

EPOCH_COLUMNS = [
    "trial_id", "group_id", "epoch", "steps", "train_loss", "train_acc", "val_loss", "val_acc",
    "test_loss", "test_acc", "lr", "epoch_s", "samples_per_s", "step_loss_std", "diverged",
]
# measured once per epoch; a diverged epoch has none (NaN), whatever the searcher was shown
MEASURED_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                    "step_loss_std")
SPLIT_SIZE_COLUMNS = ("train_size", "val_size", "test_size")  # each trial's own split sizes
TRIAL_SUMMARY_COLUMNS = [
    "best_epoch", "best_val_acc", "val_loss_at_best", "train_acc_at_best", "test_acc_at_best",
    "final_epoch", "final_val_acc", "final_test_acc", "wall_s", "node_id", "gpu_ids", "seed",
    "num_params", *SPLIT_SIZE_COLUMNS, "error",
]
GRAD_COLUMNS = ["trial_id", "epoch", "layer", "name", "grad_norm"]
# plus one config/<key> each
TRIAL_COLUMNS = ["trial_id", "group_id", "status", *TRIAL_SUMMARY_COLUMNS]
STATUSES = ("completed", "early_stopped", "diverged", "error", "running", "pending")

CONFIG_PREFIX = "config/"  # trials.parquet holds each hyperparameter as config/<dotted key>


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

    path: Path
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
               **{c: by_epoch[epoch].get(c) for c in EPOCH_COLUMNS[2:]}}
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
    wall_s = last.get("time_total_s")
    if wall_s is None:
        wall_s = sum(e["epoch_s"] or 0.0 for e in epochs)
    sized = next((r for r in reversed(record.rows) if finite(r.get("train_size"))), {})
    row = {
        "trial_id": record.trial_id,
        "group_id": record.group_id or record.trial_id,
        "status": trial_status(record, epochs),
        **{f"{CONFIG_PREFIX}{k}": _parquet_safe(v) for k, v in sorted(record.config.items())},
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
        "error": trial_error(record),
    }
    return row


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
            out.append({"trial_id": record.trial_id, "epoch": epoch, "layer": layer,
                        "name": name, "grad_norm": float(norm)})
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
    trials_df = pd.DataFrame(trials, columns=_trial_columns(trials))
    epochs_df = pd.DataFrame(epochs, columns=EPOCH_COLUMNS)
    grads_df = pd.DataFrame(grads, columns=GRAD_COLUMNS)
    return trials_df, epochs_df.astype({"epoch": "int64", "diverged": bool}), grads_df


def write_run(run_dir: str | Path, records: Iterable[TrialRecord], study: dict[str, Any]
              ) -> Run:
    """Write every results file of a run atomically and return what was written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trials, epochs, grads = build_tables(records, Ranking.of(study))
    _refuse_shrinking(run_dir / TRIALS_FILE, len(trials))
    atomic_write(run_dir / TRIALS_FILE, lambda p: trials.to_parquet(p, index=False))
    atomic_write(run_dir / EPOCHS_FILE, lambda p: epochs.to_parquet(p, index=False))
    if len(grads):
        atomic_write(run_dir / GRADS_FILE, lambda p: grads.to_parquet(p, index=False))
    write_study(run_dir, study)
    return Run(run_dir, trials, epochs, grads, study)


def write_study(run_dir: str | Path, study: dict[str, Any]) -> None:
    """Write `study.yaml` alone (at the start of a run, so a running run can be read)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / STUDY_FILE, lambda p: Path(p).write_text(strict_yaml.dump(study)))


def read_study(run_dir: str | Path) -> dict[str, Any]:
    """The resolved study of a run, or {} when it has none (read as untrusted YAML)."""
    path = Path(run_dir) / STUDY_FILE
    if not path.is_file():
        return {}
    study = strict_yaml.read(path, allow_null=True) or {}
    if not isinstance(study, dict):
        raise UserError(f"{path} is not a study (a mapping of keys): restore it or delete it")
    return study


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory back; a directory that is not a run is a `UserError`."""
    run_dir = Path(run_dir)
    if not (run_dir / TRIALS_FILE).is_file():
        raise UserError(f"{run_dir} is not a tune_hw run: it has no {TRIALS_FILE}; "
                        "pass a directory like runs/<study>/<run_name>")
    trials = read_table(run_dir / TRIALS_FILE, TRIAL_COLUMNS)
    epochs = read_table(run_dir / EPOCHS_FILE, EPOCH_COLUMNS) \
        if (run_dir / EPOCHS_FILE).is_file() else pd.DataFrame(columns=EPOCH_COLUMNS)
    grads = read_table(run_dir / GRADS_FILE, GRAD_COLUMNS) \
        if (run_dir / GRADS_FILE).is_file() else pd.DataFrame(columns=GRAD_COLUMNS)
    return Run(run_dir, trials, epochs, grads, read_study(run_dir))


def read_table(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """A parquet file of the schema; a damaged file or a missing column is one `UserError`."""
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ValueError...
        raise UserError(f"{path} cannot be read as parquet ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); restore it "
                        "from a backup, or rerun the search") from None
    required = list(required)
    if "group_id" in required and "group_id" not in table.columns and "trial_id" in table:
        table["group_id"] = table["trial_id"]  # a run from before fusion: one trial per group
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {missing} of the tune_hw schema: it was "
                        "not written by tune_hw.search; pass a run directory it made")
    return table


def _trial_columns(trials: list[dict]) -> list[str]:
    config_keys = sorted({k for t in trials for k in t if k.startswith(CONFIG_PREFIX)})
    return ["trial_id", "group_id", "status", *config_keys, *TRIAL_SUMMARY_COLUMNS]


def _refuse_shrinking(path: Path, n_new: int) -> None:
    """Results are never replaced by fewer trials than they hold: that is a damaged run."""
    try:
        n_old = pq.read_metadata(path).num_rows if path.is_file() else 0
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


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """`write(tmp)` a temporary file in the same directory, then rename it over `path`: a crash
    mid-write leaves the previous file whole (results files and trials' saved states alike)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
