"""Turn a tune_hw run into a report that says whether validation picked the right config.

    python -m tune_hw.report runs/lr_batch/r1                  # -> reports/lr_batch/r1/
    python -m tune_hw.report runs/deep/r1 --out /tmp/deep_report
    python -m tune_hw.report runs/lr_batch/r1 --top 8 --bootstrap 10000 --seed 1

It writes report.md, index.html (self-contained: figures are embedded, so it opens from disk
or as an e-mail attachment), figures/*.png and summary.json (every number the text states;
NaN is written as null). It reads whatever the run holds: a finished run, an interrupted one,
one still running (from Ray's own trial files until the search writes trials.parquet), or a
single trial. The analysis itself lives in tune_hw/analysis.py, as pure functions.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_hw import layout
from tune_hw.analysis import effects, importance, params, selection, specific
from tune_hw.analysis.trials import (
    N_BOOTSTRAP,
    best_so_far,
    col,
    left_out,
    native,
    scored,
    status_counts,
    with_schema,
)
from tune_hw.errors import ArgumentParser, UserError
from tune_hw.ranking import Ranking
from tune_hw.ray_files import read_run
from tune_hw.results import EPOCH_COLUMNS, GRAD_COLUMNS, Run

DEFAULT_OUT = Path("reports")
MAX_BOOTSTRAP = 100_000  # 1e5 resamples of every trial's two accuracies: seconds, not GiBs
MAX_TABLE_ROWS = 40
MAX_LEVELS = 8  # a categorical factor with more values gets no per-value learning curves
MAX_HEATMAPS = 6
STATUS_COLORS = {"completed": "tab:blue", "early_stopped": "tab:gray", "diverged": "tab:red",
                 "error": "black", "running": "tab:green", "pending": "tab:olive"}
LABEL_COLORS = {"good": "tab:green", "overfit": "tab:orange", "underfit": "tab:purple",
                "diverged": "tab:red"}


def _integer(low: int, high: int | None = None):
    """An argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high:,}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value:,}")
        return value
    return parse



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m tune_hw.report",
                                     description="Write the report of a tune_hw run.")
    parser.add_argument("run_dir", type=Path, help="a run directory, e.g. runs/lr_batch/r1")
    parser.add_argument("--out", type=Path,
                        help="output directory (default reports/<study>/<run_name>/)")
    parser.add_argument("--top", type=_integer(1), default=5,
                        help="trials in the top learning curves (default 5)")
    parser.add_argument("--bootstrap", type=_integer(1, MAX_BOOTSTRAP), default=N_BOOTSTRAP,
                        help=f"bootstrap resamples (default {N_BOOTSTRAP}, at most "
                             f"{MAX_BOOTSTRAP:,})")
    parser.add_argument("--seed", type=_integer(0), default=0,
                        help="seed of bootstrap and importance (0 or more)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ reading

def default_out(run: Run) -> Path:
    """reports/<study>/<run_name>: the study's name only when it is a plain name (study.yaml
    is the run's, not ours to trust), else the directory the run sits in."""
    study = run.study.get("name")
    try:
        layout.check_name(study, "study name")
    except (UserError, TypeError):
        study = run.path.resolve().parent.name
    return DEFAULT_OUT / str(study) / run.path.resolve().name


# ----------------------------------------------------------------------------- analysis

def summarize(run: Run, top: int = 5, n_boot: int = N_BOOTSTRAP, seed: int = 0
              ) -> dict[str, Any]:
    """Every number of the report, computed by tune_hw.analysis, as one JSON-able dict."""
    trials, specs = prepare(run)
    epochs = run.epochs if len(run.epochs) else pd.DataFrame(columns=EPOCH_COLUMNS)
    grads = run.grads if len(run.grads) else pd.DataFrame(columns=GRAD_COLUMNS)
    study = run.study
    ranking = Ranking.of(study)
    sizes = study.get("data_sizes") or {}  # runs before trials recorded their own sizes
    s: dict[str, Any] = {
        "study": study.get("name") or run.path.resolve().parent.name,
        "run_name": run.path.resolve().name, "run_dir": str(run.path),
        "description": study.get("description", ""), "n_trials": len(trials),
        "n_scored": len(scored(trials)), "status_counts": status_counts(trials),
        "left_out": left_out(trials), "data_sizes": sizes or None,
        "ranking": {"metric": ranking.metric, "mode": ranking.mode},
        "varied": [{"key": p.key, "kind": p.kind, "low": p.low, "high": p.high,
                    "values": p.values, "log": p.log} for p in specs],
    }
    vt = selection.val_test_stats(trials, sizes.get("val"), sizes.get("test"), n_boot, seed,
                                  ranking)
    vt["verdict"] = selection.verdict(vt)
    s["val_vs_test"] = vt
    s["leaderboard"] = selection.leaderboard(trials, specs, MAX_TABLE_ROWS, ranking)
    gaps = effects.gap_table(trials)
    s["gaps"] = {"overfit_gap": effects.OVERFIT_GAP, "underfit_margin": effects.UNDERFIT_MARGIN,
                 "counts": {k: int((gaps.label == k).sum()) for k in effects.GAP_LABELS},
                 "trials": gaps}
    s["params"] = {p.key: {**effects.param_effect(trials, p, ranking),
                           "by_value": effects.group_table(trials, p.key, ranking)
                           if params.is_discrete(p, trials) else None} for p in specs}
    s["heatmaps"] = heatmaps(trials, specs)
    s["best_so_far"] = best_so_far(trials)
    importances, note = importance.param_importance(trials, specs, seed)
    s["importance"] = {"values": importances, "note": note}
    s["curves"] = {"top": selection.top_trials(trials, top, ranking),
                   "by_value": {p.key: group_winners(trials, p.key, ranking)
                                for p in specs if params.is_discrete(p, trials)
                                and trials[col(p.key)].nunique() <= MAX_LEVELS}}
    s.update(study_specific(run, trials, epochs, grads, specs, ranking))
    return s


def prepare(run: Run) -> tuple[pd.DataFrame, list[params.ParamSpec]]:
    """The trials table with every schema column and a column per whole-section variant,
    and the varied hyperparameters."""
    trials = params.with_variants(with_schema(run.trials), run.study)
    return trials, params.varied_params(run.study, trials)


def heatmaps(trials: pd.DataFrame, specs: list[params.ParamSpec]) -> list[dict[str, Any]]:
    """Best val accuracy on every two-way grid of varied params (first MAX_HEATMAPS pairs)."""
    out = []
    pairs = [(a, b) for i, a in enumerate(specs) for b in specs[i + 1:]]
    for a, b in pairs[:MAX_HEATMAPS]:
        if len(scored(trials)):
            table = effects.heatmap_table(trials, a, b)
            out.append({"rows": a.key, "columns": b.key, "row_values": list(table.index),
                        "column_values": list(table.columns), "best_val_acc":
                            table.to_numpy().tolist()})
    return out


def group_winners(trials: pd.DataFrame, key: str, ranking: Ranking) -> dict[str, str]:
    """The best trial (by the study's ranking) for each value of `key`, values in the order
    of the per-value table."""
    table = effects.group_table(trials, key, ranking)
    df = scored(trials)
    groups = dict(list(df.groupby(col(key), sort=False)))
    return {str(v): selection.top_trials(groups[v], 1, ranking)[0] for v in table.value
            if v in groups}


def study_specific(run: Run, trials: pd.DataFrame, epochs: pd.DataFrame,
                   grads: pd.DataFrame, specs: list[params.ParamSpec], ranking: Ranking
                   ) -> dict[str, Any]:
    """Sections that exist only when the run has their data."""
    out: dict[str, Any] = {}
    keys = {p.key for p in specs}
    batch = col("train.batch_size")
    if batch in trials and trials[batch].nunique() > 1 and len(epochs):
        out["batch_size"] = specific.batch_noise_table(trials, epochs)
    if len(grads):
        flow = specific.grad_flow_table(grads, specific.grad_groups(trials, specs))
        out["grad_flow"] = {"epoch": "first", "table": flow, "ratios": specific.grad_ratio(flow)}
    if "train.epochs" in keys or "epoch" in str(run.study.get("name", "")):
        table, summary = specific.best_vs_last(trials)
        out["best_vs_last"] = {**summary, "trials": table}
    mode = specific.mode_key(run.study, specs)
    if mode:
        out["transfer"] = {"key": mode, "table": effects.group_table(trials, mode, ranking)}
    return out


# ------------------------------------------------------------------------------ figures

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
           title=f"Spearman {_f(vt['spearman'], 2)}, Kendall {_f(vt['kendall'], 2)}, "
                 f"regret {_f(vt['regret'])}")
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
           title=f"{spec.key}: search {_range(spec)}{warn}")
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


