"""Shared pieces: statistics, interleaved repeats, the bare PyTorch loop, and tune_hw runs.

Every tune_hw figure comes from the real CLI entry point (`tune_hw.search.main`) or the real
training loop (`tune_hw.training`), so the suite measures the tool, not a copy of it.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.machine import tree_cpu_s
from tune_hw import data, models, results
from tune_hw.training import flush_denormals, split_config

TORCH_THREADS = 1  # what a 1-CPU Ray trial gets (ray_trial.set_threads); both sides use it
STUDY = "lr_batch"


def log(message: str) -> None:
    """Progress on stderr, so a long run shows where it is."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, Any]:
    """Median, min, max and every value (the table shows the first three)."""
    clean = [v for v in values if v is not None]
    if not clean:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean),
            "n": len(clean), "values": clean}


def interleave(variants: dict[str, Callable[[int], dict[str, Any]]], repeats: int,
               verbose: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Run A, B, A, B, ...: drifting background load then hits every variant alike."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name, variant in variants.items():
            if verbose:
                log(f"  {name} (repeat {repeat + 1}/{repeats})")
            runs[name].append(variant(repeat))
    return runs


def field(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The summary of one measured key over a variant's repeats."""
    return summary([run[key] for run in runs])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def warm_up() -> None:
    """Pay torch's one-time lazy imports (the first optimizer imports torch._dynamo) up front.

    Otherwise the first bare-loop repeat would carry ~2-4 s that no later repeat does. Bare
    loops also compute with subnormals as zero, as every trial does (ray_trial.set_threads):
    the two sides then do the same arithmetic, and the ratios measure the tool's machinery.
    """
    torch.set_num_threads(TORCH_THREADS)
    flush_denormals()
    torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)


# ------------------------------------------------------------------------- the peer process

def ray_worker_niceness() -> int:
    """The OS niceness Ray starts its workers with (15 unless RAY_worker_niceness says)."""
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    return ray.get(niceness.remote())


def start_peer(niceness: int, workers: int = 1) -> ProcessPoolExecutor:
    """Warm processes at the trials' priority that run the bare loop and plain Optuna.

    Ray runs trials at niceness 15; on a shared machine a bare loop at niceness 0 would win
    every contended core from them, and the comparison would measure the OS scheduler.
    """
    pool = ProcessPoolExecutor(max_workers=workers,
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_peer, initargs=(niceness,))
    for future in [pool.submit(time.sleep, 0.5) for _ in range(workers)]:
        future.result()  # every process started and warm before anything is timed
    return pool


def _init_peer(niceness: int) -> None:
    os.nice(niceness - os.nice(0))
    warm_up()


# ---------------------------------------------------------------------------- bare loop

def bare_train(config: dict[str, Any], splits: data.Splits) -> float:
    """The honest minimal loop a user would write: shuffle, slice, step; val accuracy per epoch.

    Same model (`models.build`), tensors, seed, optimizer, batch size and epochs as the tool;
    returns the best validation accuracy (it matches tune_hw's, which shows the work is equal).
    """
    model, optimizer, generator, train = bare_net(config, splits)
    best = 0.0
    for _ in range(train["epochs"]):
        bare_epoch(model, optimizer, generator, splits.train, train["batch_size"])
        model.eval()
        with torch.no_grad():
            predicted = model(splits.val.x).argmax(1)
        best = max(best, (predicted == splits.val.y).float().mean().item())
    return best


def bare_net(config: dict[str, Any], splits: data.Splits) -> tuple[
        torch.nn.Module, torch.optim.Optimizer, torch.Generator, dict[str, Any]]:
    """The bare loop's model, plain SGD, batch-order generator and train settings."""
    _, hp, train = split_config(config)
    if train["optimizer"] != "sgd" or train["weight_decay"]:
        raise ValueError("the bare loop is plain SGD with momentum: set the config to match")
    torch.manual_seed(train["seed"])
    model = models.build(hp.pop("name"), splits.in_shape, splits.num_classes, **hp)
    optimizer = torch.optim.SGD(model.parameters(), lr=train["lr"], momentum=train["momentum"])
    return model, optimizer, torch.Generator().manual_seed(train["seed"]), train


def bare_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, split: data.Split, batch_size: int) -> None:
    """One epoch of the minimal loop: shuffle, slice, step (nothing kept, nothing checked)."""
    model.train()
    x, y = split.x, split.y
    order = torch.randperm(len(y), generator=generator)
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def bare_run(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """Load the data once, then train every config in turn, timed (in the peer process)."""
    started, cpu = time.perf_counter(), time.process_time()
    splits = load_data(configs[0])
    best = [bare_train(config, splits) for config in configs]
    return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "best_val_acc": max(best), "niceness": os.nice(0)}


def load_data(config: dict[str, Any]) -> data.Splits:
    """The dataset of a flat config, generated afresh (not from tune_hw's per-process cache)."""
    dataset, _, _ = split_config(config)
    options = {k: v for k, v in dataset.items() if k != "name"}
    return data.load(dataset["name"], **options)


# ------------------------------------------------------------------------------ tune_hw

def search_argv(storage: Path, name: str, fixed: dict[str, Any],
                space: dict[str, Any] | None = None) -> list[str]:
    """`python -m tune_hw.search lr_batch ...` arguments: fixed keys, then searched keys;
    unfused unless `fixed` says otherwise (these cases measure one trial per config: fusion
    is benchmarked by `fusion` and `fused_study`)."""
    argv = [STUDY, "--storage-path", str(storage), "--name", name, "--fuse", "off"]
    for key, value in fixed.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]  # JSON is valid YAML flow style
    for key, value in (space or {}).items():
        argv += ["--set", f"space.{key}={json.dumps(value)}"]
    return argv


def run_search(argv: list[str]) -> dict[str, float | None]:
    """Run tune_hw's CLI entry point in this process (Ray already up), timed.

    `cpu_s` is the CPU of the whole tool: this driver, Ray's daemons and the trial workers.
    Tune's progress tables go to a buffer: they would drown the suite's own log.
    """
    from tune_hw import search

    buffer = io.StringIO()
    cpu, started = tree_cpu_s(), time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = search.main(argv)
    wall, cpu_after = time.perf_counter() - started, tree_cpu_s()
    if code != 0:
        raise RuntimeError(f"tune_hw.search {' '.join(argv)} exited {code}:\n"
                           f"{buffer.getvalue()[-3000:]}")
    return {"wall_s": wall, "cpu_s": None if cpu is None else cpu_after - cpu}


def load_run(storage: Path, name: str) -> results.Run:
    return results.load_run(storage / STUDY / name)


def grid_configs(base: dict[str, Any], key: str, values: list[Any]) -> list[dict[str, Any]]:
    """The configs a grid over `key` produces, for the bare loop to run one by one."""
    return [{**base, key: value} for value in values]
