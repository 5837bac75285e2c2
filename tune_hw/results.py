"""The results contract: parquet schema, table building, atomic writes and `load_run`.

A run directory holds `trials.parquet`, `epochs.parquet`, `grads.parquet` (when gradient
tracking was on) and `study.yaml`, next to Ray's own experiment files. Ray's trial records are
read from its plain-text files only (`read_ray_trials`): a run directory may come from anyone,
and nothing in it is ever unpickled here.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tune_hw import layout, strict_yaml
from tune_hw.errors import UserError

EPOCH_COLUMNS = [
    "trial_id", "epoch", "steps", "train_loss", "train_acc", "val_loss", "val_acc",
    "test_loss", "test_acc", "lr", "epoch_s", "samples_per_s", "step_loss_std",
]
TRIAL_SUMMARY_COLUMNS = [
    "best_epoch", "best_val_acc", "val_loss_at_best", "train_acc_at_best", "test_acc_at_best",
    "final_epoch", "final_val_acc", "final_test_acc", "wall_s", "node_id", "gpu_ids", "seed",
    "num_params", "error",
]
GRAD_COLUMNS = ["trial_id", "epoch", "layer", "name", "grad_norm"]
TRIAL_COLUMNS = ["trial_id", "status", *TRIAL_SUMMARY_COLUMNS]  # plus one config/<key> each
STATUSES = ("completed", "early_stopped", "diverged", "error", "running", "pending")

TRIALS_FILE, EPOCHS_FILE, GRADS_FILE, STUDY_FILE = (
    "trials.parquet", "epochs.parquet", "grads.parquet", "study.yaml")


@dataclass
class TrialRecord:
    """What a search produced for one trial: its config, every reported epoch, its error.

    `ended` is Ray's word that the trial stopped (finished, stopped early or failed);
    a trial of an interrupted search has not ended.
    """

    trial_id: str
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    error: str | None = None
    ended: bool = True


@dataclass
class Run:
    """A run directory read back: the three tables and the resolved study."""

    path: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame
    grads: pd.DataFrame
    study: dict[str, Any]


def epoch_rows(record: TrialRecord) -> list[dict[str, Any]]:
    """One row per epoch; a retried epoch (after a restore) keeps its latest report."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in record.rows:
        if "epoch" in row and row["epoch"] is not None and not _is_nan(row["epoch"]):
            by_epoch[int(row["epoch"])] = row
    return [
        {"trial_id": record.trial_id, **{c: by_epoch[e].get(c) for c in EPOCH_COLUMNS[1:]}}
        for e in sorted(by_epoch)
    ]


def trial_status(record: TrialRecord, epochs: list[dict]) -> str:
    """completed | early_stopped | diverged | error | running | pending (search interrupted)."""
    last = record.rows[-1] if record.rows else {}
    if last.get("diverged") is True:
        return "diverged"
    if record.error:
        return "error"
    target = int(record.config.get("train.epochs", 0) or 0)
    final_epoch = epochs[-1]["epoch"] if epochs else 0
    if final_epoch >= target > 0:
        return "completed"
    if record.ended:
        return "early_stopped"
    return "running" if epochs else "pending"