# ----------------------------------------------------------------------------- document

@dataclass
class Doc:
    """The report as blocks, rendered to Markdown and to self-contained HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def section(self, anchor: str, title: str) -> None:
        self.blocks.append(("section", (anchor, title)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def warn(self, text: str) -> None:
        self.blocks.append(("warn", text))

    def table(self, df: pd.DataFrame) -> None:
        if len(df):
            self.blocks.append(("table", df.head(MAX_TABLE_ROWS)))

    def figure(self, rel: str, caption: str) -> None:
        self.blocks.append(("figure", (rel, caption)))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "section":
                lines += [f"## {value[1]}", ""]
            elif kind == "para":
                lines += [value, ""]
            elif kind == "warn":
                lines += [f"> **Warning:** {value}", ""]
            elif kind == "table":
                lines += [_md_table(value), ""]
            elif kind == "figure":
                lines += [f"![{value[1]}]({value[0]})", ""]
        return "\n".join(lines)

    def html(self, out: Path) -> str:
        toc = "".join(f'<li><a href="#{v[0]}">{html.escape(v[1])}</a></li>'
                      for k, v in self.blocks if k == "section")
        body, open_section = [], False
        for kind, value in self.blocks:
            if kind == "section":
                body.append("</section>" if open_section else "")
                body.append(f'<section id="{value[0]}"><h2>{html.escape(value[1])}</h2>')
                open_section = True
            elif kind == "para":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "warn":
                body.append(f'<p class="warn"><b>Warning:</b> {html.escape(value)}</p>')
            elif kind == "table":
                body.append(_html_table(value))
            elif kind == "figure":
                data = base64.b64encode((out / value[0]).read_bytes()).decode()
                body.append(f'<figure><img src="data:image/png;base64,{data}" '
                            f'alt="{html.escape(value[1])}"><figcaption>'
                            f"{html.escape(value[1])}</figcaption></figure>")
        body.append("</section>" if open_section else "")
        return HTML_PAGE.format(title=html.escape(self.title), toc=toc, body="\n".join(body))


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }}
th, td {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
th {{ background: #f2f2f2; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }}
figcaption {{ font-size: 0.85em; color: #555; }}
.warn {{ background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.4em 0.8em; }}
nav li {{ display: inline; margin-right: 1em; }}
</style></head>
<body><h1>{title}</h1><nav><ul>{toc}</ul></nav>
{body}
</body></html>
"""


