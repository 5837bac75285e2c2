"""Case 5, fusion: training steps per second per member, K fused members vs one model at a time.

lr_batch's MLP (width 64, depth 6, SGD + momentum; norm none and batch) on countries and the
architectures study's CNN (kernel 3, 32 channels, depth 3, Adam) on 1x8x8 digits, at batch
sizes 1, 16, 128 and 1024 and K = 1, 4, 16, 64, one torch thread. "single" is
`training.train_one_epoch` on one model (what an unfused trial runs per epoch); "fused" is
`fused.FusedGroup.train_epoch` on K members with their own seeds and learning rates. The
ratio is the fused steps per second per member over the single model's steps per second.

Part two, mechanism: one forward + backward of the same K models through tune_hw's grouped
operations (`stacked.StackedNet`) and through `torch.func` (`stack_module_state` +
`functional_call` + `vmap`), the measurement behind choosing grouped operations.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import field, interleave, log, ratio
from tune_hw import data, fused, training
from tune_hw.stacked import StackedNet

COUNTRIES = {"dataset.name": "countries", "model.name": "mlp", "model.width": 64,
             "model.depth": 6, "train.optimizer": "sgd", "train.momentum": 0.9}
MODELS: dict[str, dict[str, Any]] = {
    "mlp": {**COUNTRIES, "model.norm": "none"},
    "mlp_bn": {**COUNTRIES, "model.norm": "batch"},
    "cnn": {"dataset.name": "digits", "model.name": "cnn", "model.kernel_size": 3,
            "model.channels": 32, "model.depth": 3, "train.optimizer": "adam"},
}
PROFILES = {
    # each measurement runs about `seconds` (calibrated per cell, within the step bounds)
    "full": {"batch_sizes": (1, 16, 128, 1024), "members": (1, 4, 16, 64), "repeats": 3,
             "seconds": 0.5, "steps": (2, 400), "mechanism": ((1, 16), (16, 16), (128, 4)),
             "mechanism_repeats": 5, "mechanism_seconds": 0.3},
    "quick": {"batch_sizes": (1, 16), "members": (1, 4), "repeats": 1, "seconds": 0.01,
              "steps": (2, 4), "mechanism": ((16, 4),), "mechanism_repeats": 1,
              "mechanism_seconds": 0.01},
}
MIN_GAIN = 1.2  # fusing K members pays when it trains each at least this much faster


def member_configs(model: str, members: int, batch_size: int) -> list[dict[str, Any]]:
    """K configs of one structure: seeds 0..K-1 and learning rates spread over a decade."""
    lrs = [0.01 * 10 ** (k / max(1, members - 1) - 0.5) for k in range(members)]
    return [{**MODELS[model], "train.batch_size": batch_size, "train.seed": k, "train.lr": lr}
            for k, lr in enumerate(lrs)]


def load(model: str) -> data.Splits:
    dataset = {"name": MODELS[model]["dataset.name"]}
    if dataset["name"] == "countries":
        dataset.update(n_train=20_000, n_val=1000, n_test=1000)
    return training.load_splits(dataset)


def rows(split: data.Split, n: int) -> data.Split:
    """The first n rows of the training split, repeated when it is shorter (timing only)."""
    reps = math.ceil(n / len(split))
    return data.Split(split.x.repeat(reps, *[1] * (split.x.dim() - 1))[:n],
                      split.y.repeat(reps)[:n])


def timed_epoch(splits: data.Splits, configs: list[dict[str, Any]], fuse: bool,
                split: data.Split) -> tuple[float, float]:
    """Build (untimed), then one timed epoch over `split`: wall and thread CPU seconds.

    fuse: the K configs as one FusedGroup (K = 1 too); else configs[0] as an unfused trial.
    """
    batch_size = configs[0]["train.batch_size"]
    if fuse:
        group = fused.build_group(configs, splits)
        epoch = lambda: group.train_epoch(split, batch_size)
    else:
        model, optimizer, generator = training.build_net(configs[0], splits, "cpu")
        epoch = lambda: training.train_one_epoch(model, optimizer, split, batch_size, generator)
    wall, cpu = time.perf_counter(), time.thread_time()
    epoch()
    return time.perf_counter() - wall, time.thread_time() - cpu


def variant(splits: data.Splits, configs: list[dict[str, Any]], fuse: bool, steps: int
            ) -> Callable[[int], dict[str, Any]]:
    """One measurement of `steps` steps per member: fused K members, or one model."""
    members = len(configs) if fuse else 1
    split = rows(splits.train, steps * configs[0]["train.batch_size"])

    def run(_: int) -> dict[str, Any]:
        wall, cpu = timed_epoch(splits, configs, fuse, split)
        return {"steps_per_s": members * steps / wall, "steps_per_cpu_s": members * steps / cpu}
    return run


def calibrate(splits: data.Splits, configs: list[dict[str, Any]], fuse: bool,
              settings: dict[str, Any]) -> int:
    """Steps per measurement so that one takes about `seconds` (also warms the path up)."""
    low, high = settings["steps"]
    per_step = 1 / variant(splits, configs, fuse, low)(0)["steps_per_cpu_s"]
    per_step *= len(configs) if fuse else 1
    return int(min(high, max(low, settings["seconds"] / per_step)))


def cell(model: str, batch_size: int, splits: data.Splits, settings: dict[str, Any]
         ) -> dict[str, Any]:
    """Single vs fused at every K for one model and batch size, interleaved."""
    largest = member_configs(model, max(settings["members"]), batch_size)
    variants = {"single": variant(splits, largest, False,
                                  calibrate(splits, largest, False, settings))}
    for k in settings["members"]:
        configs = largest[:k]
        variants[f"fused_{k}"] = variant(splits, configs, True,
                                         calibrate(splits, configs, True, settings))
    runs = interleave(variants, settings["repeats"], verbose=False)
    out: dict[str, Any] = {}
    for key in ("steps_per_s", "steps_per_cpu_s"):
        rates = {name: field(runs[name], key) for name in variants}
        out[key] = rates
        out[f"{key}_ratio"] = {str(k): ratio(rates[f"fused_{k}"]["median"],
                                             rates["single"]["median"])
                               for k in settings["members"]}
    return out


def useful_members(ratios: dict[str, float | None]) -> int:
    """The largest K within 10 % of the best per-member speed-up, or 0 when none pays."""
    gains = {int(k): r for k, r in ratios.items() if r is not None and int(k) > 1}
    best = max(gains.values(), default=0.0)
    if best < MIN_GAIN:
        return 0
    return max(k for k, r in gains.items() if r >= 0.9 * best)


# ------------------------------------------------------------------------------ mechanism

def mechanism_variants(model: str, members: int, batch_size: int, splits: data.Splits,
                       seconds: float) -> dict[str, Callable[[int], dict[str, Any]]]:
    """Forward + backward of K models: grouped ops vs torch.func vmap (same models, data)."""
    from torch.func import functional_call, stack_module_state, vmap

    configs = member_configs(model, members, batch_size)
    modules = [training.build_net(c, splits, "cpu")[0] for c in configs]
    index = torch.randint(0, len(splits.train), (members, batch_size),
                          generator=torch.Generator().manual_seed(0))
    x, y = splits.train.x[index], splits.train.y[index]
    net = StackedNet.from_modules(modules)
    params, buffers = stack_module_state(modules)
    base = copy.deepcopy(modules[0]).to("meta")

    def one(x_k: torch.Tensor, p: dict, b: dict) -> torch.Tensor:
        return functional_call(base, (p, b), (x_k,))

    def grouped() -> None:
        net.grad.zero_()
        with warnings.catch_warnings():  # strided row views, as in FusedGroup.train_epoch
            warnings.filterwarnings("ignore", message="grad and param do not obey")
            _member_loss(net(x), y).backward()

    def vmapped() -> None:
        for p in params.values():
            p.grad = None
        _member_loss(vmap(one)(x, params, buffers), y).backward()
    return {"grouped": _timed(grouped, seconds), "vmap": _timed(vmapped, seconds)}


def _member_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    per_row = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    return per_row.view(y.shape).mean(1).sum()


def _timed(step: Callable[[], None], seconds: float) -> Callable[[int], dict[str, Any]]:
    """Steps per thread-CPU second of `step`, repeated for about `seconds`."""
    def run(_: int) -> dict[str, Any]:
        step()  # warm
        count, cpu = 0, time.thread_time()
        while time.thread_time() - cpu < seconds or count < 2:
            step()
            count += 1
        return {"steps_per_cpu_s": count / (time.thread_time() - cpu)}
    return run


def mechanism(settings: dict[str, Any], data_for: dict[str, data.Splits]) -> dict[str, Any]:
    """Grouped ops vs vmap per model at a few (batch size, K) points, interleaved."""
    out: dict[str, Any] = {}
    for model in MODELS:
        for batch_size, members in settings["mechanism"]:
            if model == "mlp_bn" and batch_size == 1:
                continue
            variants = mechanism_variants(model, members, batch_size, data_for[model],
                                          settings["mechanism_seconds"])
            runs = interleave(variants, settings["mechanism_repeats"], verbose=False)
            rates = {name: field(runs[name], "steps_per_cpu_s") for name in variants}
            out[f"{model}/b{batch_size}/k{members}"] = {
                "steps_per_cpu_s": rates,
                "grouped_vs_vmap": ratio(rates["grouped"]["median"], rates["vmap"]["median"])}
    return out


def run(profile: str) -> dict[str, Any]:
    """Every model x batch size x K cell, then the mechanism comparison."""
    settings = PROFILES[profile]
    torch.set_num_threads(1)
    training.flush_denormals()  # both sides, as every trial computes (ray_trial.set_threads)
    data_for = {model: load(model) for model in MODELS}
    out: dict[str, Any] = {"repeats": settings["repeats"], "models": MODELS, "cells": {},
                           "useful_members": {}}
    for model in MODELS:
        for batch_size in settings["batch_sizes"]:
            if model == "mlp_bn" and batch_size == 1:
                continue  # BatchNorm cannot train on one row (unfused neither)
            log(f"fusion: {model} at batch {batch_size}, K = {settings['members']}")
            entry = cell(model, batch_size, data_for[model], settings)
            out["cells"][f"{model}/{batch_size}"] = entry
            out["useful_members"][f"{model}/{batch_size}"] = useful_members(
                entry["steps_per_cpu_s_ratio"])
    log("fusion: mechanism, grouped ops vs torch.func vmap")
    out["mechanism"] = mechanism(settings, data_for)
    return out
