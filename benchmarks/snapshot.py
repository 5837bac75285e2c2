"""Case 5, snapshots: what Tune's experiment snapshots cost a search of 1,000 short trials.

Tune snapshots the whole experiment (every trial's record and the searcher, O(trials)) on a
timer that keeps it near 5 % of the time, but it also forces a snapshot whenever a trial has
saved `num_to_keep` checkpoints since the last one, so that the snapshot never names a
checkpoint it has deleted. With a checkpoint every epoch and num_to_keep=2 (tune_hw before)
that was one forced snapshot every two epochs of any trial: O(trials) each, O(trials²) in all,
and Ray's "snapshotting ... may become a bottleneck" warning in every run. tune_hw now keeps
each trial's latest and best state in the trial's own files and gives Tune no checkpoints to
delete, so Tune forces none.

Both variants run the same random search of short trials (FIFO) through tune_hw's Tuner pieces:
`tune_hw` is the real CLI entry point; `tune_checkpoints` is tune_hw's previous design rebuilt
here (every epoch's state a Tune checkpoint, num_to_keep=2 by the study's metric). The driver's
time inside snapshots is measured by wrapping Tune's snapshot method (measurement only).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import STUDY, field, interleave, load_run, log, run_search, search_argv
from benchmarks.machine import load_average

CONFIG = {"dataset.n_train": 64, "dataset.n_val": 64, "dataset.n_test": 64, "model.width": 4,
          "model.depth": 1, "train.epochs": 2, "train.batch_size": 64,
          "search.algorithm": "random", "scheduler.name": "fifo"}
SPACE = {"train.lr": {"loguniform": [1e-3, 0.3]}, "train.batch_size": {"choice": [64]}}
PROFILES = {"full": {"n_trials": 1000, "repeats": 1}, "quick": {"n_trials": 6, "repeats": 1}}


@contextlib.contextmanager
def timed_snapshots() -> Iterator[dict[str, Any]]:
    """Count and time the experiment snapshots Tune takes in this (the driver) process."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as manager

    original = manager.sync_up_experiment_state
    stats: dict[str, Any] = {"snapshots": 0, "forced": 0, "snapshot_s": 0.0}

    def timed(self, save_fn, force=False, wait=False):
        forced, saved = force or self._should_force_sync_up, []
        started = time.perf_counter()
        original(self, lambda: (saved.append(True), save_fn()), force=force, wait=wait)
        if saved:  # most calls return at once: it is not time for a snapshot yet
            stats["snapshots"] += 1
            stats["forced"] += int(forced)
            stats["snapshot_s"] += time.perf_counter() - started

    manager.sync_up_experiment_state = timed
    try:
        yield stats
    finally:
        manager.sync_up_experiment_state = original


def tune_checkpoint_trainable(config: dict[str, Any]) -> None:
    """tune_hw's trainable as it was: every epoch's state reported as a Tune checkpoint."""
    import torch
    from ray import tune

    from tune_hw.training import run_trial

    def report(metrics: dict[str, Any], state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as directory:
            torch.save(state, Path(directory) / "state.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    run_trial(config, report)


def tune_checkpoints_search(storage: Path, name: str, n_trials: int) -> dict[str, Any]:
    """The same search with per-epoch Tune checkpoints and num_to_keep=2, timed."""
    from ray import cloudpickle, tune

    from tune_hw import studies, tuner

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import us
    space = {f"space.{k}": v for k, v in SPACE.items()}
    study = studies.load_study(STUDY, overrides={**CONFIG, **space,
                                                "search.num_samples": n_trials})
    metric, mode = study.search["metric"], study.search["mode"]
    tuner = tune.Tuner(
        tuner.make_trainable(study, storage / STUDY / name, tune_checkpoint_trainable),
        param_space=tuner.param_space(study),
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=n_trials,
                                    search_alg=tuner.make_search_alg(study),
                                    scheduler=tuner.make_scheduler(study), reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(storage / STUDY), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(
                                      num_to_keep=2, checkpoint_score_attribute=metric,
                                      checkpoint_score_order=mode)))
    started = time.perf_counter()
    grid = tuner.fit()
    return {"wall_s": time.perf_counter() - started, "trials": len(grid)}


def variant(storage: Path, label: str, n_trials: int):
    def run_once(repeat: int) -> dict[str, Any]:
        name = f"snap-{label}-{repeat}"
        with timed_snapshots() as stats:
            if label == "tune_hw":
                fixed = {**CONFIG, "search.num_samples": n_trials}
                timing = run_search(search_argv(storage, name, fixed, SPACE))
                timing["trials"] = len(load_run(storage, name).trials)
            else:
                timing = tune_checkpoints_search(storage, name, n_trials)
        wall = timing["wall_s"]
        return {**timing, **stats, "snapshot_share": stats["snapshot_s"] / wall,
                "wall_s_per_trial": wall / max(1, timing["trials"])}
    return run_once


def run(profile: str, storage: Path) -> dict[str, Any]:
    """Both variants, interleaved; snapshot counts, their time and its share of the wall."""
    settings = PROFILES[profile]
    n = settings["n_trials"]
    log(f"snapshot: {n} short trials, tune_hw vs per-epoch Tune checkpoints (num_to_keep=2)")
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), load_average()
    runs = interleave({label: variant(storage, label, n)
                       for label in ("tune_hw", "tune_checkpoints")}, settings["repeats"])
    keys = ("wall_s", "wall_s_per_trial", "snapshots", "forced", "snapshot_s",
            "snapshot_share", "trials")
    out: dict[str, Any] = {"n_trials": n, "config": CONFIG, "repeats": settings["repeats"],
                           "started": started, "load_average_start": load_start,
                           "load_average_end": load_average(),
                           "variants": {label: {key: field(label_runs, key) for key in keys}
                                        for label, label_runs in runs.items()}}
    tool, before = (out["variants"][k]["wall_s"]["median"] for k in ("tune_hw",
                                                                      "tune_checkpoints"))
    out["speedup"] = before / tool if tool else None
    return out
