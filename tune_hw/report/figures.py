"""The report's figures, one function each, written as figures/<name>.png: validation vs test,
gaps, one per hyperparameter, heatmaps, learning curves, progress and the study-specific ones."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_hw.analysis import effects, params
from tune_hw.analysis.trials import col, native, scored
from tune_hw.report.document import fmt, range_text

STATUS_COLORS = {"completed": "tab:blue", "early_stopped": "tab:gray", "diverged": "tab:red",
                 "error": "black", "running": "tab:green", "pending": "tab:olive"}
LABEL_COLORS = {"good": "tab:green", "overfit": "tab:orange", "underfit": "tab:purple",
                "diverged": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, out: Path, name: str) -> str:
    """Write a figure as figures/<name>.png; the path relative to the report."""
    rel = f"figures/{name}.png"
    fig.savefig(out / rel, dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return rel


def status_legend(ax: Any, statuses: pd.Series, outside: bool = True) -> None:
    """The axis legend plus one entry per trial-status colour drawn."""
    for status in dict.fromkeys(statuses):
        ax.scatter([], [], c=STATUS_COLORS.get(status, "tab:blue"), s=26, label=status)
    if outside:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    else:
        ax.legend(fontsize=7, loc="lower right")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def fig_val_test(trials: pd.DataFrame, vt: dict, out: Path) -> str:
    plt = _pyplot()
    df = scored(trials)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colors = [STATUS_COLORS.get(s, "tab:blue") for s in df.status]
    ax.scatter(df.best_val_acc, df.test_acc_at_best, c=colors, s=28, alpha=0.8)
    lo = float(min(df.best_val_acc.min(), df.test_acc_at_best.min()))
    hi = float(max(df.best_val_acc.max(), df.test_acc_at_best.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="test = val")
    w = vt["winner"]
    ax.scatter([w["val_acc"]], [w["test_acc"]], marker="*", s=260, c="gold",
               edgecolors="k", label="validation winner", zorder=3)
    best = df[df.trial_id == vt["best_test"]["trial_id"]].iloc[0]
    ax.scatter([best.best_val_acc], [best.test_acc_at_best], marker="D", s=70,
               facecolors="none", edgecolors="tab:red", label="best on test", zorder=3)
    ax.set(xlabel="best-epoch validation accuracy", ylabel="test accuracy at that epoch",
           title=f"Spearman {fmt(vt['spearman'], 2)}, Kendall {fmt(vt['kendall'], 2)}, "
                 f"regret {fmt(vt['regret'])}")
    status_legend(ax, df.status)
    return save(fig, out, "val_vs_test")


def fig_gap(gaps: pd.DataFrame, out: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for label, g in gaps.groupby("label"):
        drawn = g[g.val_acc.notna() & g.train_acc.notna()]  # no healthy epoch: nothing to draw
        ax.scatter(drawn.val_acc, drawn.train_acc, label=f"{label} ({len(g)})",
                   c=LABEL_COLORS.get(label, "k"), s=28, alpha=0.8)
    ax.axline((0, 0), slope=1, color="k", lw=0.8, ls="--", label="train = val")
    ax.axline((0, effects.OVERFIT_GAP), slope=1, color="tab:orange", lw=0.8, ls=":",
              label=f"train = val + {effects.OVERFIT_GAP}")
    ax.set(xlabel="validation accuracy (best epoch)", ylabel="train accuracy (same epoch)",
           title="Generalisation gap per trial")
    ax.legend(fontsize=8)
    return save(fig, out, "gap")


def fig_param(trials: pd.DataFrame, spec: params.ParamSpec, effect: dict, out: Path) -> str:
    plt = _pyplot()
    df = scored(trials)
    fig, ax = plt.subplots(figsize=(6, 4))
    x_col, colors = col(spec.key), [STATUS_COLORS.get(s, "tab:blue") for s in df.status]
    if params.is_discrete(spec, trials):
        lv = params.levels(spec, trials)
        pos = df[x_col].map(lambda v: lv.index(native(v)))
        jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(df))
        ax.scatter(pos + jitter, df.best_val_acc, c=colors, s=26, alpha=0.8)
        long = max(len(str(v)) for v in lv) > 8
        ax.set_xticks(range(len(lv)), [str(v) for v in lv], rotation=25 if long else 0,
                      ha="right" if long else "center", fontsize=8 if long else None)
        ax.set_xlim(-0.5, len(lv) - 0.5)
        x_best = lv.index(effect["best_value"]) if effect["best_value"] in lv else None
    else:
        ax.scatter(df[x_col], df.best_val_acc, c=colors, s=26, alpha=0.8)
        if spec.log:
            ax.set_xscale("log")
        for bound in (spec.low, spec.high):
            ax.axvline(bound, color="k", ls="--", lw=0.8)
        x_best = effect["best_value"]
    if x_best is not None:
        ax.scatter([x_best], [df.best_val_acc.max()], marker="*", s=240, c="gold",
                   edgecolors="k", zorder=3, label="validation winner")
    status_legend(ax, df.status)
    warn = " (best on a bound!)" if effect["on_bound"] and not spec.categorical else ""
    ax.set(xlabel=spec.key + (" (log)" if spec.log else ""), ylabel="best validation accuracy",
           title=f"{spec.key}: search {range_text(spec)}{warn}")
    return save(fig, out, f"param_{slug(spec.key)}")


def fig_heatmap(hm: dict, out: Path) -> str:
    plt = _pyplot()
    values = np.array(hm["best_val_acc"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * values.shape[1], 1.2 + 0.6 * values.shape[0]))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    ax.set_facecolor("0.92")  # cells no trial sampled
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, "–" if np.isnan(v) else f"{v:.3f}", ha="center", va="center",
                fontsize=8, color="0.4" if np.isnan(v) else "w" if v < np.nanmean(values)
                else "k")
    ax.set_xticks(range(values.shape[1]), [str(v) for v in hm["column_values"]], rotation=30,
                  ha="right")
    ax.set_yticks(range(values.shape[0]), [str(v) for v in hm["row_values"]])
    ax.set(xlabel=hm["columns"], ylabel=hm["rows"], title="best validation accuracy")
    fig.colorbar(image, ax=ax)
    return save(fig, out, f"heatmap_{slug(hm['rows'])}__{slug(hm['columns'])}")


def fig_curves(epochs: pd.DataFrame, ids: dict[str, str], title: str, out: Path,
               name: str) -> str:
    """Loss and accuracy per epoch, train dashed and validation solid, one colour per trial."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, trial_id) in enumerate(ids.items()):
        e = epochs[epochs.trial_id == trial_id].sort_values("epoch")
        color = f"C{i % 10}"
        for split, style in (("train", "--"), ("val", "-")):
            ax_loss.plot(e.epoch, e[f"{split}_loss"], style, color=color, marker=".",
                         label=f"{label} {split}")
            ax_acc.plot(e.epoch, e[f"{split}_acc"], style, color=color, marker=".",
                        label=f"{label} {split}")
    low, high = ax_loss.get_ylim()
    if low > 0 and high / low > 20:  # only a wide range of losses needs a log axis
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax_acc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return save(fig, out, name)


