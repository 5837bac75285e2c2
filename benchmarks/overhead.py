"""Case 1, overhead: tune_hw against a bare PyTorch loop doing the same training.

(a) one ~30 s trial: a bare loop vs a one-trial tune_hw search;
(b) N short trials: the same N configs in a bare loop vs one tune_hw search (one at a time),
    and the first config alone on both sides, which splits the overhead into a part paid
    once per search and a part paid per trial.
The bare loop runs in the warm peer process (common.start_peer). Ray is started once
beforehand; its start-up is reported apart (run.py, one-time costs).
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from benchmarks.common import (
    bare_run,
    field,
    grid_configs,
    interleave,
    load_run,
    log,
    ratio,
    run_search,
    search_argv,
)

BASE = {"dataset.name": "countries", "dataset.n_train": 100_000, "dataset.n_val": 10_000,
        "dataset.n_test": 10_000, "dataset.seed": 0, "model.name": "mlp", "model.width": 64,
        "model.depth": 6, "model.norm": "none", "train.optimizer": "sgd",
        "train.momentum": 0.9, "train.weight_decay": 0.0, "train.lr": 0.01,
        "train.batch_size": 32, "train.epochs": 20, "train.seed": 0}
SEARCH = {"search.algorithm": "grid", "scheduler.name": "fifo", "search.num_samples": 1,
          "search.max_concurrent": 1}  # one trial at a time, like the bare loop
PROFILES = {
    # lr_batch's model and epochs at batch size 32: about 30 s of training here
    "full": {"single": {}, "n_trials": 6, "many": {"dataset.n_train": 20_000,
                                                   "train.batch_size": 64, "train.epochs": 10},
             "split": True, "repeats": 3},
    "quick": {"single": {"dataset.n_train": 2000, "dataset.n_val": 500, "dataset.n_test": 500,
                         "train.epochs": 2, "train.batch_size": 128},
              "n_trials": 2, "many": {"dataset.n_train": 1000, "dataset.n_val": 500,
                                      "dataset.n_test": 500, "train.epochs": 2,
                                      "train.batch_size": 128},
              "split": False, "repeats": 1},  # the smoke test skips the 1-trial searches
}


def lrs(n: int) -> list[float]:
    """N learning rates from 0.001 to 0.03: none diverges, so both sides do equal work."""
    return [round(0.001 * (30 ** (i / max(1, n - 1))), 5) for i in range(n)]


def bare_variant(peer: Executor, configs: list[dict[str, Any]]):
    """The configs one after another in the peer process (what a notebook loop does)."""
    def variant(_: int) -> dict[str, Any]:
        return peer.submit(bare_run, configs).result()
    return variant


def tool_variant(storage: Path, label: str, base: dict[str, Any], values: list[float]):
    """One tune_hw search over a grid of the given learning rates."""
    def variant(repeat: int) -> dict[str, Any]:
        name = f"{label}-{repeat}"
        fixed = {k: v for k, v in base.items() if k != "train.lr"}
        fixed.update(SEARCH)
        argv = search_argv(storage, name, fixed, {"train.lr": {"grid": values}})
        return {**run_search(argv), **breakdown(storage, name)}
    return variant


def breakdown(storage: Path, name: str) -> dict[str, Any]:
    """Where a search's time went, from its own parquet: training, evaluation, the rest."""
    run = load_run(storage, name)
    epochs = run.epochs
    train_s = float((_rows(run) / epochs.samples_per_s).sum())  # epoch_s minus evaluation
    epoch_s = float(epochs.epoch_s.sum())
    return {"trial_s": float(run.trials.wall_s.sum()), "train_s": train_s,
            "eval_s": epoch_s - train_s, "epoch_s": epoch_s,
            "best_val_acc": float(run.trials.best_val_acc.max()),
            "statuses": run.trials.status.value_counts().to_dict()}


def _rows(run: Any) -> int:
    return int(run.study["data_sizes"]["train"])


def summarise(runs: dict[str, list[dict[str, Any]]], n_trials: int) -> dict[str, Any]:
    """Medians and min-max per variant; ratio and overhead seconds per trial."""
    bare, tool = field(runs["bare"], "wall_s"), field(runs["tune_hw"], "wall_s")
    bare_cpu, tool_cpu = field(runs["bare"], "cpu_s"), field(runs["tune_hw"], "cpu_s")
    out = {"n_trials": n_trials, "bare_s": bare, "tune_hw_s": tool,
           "ratio": ratio(tool["median"], bare["median"]), "bare_cpu_s": bare_cpu,
           "tune_hw_cpu_s": tool_cpu, "cpu_ratio": ratio(tool_cpu["median"], bare_cpu["median"]),
           "overhead_s": tool["median"] - bare["median"],
           "overhead_s_per_trial": (tool["median"] - bare["median"]) / n_trials,
           "bare_best_val_acc": runs["bare"][0]["best_val_acc"],
           "tune_hw_best_val_acc": runs["tune_hw"][0]["best_val_acc"],
           "bare_niceness": runs["bare"][0]["niceness"],
           "statuses": runs["tune_hw"][0]["statuses"]}
    for key in ("trial_s", "train_s", "eval_s", "epoch_s"):
        out[f"tune_hw_{key}"] = field(runs["tune_hw"], key)
    # outside the trials: Tune's set-up, the worker's start, result files
    out["outside_trials_s"] = tool["median"] - out["tune_hw_trial_s"]["median"]
    return out


def run(profile: str, storage: Path, peer: Executor) -> dict[str, Any]:
    """Both parts of case 1, each with interleaved repeats."""
    settings = PROFILES[profile]
    single = {**BASE, **settings["single"]}
    log(f"overhead: one trial of {single['train.epochs']} epochs")
    one = interleave({"bare": bare_variant(peer, [single]),
                      "tune_hw": tool_variant(storage, "single", single, [single["train.lr"]])},
                     settings["repeats"])
    many = {**BASE, **settings["many"]}
    values = lrs(settings["n_trials"])
    log(f"overhead: {len(values)} short trials")
    configs = grid_configs(many, "train.lr", values)
    variants = {"bare": bare_variant(peer, configs),
                "tune_hw": tool_variant(storage, "many", many, values)}
    if settings["split"]:  # the first config alone too: 1 vs N trials splits the overhead
        variants.update({"bare_1": bare_variant(peer, configs[:1]),
                         "tune_hw_1": tool_variant(storage, "many1", many, values[:1])})
    several = interleave(variants, settings["repeats"])
    split = split_overhead(several, len(values)) if settings["split"] else {}
    return {"single": {**summarise(one, 1), "config": single},
            "many": {**summarise(several, len(values)), **split, "config": many, "lrs": values},
            "repeats": settings["repeats"]}


def split_overhead(runs: dict[str, list[dict[str, Any]]], n: int) -> dict[str, Any]:
    """Overhead = fixed per search + marginal per trial, from searches of 1 and of n trials."""
    out: dict[str, Any] = {}
    for key in ("wall_s", "cpu_s"):
        med = {name: field(variant, key)["median"] for name, variant in runs.items()}
        if None in med.values():
            continue
        one, all_n = med["tune_hw_1"] - med["bare_1"], med["tune_hw"] - med["bare"]
        marginal = (all_n - one) / (n - 1)
        out[f"per_trial_{key}"], out[f"per_search_{key}"] = marginal, one - marginal
    return out
