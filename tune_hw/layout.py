"""Names of a run's files and directories, and the rule that a name stays a name.

A run lives in <storage>/<study>/<run_name>/: our parquet files and study.yaml, next to Ray's
experiment files and one directory per trial, which holds Ray's text files of the trial and
the trial's own saved states. A study or run name becomes one directory, so it must be one
path component: `../../x`, `/abs/path` or `..` would put the run elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from tune_hw.errors import UserError

STUDY_DIR = Path(__file__).resolve().parent.parent / "search_spaces"  # the shipped studies
DEFAULT_STORAGE = "runs"  # the storage path of runs, relative to the launch directory
STORAGE_ENV = "TUNE_HW_STORAGE"  # the storage root of relative references, driver and workers

# tune_hw's files in a run directory
TRIALS_FILE, EPOCHS_FILE, GRADS_FILE, STUDY_FILE = (
    "trials.parquet", "epochs.parquet", "grads.parquet", "study.yaml")
DRIVER_LOG = "driver.log"  # everything Ray printed on the driver's terminal (unless --verbose)
REPRODUCE_FILE = "reproduce.json"  # the search wall time reproduce measured, over its sessions
# the run's Optuna storage (for optuna-dashboard), written by the driver only
OPTUNA_FILE = "optuna.db"
# a trial's saved states in its directory: the latest (retries, --resume) and its best epoch's
LATEST_STATE_FILE, BEST_STATE_FILE = "latest.pt", "best.pt"
# a fused group's member trials keep their best states in <trial dir>/members/<member id>/
MEMBERS_DIR = "members"
# every row a trial reported, one JSON object per line, written by the trial before it reports:
# Ray's result.json lags the trial by its sync period, so a crash can lose rows only this keeps
TRIAL_ROWS_FILE = "rows.jsonl"
# the one file of the marker checkpoint each trial reports to Tune once (ray_trial)
MARKER_FILE = "MARKER.txt"

# Ray's plain-text files of a trial: one JSON object per report, its config, its error
RESULT_FILE, PARAMS_FILE, ERROR_FILE = "result.json", "params.json", "error.txt"
MAX_NAME_BYTES = 255  # the longest file name Linux and macOS file systems take
EXPERIMENT_STATE = "experiment_state-*.json"  # Ray's controller state, newest name last
TUNER_STATE = "tuner.pkl"
# Ray's restore copies every *.json and *.pkl of the run directory to its staging directory
# and loads them there: tuner.pkl, experiment_state-*, search_gen_state-* (a cloudpickle),
# basic-variant-state-*, searcher-state-*.pkl, callback-states-*.pkl. In a trial directory
# the ResultGrid unpickles error.pkl of a failed trial.
RESTORE_GLOBS = ("*.json", "*.pkl")
TRIAL_PICKLE_GLOB = "*/*.pkl"
PICKLED_STATES = ("search_gen_state-*.json", "searcher-state-*.pkl", "basic-variant-state-*.json",
                  "callback-states-*.pkl")


TRIAL_DIR_PREFIX = "trial_"


def trial_dir_name(trial_id: str) -> str:
    """The directory of a trial inside its run directory (short: Ray's default spells the
    whole config into the path)."""
    return f"{TRIAL_DIR_PREFIX}{trial_id}"


def best_state_path(run_dir: Path, trial_id: str, group_id: str | None = None) -> Path:
    """A trial's best saved state: in its own directory, or a fused member's in its group's
    (<group dir>/members/<member trial id>/best.pt)."""
    if group_id is None or group_id == trial_id:
        return run_dir / trial_dir_name(trial_id) / BEST_STATE_FILE
    return run_dir / trial_dir_name(group_id) / MEMBERS_DIR / trial_id / BEST_STATE_FILE


def check_name(name: str, what: str) -> str:
    """`name` if it is one path component: not empty, `.` or `..`, no separator, <= 255 bytes."""
    problem = None
    if not name or name in (".", ".."):
        problem = "is empty" if not name else f"is {name!r}"
    elif any(sep and sep in name for sep in (os.sep, os.altsep, "/")):
        problem = "contains a path separator"
    elif any(ord(c) < 32 or c == "\x7f" for c in name):
        problem = "contains a control character"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        problem = f"is {len(name.encode('utf-8', 'surrogateescape'))} bytes long"
    if problem:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise UserError(f"{what} {shown!r} {problem}: a name is one directory name of at most "
                        f"{MAX_NAME_BYTES} bytes, without '/' and not '.' or '..' (e.g. r1)")
    return name


def newest(run_dir: Path, pattern: str) -> Path | None:
    """The file Ray picks among `pattern`'s matches: the greatest name (names hold the time)."""
    matches = sorted(p for p in run_dir.glob(pattern) if p.is_file())
    return matches[-1] if matches else None


def restore_inputs(run_dir: Path) -> list[Path]:
    """Every file of the run that Ray unpickles or decodes when it restores or lists results."""
    files = {p for pattern in (*RESTORE_GLOBS, TRIAL_PICKLE_GLOB) for p in run_dir.glob(pattern)}
    return sorted(files)


def trial_dirs(run_dir: Path) -> list[Path]:
    """The trial directories of a run (Ray writes result.json or params.json into each, the
    trial its rows file)."""
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and any(
        (p / name).is_file() for name in (RESULT_FILE, PARAMS_FILE, TRIAL_ROWS_FILE)))
