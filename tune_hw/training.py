"""The training loop: `run_trial(config, report)` trains one config, a net or a tree ensemble.

It runs without Ray: `report(metrics, state)` is injected, so tests call it with a list and
`ray_trial` with Tune's reporter. Config keys are flat and dotted: `dataset.*`, `model.*`,
`train.*` (see studies.py). A net and its optimizer and batch-order generator are built by
`build_net`, which fused groups use too, so a fused member starts as its trial would.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune_hw import data, metrics, models, nets, trees
from tune_hw.errors import UserError
from tune_hw.metrics import EpochStats
from tune_hw.results import REPEAT_KEY

TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 10, "optimizer": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0,
    "batch_size": 128, "seed": 0, "track_grads": False,
}
OPTIMIZERS = {
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"],
                                             weight_decay=t["weight_decay"]),
    "adam": lambda params, t: torch.optim.Adam(params, lr=t["lr"],
                                               weight_decay=t["weight_decay"]),
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t["lr"],
                                                 weight_decay=t["weight_decay"]),
}
NAN_CHECK_EVERY = 1024  # steps between divergence checks inside an epoch (each one syncs)
LOSS_CHUNK = 1024  # step losses stacked into one tensor per this many steps

Reporter = Callable[[dict[str, Any], dict[str, Any]], None]
Net = tuple[nn.Module, torch.optim.Optimizer, torch.Generator]


def split_config(config: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Flat dotted config -> (dataset options, model hyperparameters, train settings).

    Repeat r of a config (its REPEAT_KEY) trains with seed train.seed + r: the same data
    split (the dataset's own seed), another initialisation and batch order."""
    sections: dict[str, dict[str, Any]] = {"dataset": {}, "model": {}, "train": {}}
    for key, value in config.items():
        section, _, name = key.partition(".")
        if section in sections and name:
            sections[section][name] = value
    for section, value in config.items():  # a searched whole section is merged over its keys
        if section in sections and isinstance(value, dict):
            sections[section].update(value)
    train = {**TRAIN_DEFAULTS, **sections["train"]}
    train["seed"] = int(train["seed"]) + int(config.get(REPEAT_KEY) or 0)
    return sections["dataset"], sections["model"], train


@functools.lru_cache(maxsize=4)
def _cached_splits(name: str, options_json: str, device: str) -> data.Splits:
    return data.load(name, **json.loads(options_json)).to(device)


def load_splits(dataset: dict[str, Any], device: str = "cpu") -> data.Splits:
    """Load a dataset once per worker process and device; reused actors hit the cache."""
    options = {k: v for k, v in dataset.items() if k != "name"}
    return _cached_splits(dataset["name"], json.dumps(options, sort_keys=True), device)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: data.Split,
                    batch_size: int, generator: torch.Generator,
                    grad_sums: torch.Tensor | None = None) -> EpochStats:
    """One pass over shuffled index slices of in-memory tensors (no per-sample DataLoader)."""
    model.train()
    order = torch.randperm(len(split), generator=generator).to(split.x.device)
    steps = math.ceil(len(split) / batch_size)
    losses = StepLosses()
    weights = [w for _, w in nets.linear_weights(model)] if grad_sums is not None else []
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        loss = F.cross_entropy(model(split.x[idx]), split.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if weights:
            grad_sums += torch.stack([w.grad.norm() for w in weights])
        optimizer.step()
        losses.add(loss)
        if step % NAN_CHECK_EVERY == NAN_CHECK_EVERY - 1 and not torch.isfinite(loss):
            return EpochStats(math.nan, math.nan, step + 1, False)
    return epoch_stats(losses.all(), steps)


class StepLosses:
    """An epoch's step losses, kept on the device (no sync per step) and stacked every
    `LOSS_CHUNK` steps: a list of one small tensor per step, 100,000 of them at batch 1,
    made a 100k-step epoch ~8 % slower per CPU-second than the minimal loop, more the
    longer the epoch (benchmarks/RESULTS.md, per_step); a per-step write into one
    preallocated tensor costs ~2 %."""

    def __init__(self) -> None:
        self.chunks: list[torch.Tensor] = []
        self.pending: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())
        if len(self.pending) == LOSS_CHUNK:
            self.chunks.append(torch.stack(self.pending))
            self.pending = []

    def all(self) -> torch.Tensor:
        """Every step's loss in step order, one 1-d tensor."""
        if self.pending:
            self.chunks.append(torch.stack(self.pending))
            self.pending = []
        return torch.cat(self.chunks)


def epoch_stats(losses: torch.Tensor, steps: int) -> EpochStats:
    """Mean, spread and finiteness of an epoch's step losses."""
    finite = bool(torch.isfinite(losses).all())
    std = float(losses.std()) if steps > 1 else 0.0
    return EpochStats(float(losses.mean()), std, steps, finite)


def build_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    """torch.optim's optimizer of `train.optimizer` over the net's parameter groups."""
    if train["optimizer"] not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {train['optimizer']!r}: use one of "
                        f"{sorted(OPTIMIZERS)}")
    return OPTIMIZERS[train["optimizer"]](nets.parameter_groups(model, train["lr"]), train)