def trial_summary(record: TrialRecord, epochs: list[dict]) -> dict[str, Any]:
    """One `trials.parquet` row: status, config, best-by-validation and final metrics."""
    last = record.rows[-1] if record.rows else {}
    healthy = [e for e in epochs if not _is_nan(e["val_acc"])]
    best = max(healthy, key=lambda e: (e["val_acc"], -e["epoch"])) if healthy else {}
    final = epochs[-1] if epochs else {}
    wall_s = last.get("time_total_s")
    if wall_s is None:
        wall_s = sum(e["epoch_s"] or 0.0 for e in epochs)
    row = {
        "trial_id": record.trial_id,
        "status": trial_status(record, epochs),
        **{f"config/{k}": _parquet_safe(v) for k, v in sorted(record.config.items())},
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
        "error": record.error,
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


def build_tables(records: Iterable[TrialRecord]
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Turn trial records into the (trials, epochs, grads) DataFrames of the schema."""
    trials, epochs, grads = [], [], []
    for record in records:
        rows = epoch_rows(record)
        epochs.extend(rows)
        trials.append(trial_summary(record, rows))
        grads.extend(grad_rows(record))
    trials_df = pd.DataFrame(trials, columns=_trial_columns(trials))
    epochs_df = pd.DataFrame(epochs, columns=EPOCH_COLUMNS)
    grads_df = pd.DataFrame(grads, columns=GRAD_COLUMNS)
    return trials_df, epochs_df.astype({"epoch": "int64"}), grads_df


def write_run(run_dir: str | Path, records: Iterable[TrialRecord], study: dict[str, Any]
              ) -> Run:
    """Write every results file of a run atomically and return what was written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trials, epochs, grads = build_tables(records)
    _refuse_shrinking(run_dir / TRIALS_FILE, len(trials))
    _atomic_write(run_dir / TRIALS_FILE, lambda p: trials.to_parquet(p, index=False))
    _atomic_write(run_dir / EPOCHS_FILE, lambda p: epochs.to_parquet(p, index=False))
    if len(grads):
        _atomic_write(run_dir / GRADS_FILE, lambda p: grads.to_parquet(p, index=False))
    write_study(run_dir, study)
    return Run(run_dir, trials, epochs, grads, study)


def write_study(run_dir: str | Path, study: dict[str, Any]) -> None:
    """Write `study.yaml` alone (at the start of a run, so a running run can be read)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / STUDY_FILE, lambda p: Path(p).write_text(strict_yaml.dump(study)))


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
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {missing} of the tune_hw schema: it was "
                        "not written by tune_hw.search; pass a run directory it made")
    return table


def _trial_columns(trials: list[dict]) -> list[str]:
    config_keys = sorted({k for t in trials for k in t if k.startswith("config/")})
    return ["trial_id", "status", *config_keys, *TRIAL_SUMMARY_COLUMNS]


def _refuse_shrinking(path: Path, n_new: int) -> None:
    """Results are never replaced by fewer trials than they hold: that is a damaged run."""
    import pyarrow.parquet as pq

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


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _atomic_write(path: Path, write) -> None:
    """Write to a temporary file in the same directory, then rename over `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ------------------------------------------------------------- Ray's trial files, as text

RAY_ENDED = ("TERMINATED", "ERROR")  # Ray's statuses of a trial that will not run again


def read_experiment_state(run_dir: Path) -> list[dict[str, Any]] | None:
    """The trials of Ray's newest experiment state, parsed as plain JSON (its pickled fields
    stay unread hex), checked for what a restore needs; None before Ray has written one."""
    path = layout.newest(run_dir, layout.EXPERIMENT_STATE)
    if path is None:
        return None
    try:
        state = json.loads(path.read_bytes())
        entries = [[json.loads(part) for part in entry] for entry in state["trial_data"]]
        trials = [trial for trial, _ in entries]
        problem = None if isinstance(state["runner_data"], dict) and all(
            isinstance(t, dict) and isinstance(t.get("trial_id"), str) and "status" in t
            for t in trials) else "a trial entry lacks its id or status"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if problem:
        raise UserError(f"Ray's experiment state {path} is damaged ({problem}): nothing was "
                        "read from it or changed; if the search is still running, try again "
                        "in a moment, else restore the file from a backup or start a new "
                        "--name")
    return trials


def read_ray_trials(run_dir: Path) -> list[TrialRecord]:
    """Every trial of a run from Ray's text files: id, status and directory from the
    experiment state, config from params.json, rows from result.json, error from error.txt."""
    records, seen = [], set()
    for state in read_experiment_state(run_dir) or []:
        trial_dir = _state_trial_dir(run_dir, state.get("relative_logdir"))
        seen.add(trial_dir)
        records.append(_trial_record(state["trial_id"], trial_dir, state["status"],
                                     state.get("config")))
    for trial_dir in layout.trial_dirs(run_dir):  # started after Ray last saved its state
        if trial_dir not in seen:
            rows = read_result_rows(trial_dir)
            trial_id = rows[0].get("trial_id") if rows else None
            records.append(_trial_record(str(trial_id or trial_dir.name.removeprefix("trial_")),
                                         trial_dir, None, None))
    return records


def read_result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """Tune's result.json: one JSON object per report (a line cut short by a crash is skipped)."""
    path = trial_dir / "result.json"
    rows = []
    for line in (path.read_text(errors="replace").splitlines() if path.is_file() else []):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """A whole searched section (a mapping) spreads into its dotted keys."""
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for section, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
    return flat


def _trial_record(trial_id: str, trial_dir: Path | None, status: str | None,
                  state_config: Any) -> TrialRecord:
    params = _json_file(trial_dir / "params.json") if trial_dir else None
    config = params if isinstance(params, dict) else state_config
    error = None
    if status == "ERROR":
        lines = _text_lines(trial_dir / "error.txt") if trial_dir else []
        error = lines[-1] if lines else "trial failed (no error text stored)"
    return TrialRecord(trial_id=trial_id, config=flatten_config(config or {}),
                       rows=read_result_rows(trial_dir) if trial_dir else [], error=error,
                       ended=status in RAY_ENDED)


def _state_trial_dir(run_dir: Path, name: Any) -> Path | None:
    """The trial's directory named in the state, only when it is a directory of this run."""
    try:
        path = run_dir / layout.check_name(name, "trial directory")
    except (UserError, TypeError):
        return None
    return path if path.is_dir() else None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _text_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
