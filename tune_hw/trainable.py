"""The training loop and the one Ray Tune trainable that wraps every architecture.

`run_trial(config, report)` trains without Ray: `report(metrics, state)` is injected, so tests
call it with a list; `tune_trainable` is the same loop with Ray's reporter and checkpoints.
Config keys are flat and dotted: `dataset.*`, `model.*`, `train.*` (see spaces.py).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune_hw import data, models, nets, trees
from tune_hw.errors import UserError
from tune_hw.layout import BEST_STATE_FILE, LATEST_STATE_FILE, MARKER_FILE, trial_dir_name
from tune_hw.ranking import VALIDATION_METRICS, Ranking
from tune_hw.results import atomic_write

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
SENTINEL_LOSS = 1e9  # finite: the searcher and ASHA must see a bad value, not NaN
TRAIN_EVAL_ROWS = 10_000  # train accuracy is measured on this many training rows
NAN_CHECK_EVERY = 1024  # steps between divergence checks inside an epoch (each one syncs)

Reporter = Callable[[dict[str, Any], dict[str, Any]], None]


def split_config(config: dict[str, Any]) -> tuple[dict, dict, dict]:
    """Flat dotted config -> (dataset options, model hyperparameters, train settings)."""
    sections: dict[str, dict[str, Any]] = {"dataset": {}, "model": {}, "train": {}}
    for key, value in config.items():
        section, _, name = key.partition(".")
        if section in sections and name:
            sections[section][name] = value
    for section, value in config.items():  # a searched whole section is merged over its keys
        if section in sections and isinstance(value, dict):
            sections[section].update(value)
    train = {**TRAIN_DEFAULTS, **sections["train"]}
    return sections["dataset"], sections["model"], train


@functools.lru_cache(maxsize=4)
def _cached_splits(name: str, options_json: str, device: str) -> data.Splits:
    return data.load(name, **json.loads(options_json)).to(device)


def load_splits(dataset: dict[str, Any], device: str = "cpu") -> data.Splits:
    """Load a dataset once per worker process and device; reused actors hit the cache."""
    options = {k: v for k, v in dataset.items() if k != "name"}
    return _cached_splits(dataset["name"], json.dumps(options, sort_keys=True), device)


@dataclass
class EpochStats:
    loss: float
    loss_std: float
    steps: int
    finite: bool


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, split: data.Split,
                    batch_size: int, generator: torch.Generator,
                    grad_sums: torch.Tensor | None = None) -> EpochStats:
    """One pass over shuffled index slices of in-memory tensors (no per-sample DataLoader)."""
    model.train()
    order = torch.randperm(len(split), generator=generator).to(split.x.device)
    steps = math.ceil(len(split) / batch_size)
    step_losses: list[torch.Tensor] = []  # stacked once at the end: a per-step write costs ~2 %
    weights = [w for _, w in nets.linear_weights(model)] if grad_sums is not None else []
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        loss = F.cross_entropy(model(split.x[idx]), split.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if weights:
            grad_sums += torch.stack([w.grad.norm() for w in weights])
        optimizer.step()
        step_losses.append(loss.detach())
        if step % NAN_CHECK_EVERY == NAN_CHECK_EVERY - 1 and not torch.isfinite(loss):
            return EpochStats(math.nan, math.nan, step + 1, False)
    losses = torch.stack(step_losses)
    finite = bool(torch.isfinite(losses).all())
    std = float(losses.std()) if steps > 1 else 0.0
    return EpochStats(float(losses.mean()), std, steps, finite)


@torch.no_grad()
def evaluate(model: nn.Module, split: data.Split, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode."""
    model.eval()
    loss_sum, correct = torch.zeros((), device=split.x.device), torch.zeros((), dtype=torch.long,
                                                                            device=split.x.device)
    for start in range(0, len(split), batch_size):
        logits = model(split.x[start:start + batch_size])
        target = split.y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return float(loss_sum) / len(split), int(correct) / len(split)


def build_optimizer(model: nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    if train["optimizer"] not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {train['optimizer']!r}: use one of "
                        f"{sorted(OPTIMIZERS)}")
    return OPTIMIZERS[train["optimizer"]](nets.parameter_groups(model, train["lr"]), train)


# what an epoch without measurements (diverged) or a failed config reports: finite, so the
# searcher and ASHA see a bad value, not NaN; nothing after them reads these values
SENTINEL_METRICS = {f"{s}_{m}": (SENTINEL_LOSS if m == "loss" else 0.0)
                    for s in ("train", "val", "test") for m in ("loss", "acc")}


