"""Case 7, per_step: the cost of one training step inside a Tune trial against outside Ray.

lr_batch's MLP (countries, width 64, depth 6, SGD + momentum) at batch size 1, one epoch,
one torch thread, every variant at the trials' niceness:
(a) `minimal`: the minimal loop (shuffle, slice, step) in the warm peer process;
(a2) `minimal_two`: two minimal loops at once in two such processes (the same contention for
     the two cores as two trials, without Ray);
(b) `run_trial`: `training.run_trial` outside Ray, in the warm peer process;
(c) `tune_one` / `tune_two`: one trial alone, and two trials at once (one CPU each), through
    `tune_hw.search` with `--fuse off` (the unfused trainable, `ray_trial.tune_trainable`).
Steps per second count training only (the rows' `samples_per_s`, or the loop's own clock), so
Ray's and the worker's start-up are left out. Steps per CPU-second divide by the cores the
training process used while it trained: for the Tune trials from `cpu_account`, which also
says where the machine's CPU went while they ran.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import ray
import torch

from benchmarks.common import (
    bare_epoch,
    bare_net,
    field,
    interleave,
    load_data,
    load_run,
    log,
    ratio,
    run_search,
    search_argv,
)
from benchmarks.cpu_account import CpuAccount
from benchmarks.overhead import BASE
from tune_hw import ray_trial, training

CONFIG = {**BASE, "dataset.n_val": 1000, "dataset.n_test": 1000, "train.batch_size": 1,
          "train.epochs": 1}
LRS = (0.01, 0.005)  # the two trials of `tune_two`; neither diverges at batch 1
PROFILES = {"full": {"rows": 30_000, "repeats": 3}, "quick": {"rows": 500, "repeats": 1}}
VARIANTS = ("minimal", "minimal_two", "run_trial", "tune_one", "tune_two")


def settings() -> dict[str, Any]:
    """The thread and priority settings of the calling process."""
    return {"niceness": os.nice(0), "torch_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
            "os_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc") else None}


def trial_settings() -> dict[str, Any]:
    """What a trial's worker runs with, after the trainable's own `set_threads`."""
    ray_trial.set_threads()
    return settings()


def rates(steps: int, train_s: float, wall_s: float, cpu_s: float) -> dict[str, float]:
    """Steps per second of training, and per CPU-second at the cores the process used."""
    per_s = steps / train_s
    return {"steps": steps, "steps_per_s": per_s, "cores": cpu_s / wall_s,
            "steps_per_cpu_s": per_s * wall_s / cpu_s}


def minimal_epoch(config: dict[str, Any]) -> dict[str, Any]:
    """(a) One timed epoch of the minimal loop (data and model built untimed)."""
    splits = load_data(config)
    model, optimizer, generator, train = bare_net(config, splits)
    started, cpu = time.perf_counter(), time.process_time()
    bare_epoch(model, optimizer, generator, splits.train, train["batch_size"])
    wall = time.perf_counter() - started
    steps = -(-len(splits.train) // train["batch_size"])
    return rates(steps, wall, wall, time.process_time() - cpu)


def run_trial_epoch(config: dict[str, Any]) -> dict[str, Any]:
    """(b) One epoch of `training.run_trial`, its rate from its own row (training only)."""
    dataset, _, _ = training.split_config(config)
    training.load_splits(dataset)  # loaded untimed, as a trial's data is before its epoch
    rows: list[dict[str, Any]] = []
    marks: dict[str, float] = {}

    def report(row: dict[str, Any], _: dict[str, Any]) -> None:
        marks.setdefault("wall", time.perf_counter())
        marks.setdefault("cpu", time.process_time())
        rows.append(row)

    started, cpu = time.perf_counter(), time.process_time()
    training.run_trial(config, report)
    train_s = dataset["n_train"] / rows[0]["samples_per_s"]
    return rates(rows[0]["steps"], train_s, marks["wall"] - started, marks["cpu"] - cpu)


def pair_variant(pair: Executor, config: dict[str, Any]):
    """(a2) Two minimal loops at once; each loop's own rates, averaged."""
    def variant(_: int) -> dict[str, Any]:
        both = [f.result() for f in [pair.submit(minimal_epoch, config) for _ in range(2)]]
        return {key: sum(run[key] for run in both) / 2 for key in both[0]}
    return variant


