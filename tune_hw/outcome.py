"""What a search produced: its parquet files written from Ray's records of the trials, the best
trial printed, and the exit code (0, 1 when no trial produced a result, 130 when interrupted).
"""

from __future__ import annotations

import importlib.util
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from tune_hw import layout, ray_files, results
from tune_hw.results import CONFIG_PREFIX
from tune_hw.studies import Study


def write_results(run_dir: Path, resolved: dict[str, Any], study: Study) -> int:
    """Write the parquet files from what Ray stored; the exit code: 0, 130 when the search was
    interrupted, 1 when it ran but no trial produced a result."""
    records = ray_files.read_ray_trials(run_dir)
    run = results.write_run(run_dir, records, resolved)
    if was_interrupted(records, study):
        return 130
    failed = no_result_line(run)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    print_best(run, study)
    return 0


def expected_trials(study: Study) -> int:
    """How many trials a finished search has: num_samples times the size of every grid,
    times the repeats of each config."""
    return math.prod([study.search["num_samples"], study.search["repeats"],
                      *(dist.grid_size for dist in study.distributions.values())])


def was_interrupted(records: list[results.TrialRecord], study: Study) -> bool:
    return len(records) < expected_trials(study) or not all(r.ended for r in records)


def print_best(run: results.Run, study: Study) -> None:
    """The best trial by the study's ranking, its searched values and scores."""
    ranked = study.ranking.ranked(run.trials)
    statuses = run.trials["status"].value_counts().to_dict()
    if ranked.empty:
        print(f"no trial finished a healthy epoch (statuses: {statuses}); run directory: "
              f"{run.path}")
        return
    best = ranked.iloc[0]
    config = study.searched({
        k.removeprefix(CONFIG_PREFIX): best[k].item() if hasattr(best[k], "item") else best[k]
        for k in best.index if k.startswith(CONFIG_PREFIX) and not results.is_missing(best[k])})
    print(f"best trial {best['trial_id']} (by validation): {config}")
    print(f"  val_acc {best['best_val_acc']:.4f}  val_loss {best['val_loss_at_best']:.4f}  "
          f"test_acc {best['test_acc_at_best']:.4f}  at epoch {int(best['best_epoch'])} "
          f"(ranked by {study.ranking.metric}, {study.ranking.mode})")
    print(f"  statuses: {statuses}")
    print(f"run directory: {run.path}")


def print_next_steps(run_dir: Path, mlflow_uri: str | None = None) -> None:
    """The commands that open the run: the report, TensorBoard, and optuna-dashboard and
    MLflow where they are installed and the run was kept there; Ray's log."""
    run = shlex.quote(str(run_dir))
    steps = [("report", f"python -m tune_hw.report {run}"),
             ("TensorBoard", f"tensorboard --logdir {run}")]
    if importlib.util.find_spec("optuna_dashboard") and (run_dir / layout.OPTUNA_FILE).is_file():
        steps.append(("Optuna", f"optuna-dashboard sqlite:///{run}/{layout.OPTUNA_FILE}"))
    if importlib.util.find_spec("mlflow") and mlflow_uri:
        steps.append(("MLflow", f"mlflow ui --backend-store-uri {shlex.quote(mlflow_uri)}"))
    if (run_dir / layout.DRIVER_LOG).is_file():
        steps.append(("Ray's output", str(run_dir / layout.DRIVER_LOG)))
    width = max(len(name) for name, _ in steps) + 1
    for name, command in steps:
        print(f"  {name + ':':<{width}} {command}")


def no_result_line(run: results.Run) -> str | None:
    """One line when no trial reported a single epoch: how many failed and the first error."""
    if len(run.epochs) or run.trials.empty:
        return None
    errors = run.trials["error"].dropna()
    first = f"; the first error: {errors.iloc[0]}" if len(errors) else ""
    return (f"no trial produced a result: {len(errors)} of {len(run.trials)} trials failed"
            f"{first} (run directory: {run.path})")