def _cell(value: Any, number_format: str | None = None) -> str:
    """A table cell; numbers in their column's format (one format per column)."""
    value = native(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "n/a"
    if number_format and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, number_format)
    return _f(value) if isinstance(value, float) else str(value)


def column_format(values: pd.Series) -> str | None:
    """The one format a column of numbers is shown in: whole numbers as such, else 3 decimals,
    or 3 significant digits when some value is small (< 0.01) or large (>= 10,000)."""
    numbers = [float(v) for v in map(native, values)
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not numbers or len(numbers) < sum(1 for v in values if not _blank(v)):
        return None  # no numbers, or text among them
    if all(x == round(x) and abs(x) < 1e15 for x in numbers):
        return ".0f"
    if any(x != 0 and (abs(x) < 0.01 or abs(x) >= 1e4) for x in numbers):
        return ".3g"
    return ".3f"


def _blank(value: Any) -> bool:
    value = native(value)
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _f(x: Any, digits: int = 3) -> str:
    """Numbers as the text states them: 3 decimals, or 3 significant digits when small/large."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(x)
    x = float(x)
    if 2 <= abs(x) < 1e6 and x == round(x):  # 2000.0 steps, 3.0 epochs; not accuracy 1.0
        return str(int(x))
    if x != 0 and (abs(x) < 0.01 or abs(x) >= 1e4):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def _cells(df: pd.DataFrame) -> list[list[str]]:
    """Every cell of `df` as text, each column in its one number format."""
    formats = [column_format(df[c]) for c in df.columns]
    return [[_cell(v, f) for v, f in zip(row, formats, strict=True)]
            for row in df.itertuples(False)]


def _md_table(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(row) + " |" for row in _cells(df)]
    return "\n".join([head, rule, *rows])


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
                   + "</tr>" for row in _cells(df))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _range(spec: params.ParamSpec) -> str:
    if spec.categorical:
        return f"{spec.kind} {spec.values}"
    return f"{spec.kind} [{spec.low:.3g}, {spec.high:.3g}]"


# ----------------------------------------------------------------------------- sections

def write_sections(doc: Doc, s: dict, run: Run, out: Path) -> None:
    """Fill the document, section by section, from the summary; figures land in `out`."""
    trials, specs = prepare(run)
    overview(doc, s, specs)
    if s["n_scored"] == 0:
        doc.para("No trial has a validation score yet: the sections below appear once one "
                 "has finished an epoch.")
        return
    doc.section("leaderboard", "Leaderboard (by validation, test beside it)")
    doc.table(s["leaderboard"])
    val_vs_test(doc, s, trials, out)
    gap_section(doc, s, out)
    param_sections(doc, s, trials, specs, out)
    curve_sections(doc, s, run.epochs, out)
    doc.section("progress", "Search progress")
    doc.para(f"Best validation accuracy so far against the trial index, and trials by "
             f"status: {_counts(s['status_counts'])}.")
    doc.figure(fig_progress(s, out), "best so far and trial statuses")
    specific_sections(doc, s, out)


def overview(doc: Doc, s: dict, specs: list[params.ParamSpec]) -> None:
    doc.section("overview", "Overview")
    if s["description"]:
        doc.para(s["description"])
    vt, ranking = s["val_vs_test"], s["ranking"]
    left_out = sum(s["left_out"].values())
    doc.para(f"Run {s['run_dir']}: {s['n_trials']} trials, {s['n_scored']} with a validation "
             f"and a test score; {_counts(s['status_counts'])}. Trials are ranked by "
             f"{ranking['metric']} ({ranking['mode']}) at their best epoch."
             + (f" {left_out} without a healthy epoch ({_counts(s['left_out'])}) are left out "
                "of every statistic below." if left_out else "")
             + (f" Split sizes: val {_sizes(vt['val_sizes'])}, test "
                f"{_sizes(vt['test_sizes'])}." if vt["val_sizes"] else ""))
    varied = "; ".join(f"{p.key} ({_range(p)})" for p in specs)
    doc.para(f"Varied: {varied}." if specs else "No hyperparameter was varied.")


def _sizes(sizes: list[int]) -> str:
    """One split size, or the range of the trials' own sizes when a searched dataset varies."""
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]} (by trial)"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k.replace('_', '-')}" for k, v in counts.items() if v) or "none"


