"""Find the best checkpoint of an earlier tune_hw run, for `weights: run:<study>/<run_name>`.

    weights: run:pretrain/full              # <storage>/pretrain/full
    weights: run:/shared/runs/pretrain/r1   # an absolute run directory

The storage root is $TUNE_HW_STORAGE, else ./runs of the directory the search started in.

The best trial is the one with the highest validation accuracy in the run's trials.parquet;
its checkpoint is the kept one with the highest reported val_acc (Tune keeps the best and
the latest). A missing run named `full` or `quick` of a study in search_spaces/ is created
first by running that study (`quick` with its quick profile), so `python -m tune_hw.search
transfer --quick` works on a clean clone; any other missing run is an error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tune_hw import layout, results
from tune_hw.baselines import TREE_MODELS
from tune_hw.errors import UserError
from tune_hw.trainable import CHECKPOINT_FILE

AUTO_RUNS = {"full": [], "quick": ["--quick"]}  # missing runs created on demand, their flags


def storage_root() -> Path:
    """Where relative run references live: $TUNE_HW_STORAGE, else ./runs of the launch dir.

    Inside a trial Tune changes the working directory; TUNE_ORIG_WORKING_DIR is the original.
    """
    if os.environ.get("TUNE_HW_STORAGE"):
        return Path(os.environ["TUNE_HW_STORAGE"]).expanduser()
    return Path(os.environ.get("TUNE_ORIG_WORKING_DIR", os.getcwd())) / "runs"


def run_directory(ref: str) -> Path:
    """`study/run_name` (relative to the storage root, and staying under it) or an absolute
    run directory."""
    path = Path(ref).expanduser()
    if path.is_absolute():
        return path
    parts = ref.split("/")
    try:
        if len(parts) != 2:
            raise UserError("it has no study/run_name parts")
        for part in parts:
            layout.check_name(part, "name")
    except UserError:
        raise UserError(f"weights run:{ref} must be run:<study>/<run_name> of two plain names "
                        "(e.g. run:pretrain/full; '..' would leave the storage path) or "
                        "run:/absolute/path/to/a/run") from None
    return storage_root() / parts[0] / parts[1]


def best_run_checkpoint(ref: str) -> Path:
    """The state.pt of the best checkpoint of the best trial of run `ref`."""
    run_dir = run_directory(ref)
    if not (run_dir / "trials.parquet").is_file():
        ensure_run(ref, run_dir)
    trial_id = best_trial(run_dir, ref)
    trial_dir = _trial_directory(run_dir, trial_id, ref)
    return _best_checkpoint(trial_dir, ref)


def ensure_run(ref: str, run_dir: Path) -> None:
    """Create a missing relative run by running its study once, or say how to get one."""
    from tune_hw.spaces import STUDY_DIR

    study, run_name = (Path(ref).parts + ("", ""))[:2]
    known = not Path(ref).is_absolute() and (STUDY_DIR / f"{study}.yaml").is_file()
    if not known or run_name not in AUTO_RUNS:
        hint = (f"create it with `python -m tune_hw.search {study} --name {run_name}`" if known
                else "run the source study first or fix the reference")
        raise UserError(f"weights run:{ref}: {run_dir} is not a tune_hw run (no trials.parquet); "
                        f"{hint}")
    if _inside_trial():  # the driver creates runs; a trial that cannot see one must not
        raise UserError(f"weights run:{ref}: {run_dir} is not visible from this worker; use "
                        "shared storage and set TUNE_HW_STORAGE, or an absolute run: path")
    command = [sys.executable, "-m", "tune_hw.search", study, "--name", run_name,
               "--storage-path", str(run_dir.parent.parent), *AUTO_RUNS[run_name]]
    shown = " ".join(["python", *command[1:]])
    print(f"weights run:{ref} does not exist yet: running `{shown}`", flush=True)
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
    if subprocess.run(command, env=env).returncode != 0:
        raise UserError(f"weights run:{ref}: creating it with `{shown}` failed (see its "
                        "output above); fix that study and retry")


def _inside_trial() -> bool:
    return "TUNE_ORIG_WORKING_DIR" in os.environ


def best_trial(run_dir: Path, ref: str) -> str:
    """The trial id with the highest best_val_acc among trials that did not diverge or fail."""
    trials = results.read_table(run_dir / results.TRIALS_FILE,
                                ["trial_id", "status", "best_val_acc"])
    usable = trials[~trials["status"].isin(["diverged", "error"])].dropna(subset=["best_val_acc"])
    if "config/model.name" in usable:  # a tree baseline has no weights to transfer
        usable = usable[~usable["config/model.name"].isin(TREE_MODELS)]
    if usable.empty:
        raise UserError(f"weights run:{ref}: no neural trial of {run_dir} finished an epoch "
                        "without diverging; rerun the source study")
    return str(usable.sort_values("best_val_acc", ascending=False, kind="stable")
               .iloc[0]["trial_id"])


def _trial_directory(run_dir: Path, trial_id: str, ref: str) -> Path:
    matches = sorted(p for p in run_dir.glob(f"*{trial_id}*") if p.is_dir())
    if not matches:
        raise UserError(f"weights run:{ref}: trial {trial_id} has no directory in {run_dir}; "
                        "the run is incomplete, rerun the source study")
    return matches[0]


def _best_checkpoint(trial_dir: Path, ref: str) -> Path:
    """Of the checkpoints still on disk, the one whose report had the best val_acc."""
    kept = []
    for row in results.read_result_rows(trial_dir):
        name = row.get("checkpoint_dir_name")
        if name and (trial_dir / name / CHECKPOINT_FILE).is_file():
            kept.append((row.get("val_acc", float("-inf")), -int(row.get("epoch", 0)), name))
    if not kept:
        raise UserError(f"weights run:{ref}: trial {trial_dir.name} has no checkpoint with "
                        f"{CHECKPOINT_FILE}; rerun the source study with checkpoints kept")
    return trial_dir / max(kept)[2] / CHECKPOINT_FILE
