"""Case 4, scaling: trials per minute with 1 and 2 concurrent trials, and memory.

The same grid of short trials runs with `search.max_concurrent` 1 and 2 (each trial asks for
one CPU). Memory is the driver's resident set after each search and the peak of the whole
process tree (driver, Ray's daemons and trial workers), sampled twice a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import field, interleave, load_run, log, run_search, search_argv
from benchmarks.machine import Monitor
from benchmarks.overhead import BASE, lrs

PROFILES = {
    # trials of a few seconds: long enough that a second worker can pay for its start-up
    "full": {"n_trials": 8, "concurrency": [1, 2], "repeats": 2,
             "config": {"dataset.n_train": 20_000, "dataset.n_val": 2000,
                        "dataset.n_test": 2000, "train.batch_size": 64, "train.epochs": 8}},
    "quick": {"n_trials": 2, "concurrency": [1, 2], "repeats": 1,
              "config": {"dataset.n_train": 1000, "dataset.n_val": 500, "dataset.n_test": 500,
                         "train.batch_size": 128, "train.epochs": 1}},
}


def rss_mib() -> float | None:
    """This process's resident memory now (Linux), in MiB."""
    try:
        with open("/proc/self/status") as status:
            line = next(row for row in status if row.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024, 1)


def variant(storage: Path, monitor: Monitor, concurrency: int, config: dict[str, Any],
            values: list[float]):
    """One grid search at a concurrency; trials per minute and memory."""
    def run_once(repeat: int) -> dict[str, Any]:
        name = f"scale{concurrency}-{repeat}"
        fixed = {k: v for k, v in config.items() if k != "train.lr"}
        fixed.update({"search.algorithm": "grid", "scheduler.name": "fifo",
                      "search.num_samples": 1, "search.max_concurrent": concurrency})
        monitor.reset_peak()
        timing = run_search(search_argv(storage, name, fixed, {"train.lr": {"grid": values}}))
        trials, wall = load_run(storage, name).trials, timing["wall_s"]
        return {**timing, "trials_per_min": 60 * len(trials) / wall,
                "trial_s_median": float(trials.wall_s.median()),
                "driver_rss_mib": rss_mib(),
                "tree_rss_peak_mib": round(monitor.tree_rss_peak / 2**20, 1) or None}
    return run_once


def run(profile: str, storage: Path, monitor: Monitor) -> dict[str, Any]:
    """Each concurrency in turn per repeat; trials/min, speed-up and memory."""
    settings = PROFILES[profile]
    config = {**BASE, **settings["config"]}
    values = lrs(settings["n_trials"])
    log(f"scaling: {len(values)} trials at concurrency {settings['concurrency']}")
    driver_before = rss_mib()
    runs = interleave({str(c): variant(storage, monitor, c, config, values)
                       for c in settings["concurrency"]}, settings["repeats"])
    out: dict[str, Any] = {"n_trials": len(values), "config": config,
                           "repeats": settings["repeats"], "driver_rss_before_mib": driver_before,
                           "concurrency": {}}
    for c, c_runs in runs.items():
        out["concurrency"][c] = {key: field(c_runs, key) for key in (
            "wall_s", "cpu_s", "trials_per_min", "trial_s_median", "driver_rss_mib",
            "tree_rss_peak_mib")}
    first, last = (out["concurrency"][str(c)]["trials_per_min"]["median"]
                   for c in (settings["concurrency"][0], settings["concurrency"][-1]))
    out["speedup"] = last / first if first else None
    return out
