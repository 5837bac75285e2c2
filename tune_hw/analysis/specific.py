"""Study-specific tables, for the runs that hold their data: batch size against steps and step
noise, gradient flow by layer, best epoch against last epoch, and the transfer mode's key."""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from tune_hw.analysis.params import ParamSpec, is_discrete
from tune_hw.analysis.trials import col, native, with_schema
from tune_hw.ranking import finite


def batch_noise_table(trials: pd.DataFrame, epochs: pd.DataFrame,
                      key: str = "train.batch_size") -> pd.DataFrame:
    """Per batch size: optimizer steps per epoch and the spread of per-step losses.

    `step_loss_std` is the median over every healthy epoch of every trial with that batch
    size (diverged epochs have none); smaller batches give noisier gradient steps.
    """
    t = with_schema(trials)
    cols = ["batch_size", "n_trials", "steps_per_epoch", "step_loss_std", "train_loss"]
    if col(key) not in t or epochs.empty:
        return pd.DataFrame(columns=cols)
    merged = epochs.merge(t[["trial_id", col(key)]], on="trial_id")
    rows = []
    for size, g in merged.groupby(col(key)):
        healthy = g[g.step_loss_std.map(finite)]
        rows.append({"batch_size": native(size), "n_trials": int(g.trial_id.nunique()),
                     "steps_per_epoch": float(g.steps.astype(float).median()),
                     "step_loss_std": float(healthy.step_loss_std.median())
                     if len(healthy) else math.nan,
                     "train_loss": float(healthy.train_loss.median())
                     if len(healthy) else math.nan})
    return pd.DataFrame(rows, columns=cols)


def grad_groups(trials: pd.DataFrame, specs: list[ParamSpec]) -> pd.Series:
    """A label per trial from its discrete varied params (e.g. `depth=100, residual=True`)."""
    t = with_schema(trials)
    keys = [s.key for s in specs if is_discrete(s, t)]
    if not keys:
        return pd.Series(t.trial_id.astype(str).to_numpy(), index=t.trial_id)
    # a whole-section variant (key without a dot) is already a `k=v` label
    labels = t[[col(k) for k in keys]].apply(
        lambda r: ", ".join(str(native(v)) if "." not in k else f"{k.split('.')[-1]}="
                            f"{native(v)}" for k, v in zip(keys, r, strict=True)), axis=1)
    return pd.Series(labels.to_numpy(), index=t.trial_id)


def grad_flow_table(grads: pd.DataFrame, groups: pd.Series, epoch: str = "first"
                    ) -> pd.DataFrame:
    """Median gradient norm per (group, layer) at each trial's first or last recorded epoch.

    The first epoch shows gradients closest to initialisation, where vanishing or exploding
    gradients in deep plain nets are clearest.
    """
    cols = ["group", "layer", "name", "grad_norm", "n_trials"]
    if grads.empty:
        return pd.DataFrame(columns=cols)
    pick = grads.groupby("trial_id").epoch.transform("min" if epoch == "first" else "max")
    g = grads[grads.epoch == pick].copy()
    g["group"] = g.trial_id.map(groups).fillna(g.trial_id.astype(str))
    out = g.groupby(["group", "layer"], sort=True).agg(
        name=("name", "first"), grad_norm=("grad_norm", "median"),
        n_trials=("trial_id", "nunique")).reset_index()
    return out[cols]


def grad_ratio(flow: pd.DataFrame) -> pd.DataFrame:
    """Per group: gradient norm at the input layer ÷ at the output layer (≪1: vanishing),
    and how many layers got a gradient of exactly 0 (float underflow)."""
    rows = []
    for group, g in flow.groupby("group", sort=False):
        g = g.sort_values("layer")
        first, last = float(g.grad_norm.iloc[0]), float(g.grad_norm.iloc[-1])
        rows.append({"group": group, "layers": len(g), "input_grad_norm": first,
                     "output_grad_norm": last,
                     "input_over_output": first / last if last > 0 else math.nan,
                     "zero_layers": int((g.grad_norm <= 0).sum())})
    return pd.DataFrame(rows, columns=["group", "layers", "input_grad_norm",
                                       "output_grad_norm", "input_over_output", "zero_layers"])


def best_vs_last(trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Best epoch against last epoch per trial, and how much stopping at the end lost."""
    t = with_schema(trials)
    ok = t.best_epoch.map(finite) & t.final_epoch.map(finite) & t.final_val_acc.map(finite)
    t = t[ok]
    table = pd.DataFrame({"trial_id": t.trial_id, "best_epoch": t.best_epoch.astype(int),
                          "final_epoch": t.final_epoch.astype(int),
                          "best_val_acc": t.best_val_acc.astype(float),
                          "final_val_acc": t.final_val_acc.astype(float)}).reset_index(drop=True)
    table["val_drop"] = table.best_val_acc - table.final_val_acc
    n = len(table)
    summary = {"n_trials": n,
               "n_best_before_last": int((table.best_epoch < table.final_epoch).sum()),
               "median_val_drop": float(table.val_drop.median()) if n else math.nan,
               "max_val_drop": float(table.val_drop.max()) if n else math.nan}
    return table, summary


def mode_key(study: dict[str, Any], specs: list[ParamSpec]) -> str | None:
    """The varied key that names the transfer mode (e.g. `train.mode`), if there is one."""
    for s in specs:
        if s.categorical and re.search(r"(^|_)mode($|_)", s.key.split(".")[-1]):
            return s.key
    if "transfer" in str(study.get("name", "")):
        cats = [s.key for s in specs if s.categorical]
        return cats[0] if cats else None
    return None
