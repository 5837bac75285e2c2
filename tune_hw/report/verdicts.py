"""The report's answers: the study's claims tested on the run (Findings) and the per-config
statistics over repeats (mean and 95% interval per config, winner against runner-up, rank
agreement among the top configs), computed by tune_hw.analysis and written as sections."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tune_hw.analysis import config_stats, findings
from tune_hw.analysis.trials import N_BOOTSTRAP
from tune_hw.claims import parse_each
from tune_hw.errors import UserError
from tune_hw.report.document import Doc, fmt
from tune_hw.results import Run

VERDICT_MARK = {"supported": "✔ supported", "contradicted": "✘ contradicted",
                "inconclusive": "? inconclusive"}


def findings_summary(run: Run, trials: pd.DataFrame, epochs: pd.DataFrame, grads: pd.DataFrame,
                     n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """summary.json's `findings` (name, verdict, effect, ci_low, ci_high, n per claim) and
    `findings_detail` (each with its sentence, claimed side, groups). A claim that does not
    hold for study.yaml (its --set narrowed the space) is inconclusive, with the reason; a
    `claims:` that no longer parses at all is reported as `claims_error`, not raised: the
    rest of the report still stands."""
    raw = run.study.get("claims")
    try:
        parsed = parse_each(raw, run.study, f"{run.path}/study.yaml")
    except UserError as exc:
        return {"findings": [], "findings_detail": [], "claims_error": str(exc)}
    tested = iter(findings.evaluate([c for c in parsed if not isinstance(c, UserError)],
                                    trials, epochs, grads, run.study, n_boot, seed))
    found = [findings.untestable(raw[i], i, str(c)) if isinstance(c, UserError) else next(tested)
             for i, c in enumerate(parsed)]
    return {"findings": [f.summary() for f in found],
            "findings_detail": [f.as_dict() for f in found], "claims_error": None}


def configs_summary(trials: pd.DataFrame, study: dict[str, Any], n_boot: int = N_BOOTSTRAP,
                    seed: int = 0) -> dict[str, Any]:
    """Per-config statistics: the config table (mean ± 95% interval over repeats), the winner
    against the runner-up, rank agreement overall and among the top configs, and the note on
    early-stopped trials."""
    table = config_stats.config_table(trials, study, n_boot, seed)
    repeats = int(table.n_repeats.max()) if len(table) else 0
    return {"n_configs": len(table), "max_repeats": repeats, "table": table,
            "winner_vs_runner_up": config_stats.winner_vs_runner_up(trials, study, n_boot, seed),
            "rank_agreement": config_stats.rank_agreement(trials),
            "early_stopping": config_stats.early_stopping_note(trials)}


# ----------------------------------------------------------------------------- sections

def findings_section(doc: Doc, s: dict[str, Any]) -> None:
    """Findings first: each claim, its verdict, effect, interval and n in one sentence."""
    detail = s.get("findings_detail") or []
    doc.section("findings", "Findings")
    if s.get("claims_error"):
        doc.warn(f"The study's claims could not be read: {s['claims_error']}")
        return
    if not detail:
        doc.para("The study states no claims (add `claims:` to its file to have the report "
                 "test its expected findings).")
        return
    counts = pd.Series([f["verdict"] for f in detail]).value_counts().to_dict()
    doc.para(f"{len(detail)} claims of the study tested on this run: "
             + ", ".join(f"{counts[v]} {v}" for v in VERDICT_MARK if v in counts) + ".")
    doc.table(pd.DataFrame([{"claim": f["name"], "verdict": VERDICT_MARK[f["verdict"]],
                             "effect": f["effect"], "95% CI": _interval(f), "n": f["n"],
                             "claimed": f["claimed"]} for f in detail]))
    for f in detail:
        doc.para(f"**{f['name']}.** {f['sentence']}")


def configs_section(doc: Doc, s: dict[str, Any]) -> None:
    """Per config over its repeats: where the leaderboard's differences are real."""
    c = s["configs"]
    doc.section("configs", "Per config over repeats (mean and 95% interval)")
    seeds = f"up to {c['max_repeats']} seeds per config" if c["max_repeats"] > 1 else \
        "one seed per config (the intervals hold evaluation noise only: add search.repeats)"
    doc.para(f"{c['n_configs']} configs, {seeds}; intervals are bootstraps over the repeats "
             "and the evaluation examples.")
    table = c["table"].copy()
    for split in ("val", "test"):
        table[f"{split} (95% CI)"] = [f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]" for m, lo, hi in zip(
            table[f"{split}_mean"], table[f"{split}_low"], table[f"{split}_high"], strict=True)]
    keep = [k for k in table.columns if not k.endswith(("_mean", "_low", "_high"))]
    doc.table(table[keep])
    doc.para(c["winner_vs_runner_up"]["sentence"])
    ra = c["rank_agreement"]
    doc.para(f"Rank agreement of config means, validation vs test: Spearman "
             f"{fmt(ra['all']['spearman'])} over all {ra['all']['n_configs']} configs, "
             f"{fmt(ra['top']['spearman'])} among the top {ra['top']['n_configs']} by "
             "validation, where selection actually happens (over all configs the easy calls "
             "dominate: broken configs come last on both).")
    if c["early_stopping"]["sentence"]:
        doc.para(c["early_stopping"]["sentence"])


def _interval(f: dict[str, Any]) -> str:
    return "—" if f["ci_low"] is None else f"[{fmt(f['ci_low'])}, {fmt(f['ci_high'])}]"
