"""What an epoch reports: one metric row for every kind of trial (a net, a tree ensemble, a
member of a fused group), and the measurements it holds.

After each epoch a trial measures loss and accuracy, in eval mode, on the first
TRAIN_EVAL_ROWS training rows, on validation and on test (test for the analysis only: no
choice of the search reads it). An epoch whose loss or measurements are not finite has
diverged: its row carries finite sentinels instead (the searcher and ASHA need a bad number,
not NaN), which the results files never keep.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune_hw import data

SENTINEL_LOSS = 1e9  # finite: the searcher and ASHA must see a bad value, not NaN
TRAIN_EVAL_ROWS = 10_000  # train accuracy is measured on this many training rows
# what an epoch without measurements (diverged) or a failed config reports: finite, so the
# searcher and ASHA see a bad value, not NaN; nothing after them reads these values
SENTINEL_METRICS = {f"{s}_{m}": (SENTINEL_LOSS if m == "loss" else 0.0)
                    for s in ("train", "val", "test") for m in ("loss", "acc")}

Evaluate = Callable[[data.Split], tuple[Any, Any]]  # a split -> (loss, accuracy)


@dataclass
class EpochStats:
    """An epoch's training steps: their mean loss and spread, count, and whether all were
    finite (a tree ensemble's `loss` is its train loss, with no spread)."""

    loss: float
    loss_std: float
    steps: int
    finite: bool


def measure(evaluate: Evaluate, splits: data.Splits) -> dict[str, Any]:
    """`{train,val,test}_{loss,acc}` from `evaluate` on the train subset, validation and test
    (values per member where `evaluate` returns one per member)."""
    rows = TRAIN_EVAL_ROWS
    subsets = (("train", data.Split(splits.train.x[:rows], splits.train.y[:rows])),
               ("val", splits.val), ("test", splits.test))
    measured = {}
    for name, split in subsets:
        measured[f"{name}_loss"], measured[f"{name}_acc"] = evaluate(split)
    return measured


def healthy(measured: dict[str, float]) -> dict[str, float] | None:
    """The measurements, or None when any is not finite: the weights blew up even if every
    step loss was finite."""
    return measured if all(math.isfinite(v) for v in measured.values()) else None


@torch.no_grad()
def evaluate(model: nn.Module, split: data.Split, batch_size: int = 4096) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a net in eval mode."""
    model.eval()
    loss_sum, correct = torch.zeros((), device=split.x.device), torch.zeros((), dtype=torch.long,
                                                                            device=split.x.device)
    for start in range(0, len(split), batch_size):
        logits = model(split.x[start:start + batch_size])
        target = split.y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return float(loss_sum) / len(split), int(correct) / len(split)


def epoch_metrics(model: nn.Module, splits: data.Splits) -> dict[str, float] | None:
    """A net's measurements after an epoch; None when any value is not finite."""
    return healthy(measure(lambda split: evaluate(model, split), splits))


def trial_columns(seed: int, splits: data.Splits, context: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """What every row of a trial carries: its seed, its own split sizes and the training rows
    its train accuracy is measured on (the analysis's standard errors and bootstrap need
    them) and where it runs (`context`)."""
    return {"seed": seed, **{f"{k}_size": n for k, n in splits.sizes().items()},
            "train_eval_size": min(len(splits.train), TRAIN_EVAL_ROWS), **(context or {})}


def epoch_row(epoch: int, stats: EpochStats, measured: dict[str, float] | None, lr: float,
              timing: dict[str, float], fixed: dict[str, Any],
              grads: tuple[list[str], list[float]] | None = None) -> dict[str, Any]:
    """THE metric row of an epoch; `measured` None means the epoch diverged.

    `timing` holds `epoch_s` and `samples_per_s`; `fixed` the trial's columns (trial_columns
    and num_params); `grads` the tracked layers' names and mean gradient norms.
    """
    diverged = measured is None
    row = {
        "epoch": epoch, "steps": stats.steps, **(SENTINEL_METRICS if diverged else measured),
        "lr": lr, **timing, "step_loss_std": math.nan if diverged else stats.loss_std,
        "train_loss_running": math.nan if diverged else stats.loss, "diverged": diverged,
        **fixed,
    }
    if grads is not None and not diverged:
        row["grad_layers"], row["grad_norms"] = grads
    return row


def timing(rows: int, started: float, trained: float, now: float) -> dict[str, float]:
    """An epoch's wall time (training and measuring) and its training throughput."""
    train_s = trained - started
    return {"epoch_s": now - started,
            "samples_per_s": rows / train_s if train_s > 0 else math.nan}