def val_vs_test(doc: Doc, s: dict, trials: pd.DataFrame, out: Path) -> None:
    vt = s["val_vs_test"]
    doc.section("val-vs-test", "Validation vs test")
    doc.para(vt["verdict"])
    w, b = vt["winner"], vt["best_test"]
    doc.table(pd.DataFrame([
        ("trials compared", vt["n_trials"]),
        ("validation winner", f"{w['trial_id']} (val {_f(w['val_acc'])}, "
                              f"test {_f(w['test_acc'])}, test rank {w['test_rank']})"),
        ("best on test", f"{b['trial_id']} (test {_f(b['test_acc'])})"),
        ("selection regret (best test − winner's test)", _f(vt["regret"])),
        ("winner's optimism (its val − its test)", _f(vt["optimism"])),
        ("Spearman ρ (p)", f"{_f(vt['spearman'], 2)} ({_f(vt['spearman_p'])})"),
        ("Kendall τ (p)", f"{_f(vt['kendall'], 2)} ({_f(vt['kendall_p'])})"),
        ("P(validation winner = test winner), bootstrap", _f(vt["p_same_winner"])),
    ], columns=["quantity", "value"]))
    doc.figure(fig_val_test(trials, vt, out),
               "best-epoch validation accuracy vs test accuracy at that epoch, one dot per trial")
    if vt["p_same_winner"] is None and vt["n_trials"] >= 2:
        doc.para("The bootstrap probability is not computed: the run records no split sizes "
                 "(val and test row counts), so the evaluation noise is unknown.")
    else:
        doc.para(f"How the probability is estimated: a parametric bootstrap over evaluation "
                 f"examples ({vt['n_boot']} resamples, seed {vt['seed']}). Each resample draws "
                 f"every trial's validation and test accuracy as Binomial(n, acc)/n with its "
                 f"own split sizes (val {_sizes(vt['val_sizes'])}, test "
                 f"{_sizes(vt['test_sizes'])}) and checks whether the "
                 f"validation arg-max is the test arg-max. Examples, not trials, are resampled "
                 f"because the question is about the winner among these configs, not about "
                 f"the population of configs; trials are drawn independently although they "
                 f"share examples, so the estimate leans low.")