def seeded_model(hp: dict[str, Any], splits: data.Splits, seed: int
                 ) -> nn.Module | trees.TreeBaseline:
    """Model `hp["name"]` for the splits' shapes, its initial weights fixed by `seed`."""
    torch.manual_seed(seed)
    hp = dict(hp)
    return models.build(hp.pop("name"), splits.in_shape, splits.num_classes, **hp)


def prepare_net(model: nn.Module, train: dict[str, Any], device: str,
                state: dict[str, Any] | None) -> Net:
    """The net on `device`, its optimizer and batch-order generator; `state` (a saved state of
    the trial) resumes all three."""
    model = model.to(device)
    optimizer = build_optimizer(model, train)
    generator = torch.Generator().manual_seed(train["seed"])
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
    return model, optimizer, generator


def build_net(config: dict[str, Any], splits: data.Splits, device: str = "cpu",
              state: dict[str, Any] | None = None) -> Net:
    """(model, optimizer, generator) of a net's trial, exactly as `run_trial` builds them."""
    _, hp, train = split_config(config)
    return prepare_net(seeded_model(hp, splits, train["seed"]), train, device, state)


def flush_denormals() -> None:
    """Compute with subnormal floats as zero on the CPU, in this thread and the threads it
    starts: every trial does (ray_trial.set_threads), fused or not.

    SGD's momentum buffer of a weight whose gradient is zero (a dead ReLU unit) decays by the
    momentum factor every step, down through the subnormal range (below 1.2e-38), where the
    CPU runs each operation on it in microcode: a batch-1 group of 4 lr_batch MLPs spent 5 of
    its 9 seconds in the two optimizer operations, and the gain of fusing 16 rose from 2.2x
    to 6x without them. A subnormal lies 1e-24 below float32's spacing at any value of 1e-7 or
    more, so results stay within float tolerance (tests/test_training.py); GPUs are unaffected.
    """
    torch.set_flush_denormal(True)


def run_trial(config: dict[str, Any], report: Reporter, state: dict[str, Any] | None = None,
              device: str = "cpu", context: dict[str, Any] | None = None) -> None:
    """Train one config for `train.epochs`, reporting metrics and a checkpoint state each epoch.

    `state` (from a previous report) resumes after its epoch. The state passed to `report`
    holds live views of the model's tensors: save it inside `report`. A non-finite loss reports
    `diverged=True` with finite sentinel metrics and ends the trial.
    """
    dataset, hp, train = split_config(config)
    splits = load_splits(dataset, device)
    model = seeded_model(hp, splits, train["seed"])
    fixed = metrics.trial_columns(train["seed"], splits, context)
    if isinstance(model, trees.TreeBaseline):  # trees: no optimizer, no gradients
        run_tree_trial(model, splits, train, report, state, fixed)
        return
    model, optimizer, generator = prepare_net(model, train, device, state)
    fixed["num_params"] = sum(p.numel() for p in model.parameters())
    layers = [name for name, _ in nets.linear_weights(model)]
    for epoch in range(state["epoch"] + 1 if state is not None else 1, train["epochs"] + 1):
        grad_sums = torch.zeros(len(layers), device=device) if train["track_grads"] else None
        started = time.perf_counter()
        stats = train_one_epoch(model, optimizer, splits.train, train["batch_size"], generator,
                                grad_sums)
        trained = time.perf_counter()
        measured = metrics.epoch_metrics(model, splits) if stats.finite else None
        grads = None if grad_sums is None else (layers, (grad_sums / stats.steps).tolist())
        row = metrics.epoch_row(
            epoch, stats, measured, optimizer.param_groups[0]["lr"],
            metrics.timing(len(splits.train), started, trained, time.perf_counter()), fixed,
            grads)
        report(row, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "generator": generator.get_state(), "epoch": epoch})
        if measured is None:
            return


def run_tree_trial(model: trees.TreeBaseline, splits: data.Splits, train: dict[str, Any],
                   report: Reporter, state: dict[str, Any] | None, fixed: dict[str, Any]
                   ) -> None:
    """Grow the ensemble epoch by epoch and report what a neural trial reports.

    A restored trial refits up to its checkpointed epoch (trees are deterministic for a seed)
    rather than unpickling a model: checkpoints stay plain tensors and numbers.
    """
    epochs, seed = train["epochs"], train["seed"]
    start_epoch = state["epoch"] + 1 if state is not None else 1
    rounds = model.rounds_at(start_epoch - 1, epochs) if start_epoch > 1 else 0
    if rounds:
        model.fit_to(rounds, splits.train, seed)
    for epoch in range(start_epoch, epochs + 1):
        target = model.rounds_at(epoch, epochs)
        started = time.perf_counter()
        model.fit_to(target, splits.train, seed)
        trained = time.perf_counter()
        measured = metrics.measure(model.evaluate, splits)
        stats = EpochStats(measured["train_loss"], math.nan, target - rounds, True)
        report(metrics.epoch_row(
            epoch, stats, measured, model.learning_rate,
            metrics.timing(len(splits.train), started, trained, time.perf_counter()),
            {**fixed, "num_params": model.num_nodes()}), {"epoch": epoch})
        rounds = target
