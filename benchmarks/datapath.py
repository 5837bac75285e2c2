"""Case 2, data path: training steps per second of tune_hw's batching vs torch's DataLoader.

The `countries` MLP of lr_batch (width 64, depth 6, SGD with momentum) at batch sizes 1, 16,
128 and 1024, over the same in-memory tensors. tune_hw's side is `training.train_one_epoch`
itself; the DataLoader side is the textbook loop over `TensorDataset` (shuffle, no worker
processes: the data is already in memory, and workers would only add copies). A bare
index-slicing loop is measured too, as the floor both are compared with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import field, interleave, log, ratio
from tune_hw import data, models, training

MODEL = {"width": 64, "depth": 6, "norm": "none"}
PROFILES = {
    # batch size -> (training rows, epochs): many short (~0.3 s) interleaved measurements
    # give steadier medians on a busy machine than a few long ones
    "full": {"sizes": {1: (1000, 1), 16: (8000, 1), 128: (40_000, 1), 1024: (100_000, 1)},
             "repeats": 8},
    "quick": {"sizes": {1: (200, 1), 16: (1600, 1), 128: (4096, 1), 1024: (4096, 1)},
              "repeats": 1},
}


def make_model(splits: data.Splits) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """lr_batch's MLP, seeded, with SGD + momentum: the same for every loop."""
    torch.manual_seed(0)
    model = models.build("mlp", splits.in_shape, splits.num_classes, **MODEL)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def tune_hw_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, split: data.Split,
                  batch_size: int, generator: torch.Generator) -> None:
    """tune_hw's own loop: shuffled index slices of the tensors, with its loss statistics."""
    training.train_one_epoch(model, optimizer, split, batch_size, generator)


def dataloader_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     split: data.Split, batch_size: int, generator: torch.Generator) -> None:
    """The textbook loop: DataLoader(TensorDataset(x, y), shuffle=True)."""
    model.train()
    loader = DataLoader(TensorDataset(split.x, split.y), batch_size=batch_size, shuffle=True,
                        generator=generator)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def slicing_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, split: data.Split,
                  batch_size: int, generator: torch.Generator) -> None:
    """The floor: the same slicing as tune_hw with nothing else (no loss statistics)."""
    model.train()
    order = torch.randperm(len(split), generator=generator)
    for start in range(0, len(split), batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(split.x[idx]), split.y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


LOOPS: dict[str, Callable[..., None]] = {
    "tune_hw": tune_hw_epoch, "dataloader": dataloader_epoch, "slicing": slicing_epoch}


def measure(loop: Callable[..., None], split: data.Split, batch_size: int, epochs: int,
            splits: data.Splits) -> Callable[[int], dict[str, Any]]:
    """One timed run of `epochs` passes; steps per wall second and per CPU second.

    CPU seconds of this thread are the steadier figure on a shared machine: a waiting
    thread uses none (torch runs on this thread alone at one intra-op thread).
    """
    steps = epochs * math.ceil(len(split) / batch_size)

    def variant(_: int) -> dict[str, Any]:
        model, optimizer = make_model(splits)
        generator = torch.Generator().manual_seed(0)
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(epochs):
            loop(model, optimizer, split, batch_size, generator)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        return {"wall_s": wall, "cpu_s": cpu, "steps_per_s": steps / wall,
                "steps_per_cpu_s": steps / cpu}
    return variant


def run(profile: str) -> dict[str, Any]:
    """Steps per second per batch size and loop, interleaved; ratios against DataLoader."""
    settings = PROFILES[profile]
    torch.set_num_threads(1)
    splits = data.load("countries", n_train=100_000, n_val=1000, n_test=1000)
    out: dict[str, Any] = {"repeats": settings["repeats"], "model": MODEL, "batch_sizes": {}}
    for batch_size, (rows, epochs) in settings["sizes"].items():
        split = data.Split(splits.train.x[:rows], splits.train.y[:rows])
        log(f"data path: batch size {batch_size} ({rows} rows x {epochs} epochs)")
        runs = interleave({name: measure(loop, split, batch_size, epochs, splits)
                           for name, loop in LOOPS.items()}, settings["repeats"], verbose=False)
        entry: dict[str, Any] = {"rows": rows, "epochs": epochs}
        for key in ("steps_per_s", "steps_per_cpu_s"):
            rates = {name: field(runs[name], key) for name in LOOPS}
            entry[key] = rates
            entry[f"{key}_ratio_vs_dataloader"] = ratio(rates["tune_hw"]["median"],
                                                        rates["dataloader"]["median"])
            entry[f"{key}_ratio_vs_slicing"] = ratio(rates["tune_hw"]["median"],
                                                     rates["slicing"]["median"])
        out["batch_sizes"][str(batch_size)] = entry
    return out