def gap_section(doc: Doc, s: dict, out: Path) -> None:
    g = s["gaps"]
    doc.section("gap", "Generalisation gap (train − val at the best epoch)")
    doc.para(f"Labels: diverged (loss became NaN/inf, or no finite validation score); "
             f"underfit (train accuracy more than {_f(g['underfit_margin'])} below the best "
             f"train accuracy of the run); overfit (train − val above {_f(g['overfit_gap'])}); "
             f"good otherwise. Counts: " + ", ".join(f"{v} {k}" for k, v in g["counts"].items())
             + ".")
    doc.figure(fig_gap(g["trials"], out), "train vs validation accuracy per trial, by label")
    doc.table(g["trials"])


def param_sections(doc: Doc, s: dict, trials: pd.DataFrame, specs: list[params.ParamSpec],
                   out: Path) -> None:
    doc.section("hyperparameters", "Hyperparameters")
    for spec in specs:
        effect = s["params"][spec.key]
        doc.para(f"{spec.key} ({_range(spec)}): the validation winner used "
                 f"{_cell(effect['best_value'])}.")
        if effect["warning"]:
            doc.warn(effect["warning"])
        doc.figure(fig_param(trials, spec, effect, out),
                   f"best validation accuracy against {spec.key}")
        if effect["by_value"] is not None:
            doc.table(effect["by_value"])
    if s["heatmaps"]:
        doc.section("heatmaps", "Two-way grids")
        doc.para("Best validation accuracy in each cell; continuous axes are cut into "
                 f"{effects.HEATMAP_BINS} equal bins (log-equal for log ranges); – marks cells no "
                 "trial sampled.")
        for hm in s["heatmaps"]:
            doc.figure(fig_heatmap(hm, out), f"{hm['rows']} × {hm['columns']}")
    doc.section("importance", "Parameter importance")
    imp = s["importance"]
    doc.para(imp["note"])
    if imp["values"]:
        doc.table(pd.DataFrame(list(imp["values"].items()), columns=["parameter",
                                                                     "importance"]))


def curve_sections(doc: Doc, s: dict, epochs: pd.DataFrame, out: Path) -> None:
    doc.section("curves", "Learning curves")
    top = s["curves"]["top"]
    doc.para(f"The {len(top)} best trials by validation; train dashed, validation solid; "
             "diverged epochs have no measurements and are not drawn.")
    doc.figure(fig_curves(epochs, {t: t for t in top}, "top trials", out, "curves_top"),
               "learning curves of the top trials")
    for key, winners in s["curves"]["by_value"].items():
        labels = {(f"{key.split('.')[-1]}={v}" if "." in key else v): t
                  for v, t in winners.items()}  # a section variant is its own k=v label
        doc.figure(fig_curves(epochs, labels, f"best per {key}", out, f"curves_{slug(key)}"),
                   f"learning curves of the best trial for each value of {key}")


