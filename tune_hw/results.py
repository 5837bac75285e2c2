"""The results contract: parquet schema, the ranking, table building, atomic writes, `load_run`.

A run directory holds `trials.parquet`, `epochs.parquet`, `grads.parquet` (when gradient
tracking was on) and `study.yaml`, next to Ray's own experiment files; each trial directory
holds its saved states (`latest.pt`, `best.pt`). Ray's trial records are read from its
plain-text files only (`read_ray_trials`): a run directory may come from anyone, and nothing in
it is ever unpickled here.
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

import numpy as np
import pandas as pd

from tune_hw import layout, strict_yaml
from tune_hw.errors import UserError

EPOCH_COLUMNS = [
    "trial_id", "epoch", "steps", "train_loss", "train_acc", "val_loss", "val_acc",
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
# the validation metrics a study may rank by, each with its natural direction
VALIDATION_METRICS = {"val_acc": "max", "val_loss": "min"}
TRIAL_SCORE_COLUMNS = {"val_acc": "best_val_acc", "val_loss": "val_loss_at_best"}
GRAD_COLUMNS = ["trial_id", "epoch", "layer", "name", "grad_norm"]
TRIAL_COLUMNS = ["trial_id", "status", *TRIAL_SUMMARY_COLUMNS]  # plus one config/<key> each
STATUSES = ("completed", "early_stopped", "diverged", "error", "running", "pending")

TRIALS_FILE, EPOCHS_FILE, GRADS_FILE, STUDY_FILE = (
    "trials.parquet", "epochs.parquet", "grads.parquet", "study.yaml")
# a trial's saved states in its directory: the latest (retries, --resume) and its best epoch's
LATEST_STATE_FILE, BEST_STATE_FILE = "latest.pt", "best.pt"


def trial_dir_name(trial_id: str) -> str:
    """The directory of a trial inside its run directory (short: Ray's default spells the
    whole config into the path)."""
    return f"trial_{trial_id}"


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


@dataclass(frozen=True)
class Ranking:
    """THE ranking of a study: epochs and trials by its `search.metric` in its `search.mode`.

    One tie-break everywhere: the other validation metric in its natural direction (higher
    accuracy, lower loss), then the earlier epoch or the earlier trial (Tune's creation
    order). Diverged epochs and non-finite scores never rank.
    """

    metric: str = "val_acc"
    mode: str = "max"

    @classmethod
    def of(cls, study: dict[str, Any]) -> Ranking:
        """The ranking a resolved study (study.yaml) asks for; defaults when it says nothing."""
        search = study.get("search") or {}
        return cls(search.get("metric", cls.metric), search.get("mode", cls.mode))

    @property
    def tie_metric(self) -> str:
        return next(m for m in VALIDATION_METRICS if m != self.metric)

    def key(self, score: Any, tie: Any, position: int) -> tuple[float, float, int]:
        """Sort key, smallest first: the score, the tie metric, the position."""
        return (_smaller_is_better(score, self.mode),
                _smaller_is_better(tie, VALIDATION_METRICS[self.tie_metric]), position)

    def best_epoch(self, rows: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """The best healthy epoch of one trial's rows (each with `epoch`, `val_acc`, ...)."""
        healthy = [r for r in rows if not is_true(r.get("diverged"))
                   and _finite(r.get(self.metric))]
        if not healthy:
            return None
        return min(healthy, key=lambda r: self.key(r[self.metric], r.get(self.tie_metric),
                                                   int(r["epoch"])))

    def order(self, trials: pd.DataFrame) -> list[int]:
        """Row positions of the ranked trials (a finite score at their best epoch), best first."""
        score, tie = (trials[TRIAL_SCORE_COLUMNS[m]] if TRIAL_SCORE_COLUMNS[m] in trials
                      else pd.Series(math.nan, index=trials.index)
                      for m in (self.metric, self.tie_metric))
        keys = [(self.key(s, t, i), i) for i, (s, t) in enumerate(zip(score, tie, strict=True))
                if _finite(s)]
        return [i for _, i in sorted(keys)]

    def ranked(self, trials: pd.DataFrame) -> pd.DataFrame:
        """The ranked trials, best first (unranked ones left out)."""
        return trials.iloc[self.order(trials)]


DEFAULT_RANKING = Ranking()  # a study that names no search.metric ranks by val_acc, max


def _smaller_is_better(value: Any, mode: str) -> float:
    if not _finite(value):
        return math.inf
    return -float(value) if mode == "max" else float(value)


def _finite(value: Any) -> bool:
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def is_true(value: Any) -> bool:
    """A reported flag (Python or numpy bool, or its text in a CSV) that is set."""
    if isinstance(value, str):
        return value == "True"
    return value is True or (isinstance(value, np.bool_) and bool(value))


def epoch_rows(record: TrialRecord) -> list[dict[str, Any]]:
    """One row per epoch; a retried epoch (after a restore) keeps its latest report.

    A diverged epoch keeps its flag and loses its measurements: the finite sentinels it
    reported exist for the searcher and ASHA only.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in record.rows:
        if "epoch" in row and row["epoch"] is not None and not _is_nan(row["epoch"]):
            by_epoch[int(row["epoch"])] = row
    out = []
    for epoch in sorted(by_epoch):
        row = {"trial_id": record.trial_id,
               **{c: by_epoch[epoch].get(c) for c in EPOCH_COLUMNS[1:]}}
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
    sized = next((r for r in reversed(record.rows) if _finite(r.get("train_size"))), {})
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
