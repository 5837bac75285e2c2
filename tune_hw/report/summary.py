"""Every number of the report, computed by tune_hw.analysis, as one JSON-able summary (what
summary.json holds and the text states)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

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
from tune_hw.ranking import Ranking
from tune_hw.report import verdicts
from tune_hw.report.document import MAX_TABLE_ROWS
from tune_hw.results import EPOCH_COLUMNS, GRAD_COLUMNS, Run

MAX_LEVELS = 8  # a categorical factor with more values gets no per-value learning curves
MAX_HEATMAPS = 6


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
    s.update(verdicts.findings_summary(run, run.trials, epochs, grads, n_boot, seed))
    s["configs"] = verdicts.configs_summary(run.trials, study, n_boot, seed)
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