def specific_sections(doc: Doc, s: dict, out: Path) -> None:
    if "batch_size" in s:
        table = s["batch_size"]
        doc.section("batch-size", "Batch size: steps and noise")
        doc.para("Optimizer steps per epoch and the standard deviation of the per-step "
                 "training loss inside an epoch (median over healthy epochs) per batch size: "
                 "small batches take many noisy steps, large ones few smooth ones.")
        doc.figure(fig_batch(table, out), "steps per epoch and per-step loss noise")
        doc.table(table)
    if "grad_flow" in s:
        flow = s["grad_flow"]
        doc.section("grad-flow", "Gradient flow")
        doc.para("Gradient norm of each layer's weights (mean over the steps of the first "
                 "recorded epoch, median over trials of a group), log scale. An input-over-"
                 "output ratio far below 1 means the gradient vanishes before it reaches the "
                 "first layers.")
        for row in flow["ratios"].itertuples():
            if row.zero_layers:
                doc.para(f"{row.group}: {row.zero_layers} of {row.layers} layers got a "
                         "gradient norm of exactly 0 (it underflowed on the way back); the "
                         "log axis cannot draw them.")
        doc.figure(fig_grad_flow(flow["table"], out), "gradient norm by layer")
        doc.table(flow["ratios"])
    if "best_vs_last" in s:
        b = s["best_vs_last"]
        doc.section("best-vs-last", "Best epoch vs last epoch")
        doc.para(f"{b['n_best_before_last']} of {b['n_trials']} trials peaked on validation "
                 f"before their last epoch; stopping at the end instead of the best epoch "
                 f"lost a median of {_f(b['median_val_drop'])} and at most "
                 f"{_f(b['max_val_drop'])} validation accuracy.")
        if b["n_trials"]:
            doc.figure(fig_best_vs_last(b["trials"], out), "best vs last epoch")
    if "transfer" in s:
        t = s["transfer"]
        doc.section("transfer", f"Transfer modes ({t['key']})")
        doc.para("Per mode: the best validation accuracy, the test accuracy of that mode's "
                 "validation winner, and medians over its trials.")
        if len(t["table"]):
            doc.figure(fig_transfer(t["table"], t["key"], out), "transfer modes compared")
        doc.table(t["table"])


# ------------------------------------------------------------------------------- output

def jsonable(obj: Any) -> Any:
    """Plain JSON types: DataFrames as records, numpy scalars as Python, NaN/inf as null."""
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict("records")]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    obj = native(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if obj is pd.NA or obj is pd.NaT:
        return None
    return str(obj)


def make_out_dir(out: Path) -> None:
    """The report's directory and its figures/, or one line saying why it cannot be."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a directory for the report")
    try:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report directory {out} ({exc.strerror or exc}); "
                        "give a directory you can write with --out") from None


def earlier_figures(out: Path) -> list[Path]:
    """The figures an earlier report listed in out/summary.json: the only files it replaces
    (a directory given with --out may hold other PNGs)."""
    try:
        listed = json.loads((out / "summary.json").read_text()).get("figures", [])
    except (OSError, ValueError, AttributeError):
        return []
    names = [f for f in listed if isinstance(f, str) and re.fullmatch(r"figures/\w+\.png", f)]
    return [out / name for name in names if (out / name).is_file()]


def build_report(run_dir: Path, out: Path | None = None, top: int = 5,
                 n_boot: int = N_BOOTSTRAP, seed: int = 0) -> Path:
    """Analyse the run and write report.md, index.html, figures/ and summary.json."""
    run = read_run(Path(run_dir))
    out = Path(out) if out else default_out(run)
    make_out_dir(out)
    for old in earlier_figures(out):
        old.unlink()
    s = summarize(run, top, n_boot, seed)
    doc = Doc(f"{s['study']} / {s['run_name']}: tune_hw report")
    write_sections(doc, s, run, out)
    s["figures"] = [value[0] for kind, value in doc.blocks if kind == "figure"]
    (out / "summary.json").write_text(json.dumps(jsonable(s), indent=1, allow_nan=False))
    (out / "report.md").write_text(doc.markdown())
    (out / "index.html").write_text(doc.html(out))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = build_report(args.run_dir, args.out, args.top, args.bootstrap, args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report written to {out}/ (open {out / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