def fig_progress(s: dict, out: Path) -> str:
    plt = _pyplot()
    bsf = s["best_so_far"]
    fig, (ax, ax_status) = plt.subplots(1, 2, figsize=(11, 4),
                                        gridspec_kw={"width_ratios": [2, 1]})
    ax.scatter(bsf.trial_index, bsf.best_val_acc,
               c=[STATUS_COLORS.get(x, "tab:blue") for x in bsf.status], s=24)
    ax.step(bsf.trial_index, bsf.best_so_far, where="post", color="k", label="best so far")
    ax.set(xlabel="trial index (creation order)", ylabel="best validation accuracy",
           title="Best so far")
    status_legend(ax, bsf.status, outside=False)
    counts = {k: v for k, v in s["status_counts"].items() if v}
    ax_status.bar(list(counts), list(counts.values()),
                  color=[STATUS_COLORS.get(k, "tab:blue") for k in counts])
    ax_status.set(title="Trials by status", ylabel="trials")
    ax_status.tick_params(axis="x", rotation=45)
    return save(fig, out, "progress")


def fig_batch(table: pd.DataFrame, out: Path) -> str:
    plt = _pyplot()
    fig, (ax_steps, ax_noise) = plt.subplots(1, 2, figsize=(11, 4))
    ax_steps.plot(table.batch_size, table.steps_per_epoch, "o-")
    ax_steps.set(xscale="log", yscale="log", xlabel="batch size", ylabel="steps per epoch",
                 title="Optimizer steps per epoch")
    ax_noise.plot(table.batch_size, table.step_loss_std, "o-")
    ax_noise.set(xscale="log", yscale="log", xlabel="batch size",
                 ylabel="std of per-step loss (median over epochs)", title="Per-step loss noise")
    return save(fig, out, "batch_size")


def fig_grad_flow(flow: pd.DataFrame, out: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for group, g in flow.groupby("group", sort=False):
        ax.plot(g.layer, g.grad_norm.where(g.grad_norm > 0), marker=".", label=str(group))
    ax.set(yscale="log", xlabel="layer (0 = input side)",
           ylabel="gradient norm (median over trials)", title="Gradient flow, first epoch")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return save(fig, out, "grad_flow")


def fig_best_vs_last(table: pd.DataFrame, out: Path) -> str:
    plt = _pyplot()
    fig, (ax_e, ax_v) = plt.subplots(1, 2, figsize=(10, 4))
    ax_e.scatter(table.final_epoch, table.best_epoch, s=26)
    top = max(int(table.final_epoch.max()), 1)
    ax_e.plot([1, top], [1, top], "k--", lw=0.8)
    ax_e.set(xlabel="last epoch", ylabel="best epoch", title="Best vs last epoch")
    ax_v.scatter(table.final_val_acc, table.best_val_acc, s=26)
    ax_v.axline((0, 0), slope=1, color="k", lw=0.8, ls="--")
    ax_v.set(xlabel="val accuracy at the last epoch", ylabel="best val accuracy",
             title="What stopping at the end costs")
    return save(fig, out, "best_vs_last")


def fig_transfer(table: pd.DataFrame, key: str, out: Path) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table.best_val_acc, 0.4, label="best val")
    ax.bar(x + 0.2, table.test_acc_of_best, 0.4, label="its test")
    ax.set_xticks(x, [str(v) for v in table.value], rotation=20, ha="right", fontsize=8)
    ax.set(xlabel=key, ylabel="accuracy", title="Transfer modes")
    ax.legend(fontsize=8)
    return save(fig, out, "transfer")