def epoch_metrics(model: nn.Module, splits: data.Splits) -> dict[str, float] | None:
    """Train (on a fixed subset), validation and test loss/accuracy after an epoch.

    Test is measured for the analysis only: nothing in the search reads it. None when any
    value is not finite: the weights blew up even if every step loss was finite.
    """
    train_subset = data.Split(splits.train.x[:TRAIN_EVAL_ROWS], splits.train.y[:TRAIN_EVAL_ROWS])
    metrics = {}
    for name, split in (("train", train_subset), ("val", splits.val), ("test", splits.test)):
        metrics[f"{name}_loss"], metrics[f"{name}_acc"] = evaluate(model, split)
    return metrics if all(math.isfinite(v) for v in metrics.values()) else None


def run_trial(config: dict[str, Any], report: Reporter, state: dict[str, Any] | None = None,
              device: str = "cpu", context: dict[str, Any] | None = None) -> None:
    """Train one config for `train.epochs`, reporting metrics and a checkpoint state each epoch.

    `state` (from a previous report) resumes after its epoch. The state passed to `report`
    holds live views of the model's tensors: save it inside `report`. A non-finite loss reports
    `diverged=True` with finite sentinel metrics and ends the trial.
    """
    dataset, hp, train = split_config(config)
    splits = load_splits(dataset, device)
    torch.manual_seed(train["seed"])
    model = models.build(hp.pop("name"), splits.in_shape, splits.num_classes, **hp)
    # the trial's own split sizes: the analysis's standard errors and bootstrap need them
    fixed = {"seed": train["seed"], **{f"{k}_size": n for k, n in splits.sizes().items()},
             **(context or {})}
    if isinstance(model, trees.TreeBaseline):  # trees: no optimizer, no gradients
        run_tree_trial(model, splits, train, report, state, fixed)
        return
    model = model.to(device)
    optimizer = build_optimizer(model, train)
    generator = torch.Generator().manual_seed(train["seed"])
    start_epoch = 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start_epoch = state["epoch"] + 1
    fixed["num_params"] = sum(p.numel() for p in model.parameters())
    layers = nets.linear_weights(model)
    for epoch in range(start_epoch, train["epochs"] + 1):
        grad_sums = torch.zeros(len(layers), device=device) if train["track_grads"] else None
        started = time.perf_counter()
        stats = train_one_epoch(model, optimizer, splits.train, train["batch_size"], generator,
                                grad_sums)
        train_s = time.perf_counter() - started
        measured = epoch_metrics(model, splits) if stats.finite else None
        diverged = measured is None
        metrics = {
            "epoch": epoch, "steps": stats.steps, **(SENTINEL_METRICS if diverged else measured),
            "lr": optimizer.param_groups[0]["lr"], "epoch_s": time.perf_counter() - started,
            "samples_per_s": len(splits.train) / train_s if train_s > 0 else math.nan,
            "step_loss_std": math.nan if diverged else stats.loss_std,
            "step_loss_mean": stats.loss, "diverged": diverged, **fixed,
        }
        if grad_sums is not None and not diverged:
            metrics["grad_layers"] = [name for name, _ in layers]
            metrics["grad_norms"] = (grad_sums / stats.steps).tolist()
        report(metrics, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "generator": generator.get_state(), "epoch": epoch})
        if diverged:
            return


def run_tree_trial(model: trees.TreeBaseline, splits: data.Splits, train: dict[str, Any],
                   report: Reporter,
                   state: dict[str, Any] | None, fixed: dict[str, Any]) -> None:
    """Grow the ensemble epoch by epoch and report what a neural trial reports.

    A restored trial refits up to its checkpointed epoch (trees are deterministic for a seed)
    rather than unpickling a model: checkpoints stay plain tensors and numbers.
    """
    epochs, seed = train["epochs"], train["seed"]
    train_subset = data.Split(splits.train.x[:TRAIN_EVAL_ROWS], splits.train.y[:TRAIN_EVAL_ROWS])
    start_epoch = state["epoch"] + 1 if state is not None else 1
    rounds = model.rounds_at(start_epoch - 1, epochs) if start_epoch > 1 else 0
    if rounds:
        model.fit_to(rounds, splits.train, seed)
    for epoch in range(start_epoch, epochs + 1):
        target = model.rounds_at(epoch, epochs)
        started = time.perf_counter()
        model.fit_to(target, splits.train, seed)
        fit_s = time.perf_counter() - started
        metrics: dict[str, Any] = {"epoch": epoch, "steps": target - rounds}
        for name, split in (("train", train_subset), ("val", splits.val), ("test", splits.test)):
            metrics[f"{name}_loss"], metrics[f"{name}_acc"] = model.evaluate(split)
        metrics.update({
            "lr": model.learning_rate, "epoch_s": time.perf_counter() - started,
            "samples_per_s": len(splits.train) / fit_s if fit_s > 0 else math.nan,
            "step_loss_std": math.nan, "step_loss_mean": metrics["train_loss"],
            "diverged": False, **fixed, "num_params": model.num_nodes(),
        })
        rounds = target
        report(metrics, {"epoch": epoch})


