"""The report's sections, in reading order, filled from the summary: findings, overview,
leaderboard, per-config statistics, validation vs test, gaps, hyperparameters, heatmaps,
importance, curves, progress and the study-specific sections."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tune_hw.analysis import effects, params
from tune_hw.report.document import Doc, cell, fmt, range_text
from tune_hw.report.figures import (
    fig_batch,
    fig_best_vs_last,
    fig_curves,
    fig_gap,
    fig_grad_flow,
    fig_heatmap,
    fig_param,
    fig_progress,
    fig_transfer,
    fig_val_test,
    slug,
)
from tune_hw.report.summary import prepare
from tune_hw.report.verdicts import configs_section, findings_section
from tune_hw.results import Run


def write_sections(doc: Doc, s: dict, run: Run, out: Path) -> None:
    """Fill the document, section by section, from the summary; figures land in `out`."""
    trials, specs = prepare(run)
    findings_section(doc, s)
    overview(doc, s, specs)
    if s["n_scored"] == 0:
        doc.para("No trial has a validation score yet: the sections below appear once one "
                 "has finished an epoch.")
        return
    doc.section("leaderboard", "Leaderboard (by validation, test beside it)")
    doc.table(s["leaderboard"])
    configs_section(doc, s)
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
    varied = "; ".join(f"{p.key} ({range_text(p)})" for p in specs)
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
        ("validation winner", f"{w['trial_id']} (val {fmt(w['val_acc'])}, "
                              f"test {fmt(w['test_acc'])}, test rank {w['test_rank']})"),
        ("best on test", f"{b['trial_id']} (test {fmt(b['test_acc'])})"),
        ("selection regret (best test − winner's test)", fmt(vt["regret"])),
        ("winner's optimism (its val − its test)", fmt(vt["optimism"])),
        ("Spearman ρ (p)", f"{fmt(vt['spearman'], 2)} ({fmt(vt['spearman_p'])})"),
        ("Kendall τ (p)", f"{fmt(vt['kendall'], 2)} ({fmt(vt['kendall_p'])})"),
        ("P(validation winner = test winner), bootstrap", fmt(vt["p_same_winner"])),
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
             f"underfit (train accuracy more than {fmt(g['underfit_margin'])} below the best "
             f"train accuracy of the run); overfit (train − val above {fmt(g['overfit_gap'])}); "
             f"good otherwise. Counts: " + ", ".join(f"{v} {k}" for k, v in g["counts"].items())
             + ".")
    doc.figure(fig_gap(g["trials"], out), "train vs validation accuracy per trial, by label")
    doc.table(g["trials"])


def param_sections(doc: Doc, s: dict, trials: pd.DataFrame, specs: list[params.ParamSpec],
                   out: Path) -> None:
    doc.section("hyperparameters", "Hyperparameters")
    for spec in specs:
        effect = s["params"][spec.key]
        doc.para(f"{spec.key} ({range_text(spec)}): the validation winner used "
                 f"{cell(effect['best_value'])}.")
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
                 f"lost a median of {fmt(b['median_val_drop'])} and at most "
                 f"{fmt(b['max_val_drop'])} validation accuracy.")
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