def tune_variant(storage: Path, config: dict[str, Any], trials: int):
    """(c) `trials` trials at once through tune_hw's CLI, fusion off, CPU accounted."""
    def variant(repeat: int) -> dict[str, Any]:
        name = f"perstep{trials}-{repeat}"
        fixed = {k: v for k, v in config.items() if k != "train.lr"}
        fixed.update({"search.algorithm": "grid", "scheduler.name": "fifo",
                      "search.num_samples": 1, "search.max_concurrent": trials,
                      "search.fuse": "off"})
        argv = search_argv(storage, name, fixed, {"train.lr": {"grid": list(LRS[:trials])}})
        with CpuAccount() as account:
            run_search(argv)
        epochs = load_run(storage, name).epochs
        train_s = config["dataset.n_train"] / epochs.samples_per_s
        per_s = float((epochs.steps / train_s).mean())
        used = account.result()
        workers = used["trial_workers"]
        cores = sum(w["cores"] for w in workers) / len(workers) if workers else None
        return {"steps": int(epochs.steps.iloc[0]), "steps_per_s": per_s, "cores": cores,
                "steps_per_cpu_s": per_s / cores if cores else None, "account": used}
    return variant


def roles_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median cores and CPU seconds per role over a Tune variant's repeats, and its workers."""
    roles = sorted({role for run in runs for role in run["account"]["cores"]})
    workers = [w for run in runs for w in run["account"]["trial_workers"]]
    return {"cores": {r: field([{"v": run["account"]["cores"].get(r, 0.0)} for run in runs],
                               "v") for r in roles},
            "cpu_s": {r: field([{"v": run["account"]["cpu_s"].get(r, 0.0)} for run in runs],
                               "v") for r in roles},
            "wall_s": field([run["account"] for run in runs], "wall_s"),
            "worker_cores": field(workers, "cores"),
            "worker_training_thread_share": field(workers, "training_thread_share")}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: steps/s and steps per CPU-second, and their ratios to (a) and (b)."""
    out: dict[str, Any] = {}
    for name, variant_runs in runs.items():
        entry = {key: field(variant_runs, key) for key in ("steps_per_s", "steps_per_cpu_s",
                                                            "cores")}
        if "account" in variant_runs[0]:
            entry["account"] = roles_summary(variant_runs)
        out[name] = entry
    for entry in out.values():
        for key in ("steps_per_s", "steps_per_cpu_s"):
            for base in ("minimal", "run_trial"):
                entry[f"{key}_vs_{base}"] = ratio(entry[key]["median"],
                                                  out[base][key]["median"])
    return out


def run(profile: str, storage: Path, peer: Executor, pair: Executor) -> dict[str, Any]:
    """The five variants interleaved, and the thread settings inside and outside Ray."""
    settings_ = PROFILES[profile]
    config = {**CONFIG, "dataset.n_train": settings_["rows"]}
    log(f"per_step: batch 1, {settings_['rows']:,} rows, {settings_['repeats']} repeats")
    runs = interleave({
        "minimal": lambda _: peer.submit(minimal_epoch, config).result(),
        "minimal_two": pair_variant(pair, config),
        "run_trial": lambda _: peer.submit(run_trial_epoch, config).result(),
        "tune_one": tune_variant(storage, config, 1),
        "tune_two": tune_variant(storage, config, 2)}, settings_["repeats"])
    inside = ray.get(ray.remote(num_cpus=1)(trial_settings).remote())
    return {"config": config, "repeats": settings_["repeats"], "variants": summarise(runs),
            "settings": {"trial_worker": inside, "peer": peer.submit(settings).result(),
                         "driver": settings()},
            "runs": runs}