# ----------------------------------------------------------------------------- Ray Tune

class TrialStates:
    """A trial's two saved states in its directory of the run, each replaced atomically: the
    latest (retries and --resume continue from it) and its best epoch's by the study's ranking
    (what `weights: run:` transfers).

    Tune itself keeps no checkpoints: for Tune to delete superseded ones it forces a snapshot
    of the whole experiment every few epochs, and each snapshot costs O(trials), so a search
    of 1,000 short trials spent most of its time snapshotting (benchmarks/, case snapshot).
    """

    def __init__(self, trial_dir: Path, ranking: Ranking):
        self.trial_dir, self.ranking = trial_dir, ranking
        self.best: dict[str, Any] | None = None  # metrics of the best epoch saved so far

    def latest(self) -> dict[str, Any] | None:
        """The latest saved state, on the CPU whatever device saved it (the batch-order
        generator only takes a CPU state; load_state_dict moves the rest to the model's)."""
        path = self.trial_dir / LATEST_STATE_FILE
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.best = state.pop("best", None)
        return state

    def keep_if_best(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        """Save `state` as the best when its epoch ranks above the best so far."""
        if self.ranking.best_epoch([metrics, self.best] if self.best else [metrics]) is metrics:
            self.best = {k: metrics[k] for k in ("epoch", "diverged", *VALIDATION_METRICS)}
            self._save(BEST_STATE_FILE, state)

    def keep_latest(self, state: dict[str, Any]) -> None:
        self._save(LATEST_STATE_FILE, {**state, "best": self.best})

    def _save(self, name: str, state: dict[str, Any]) -> None:
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.trial_dir / name, lambda tmp: torch.save(state, tmp))


def _ray_context() -> tuple[str, dict[str, Any]]:
    """The device Ray assigned this trial, and where it runs (node id, GPU ids)."""
    import ray

    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    return device, {"node_id": ray.get_runtime_context().get_node_id(),
                    "gpu_ids": ",".join(gpu_ids)}


def _set_threads() -> None:
    """Torch threads follow the CPUs Ray gave the trial (oversubscription slows every trial)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def _report_with_marker(metrics: dict[str, Any]) -> None:
    """Report with a marker checkpoint (a note, no state), once per trial: Tune treats a trial
    without a checkpoint as new on --resume and starts its result files afresh, which would
    lose the epochs already reported. The state itself lives in the trial's files."""
    import tempfile

    from ray import tune

    with tempfile.TemporaryDirectory() as directory:
        Path(directory, MARKER_FILE).write_text(f"the state is in {LATEST_STATE_FILE}\n")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def tune_trainable(config: dict[str, Any], run_dir: str, ranking: Ranking) -> None:
    """The Ray Tune trainable: `run_trial` with tune.report and the trial's saved states,
    continuing from the latest one if there is one (a retry, a lost node, --resume).

    A `UserError` (a configuration no retry can mend) ends the trial with one report of the
    sentinel metrics and its message, instead of an exception Tune would retry.
    """
    from ray import tune

    _set_threads()
    device, context = _ray_context()
    states = TrialStates(Path(run_dir) / trial_dir_name(tune.get_context().get_trial_id()),
                         ranking)
    marked = [tune.get_checkpoint() is not None]

    def report(metrics: dict[str, Any], trial_state: dict[str, Any]) -> None:
        states.keep_if_best(metrics, trial_state)  # before the report: Tune may stop us there
        if marked[0]:
            tune.report(metrics)
        else:
            _report_with_marker(metrics)
            marked[0] = True
        states.keep_latest(trial_state)

    try:
        run_trial(config, report, states.latest(), device, context)
    except UserError as exc:
        tune.report({**SENTINEL_METRICS, **context, "error": f"UserError: {exc}"})
