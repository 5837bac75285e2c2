"""Case 3, search efficiency: ASHA + Optuna vs FIFO + random at the same trial budget.

A smaller lr_batch (same model, space and scheduler settings, fewer rows and epochs) is
searched three ways: tune_hw with Optuna's TPE and ASHA (the study's own setting), tune_hw
with random search and FIFO, and plain Optuna (`study.optimize` over `training.run_trial`,
TPE with its successive-halving pruner, no Ray, one trial at a time in the peer process).
Each is scored by the wall time until its best validation accuracy comes within 0.5 points
of the best FIFO + random found.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from benchmarks.common import STUDY, field, interleave, load_run, log, run_search, search_argv
from tune_hw import studies, training
from tune_hw.ranking import Ranking

TOLERANCE = 0.005  # 0.5 accuracy points
VARIANTS = {"fifo_random": {"search.algorithm": "random", "scheduler.name": "fifo"},
            "asha_optuna": {"search.algorithm": "optuna", "scheduler.name": "asha"}}
PROFILES = {
    # 16 trials: TPE samples at random for its first 10, so it has 6 to show what it learned
    "full": {"budget": 16, "fixed": {"dataset.n_train": 2000, "dataset.n_val": 2000,
                                     "dataset.n_test": 2000, "train.epochs": 6},
             "repeats": 2},
    "quick": {"budget": 3, "fixed": {"dataset.n_train": 1024, "dataset.n_val": 500,
                                     "dataset.n_test": 500, "train.epochs": 2,
                                     "space.train.batch_size": {"choice": [128, 1024]}},
              "repeats": 1},
}


def tool_variant(storage: Path, label: str, settings: dict[str, Any], budget: int,
                 fixed: dict[str, Any]):
    """A tune_hw search; its best-so-far curve from the per-epoch results Ray stored."""
    def variant(repeat: int) -> dict[str, Any]:
        name = f"{label}-{repeat}"
        started = time.time()
        timing = run_search(search_argv(storage, name, {**fixed, **settings,
                                                        "search.num_samples": budget,
                                                        "train.seed": repeat}))
        return {**timing, "curve": ray_curve(storage, name, started),
                **outcome(storage, name)}
    return variant


def ray_curve(storage: Path, name: str, started: float) -> list[tuple[float, float]]:
    """(seconds since the search began, val_acc) of every epoch; Ray stamps whole seconds."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(storage / STUDY / name))
    points = [(max(0.0, float(t) - started), float(acc))
              for frame in analysis.trial_dataframes.values()
              for t, acc in zip(frame["timestamp"], frame["val_acc"], strict=True)]
    return sorted(points)


def outcome(storage: Path, name: str) -> dict[str, Any]:
    """Final best validation accuracy, its test accuracy, and the compute the trials used."""
    run = load_run(storage, name)
    trials = run.trials
    best = Ranking.of(run.study).ranked(trials).iloc[0]  # the best trial, as the tool ranks
    return {"best_val_acc": float(best.best_val_acc), "test_at_best": float(best.test_acc_at_best),
            "trial_s": float(trials.wall_s.sum()),
            "statuses": trials.status.value_counts().to_dict()}


def optuna_variant(peer: Executor, budget: int, fixed: dict[str, Any]):
    """Plain Optuna, run in the peer process (the trials' priority, torch already warm)."""
    def variant(repeat: int) -> dict[str, Any]:
        return peer.submit(plain_optuna, budget, fixed, repeat).result()
    return variant


def plain_optuna(budget: int, fixed: dict[str, Any], seed: int) -> dict[str, Any]:
    """`study.optimize` over `training.run_trial`: the same space, TPE + successive halving."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = studies.load_study(STUDY, overrides={**fixed, "train.seed": seed})
    base = study.fixed_config()
    curve: list[tuple[float, float]] = []
    trial_s: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()

    # each searched key as Optuna's distribution (the study's one translation to Optuna)
    distributions = {key: dist.to_optuna() for key, dist in study.distributions.items()}

    def objective(trial: optuna.Trial) -> float:
        config = {**base, **trial.params}
        last: dict[str, Any] = {}
        began = time.perf_counter()

        def report(metrics: dict[str, Any], _: dict[str, Any]) -> None:
            curve.append((time.perf_counter() - started, metrics["val_acc"]))
            last.update(metrics)
            trial.report(metrics["val_acc"], metrics["epoch"])
            if trial.should_prune():
                trial_s.append(time.perf_counter() - began)
                raise optuna.TrialPruned()

        training.run_trial(config, report)
        trial_s.append(time.perf_counter() - began)
        return last["val_acc"]

    optimizer = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(
            min_resource=study.scheduler["grace_period"],
            reduction_factor=study.scheduler["reduction_factor"]))
    for _ in range(budget):  # study.optimize, with the distributions given up front
        trial = optimizer.ask(distributions)
        try:
            optimizer.tell(trial, objective(trial))
        except optuna.TrialPruned:
            optimizer.tell(trial, state=optuna.trial.TrialState.PRUNED)
    states = [t.state.name.lower() for t in optimizer.trials]
    return {"wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu,
            "curve": curve,
            "best_val_acc": max(acc for _, acc in curve), "test_at_best": None,
            "trial_s": sum(trial_s), "statuses": {s: states.count(s) for s in sorted(set(states))}}


def time_to(curve: list[tuple[float, float]], target: float) -> float | None:
    """Seconds until the best-so-far first reaches `target`; None if it never does."""
    return next((t for t, acc in sorted(curve) if acc >= target), None)


def run(profile: str, storage: Path, peer: Executor) -> dict[str, Any]:
    """Every variant per repeat (seed = repeat), interleaved; time to FIFO's best - 0.5 pt."""
    settings = PROFILES[profile]
    budget, fixed = settings["budget"], settings["fixed"]
    log(f"search efficiency: {budget} trials per search")
    variants = {name: tool_variant(storage, name, extra, budget, fixed)
                for name, extra in VARIANTS.items()}
    variants["plain_optuna"] = optuna_variant(peer, budget, fixed)
    runs = interleave(variants, settings["repeats"])
    for repeat in range(settings["repeats"]):
        target = runs["fifo_random"][repeat]["best_val_acc"] - TOLERANCE
        for name in runs:
            runs[name][repeat]["target"] = target
            runs[name][repeat]["time_to_target_s"] = time_to(runs[name][repeat]["curve"],
                                                             target)
    out: dict[str, Any] = {"budget": budget, "fixed": fixed, "repeats": settings["repeats"],
                           "tolerance": TOLERANCE, "variants": {}}
    for name, variant_runs in runs.items():
        out["variants"][name] = {
            "wall_s": field(variant_runs, "wall_s"),
            "time_to_target_s": field(variant_runs, "time_to_target_s"),
            "reached": sum(r["time_to_target_s"] is not None for r in variant_runs),
            "best_val_acc": field(variant_runs, "best_val_acc"),
            "trial_s": field(variant_runs, "trial_s"),
            "cpu_s": field(variant_runs, "cpu_s"),
            "runs": [{k: v for k, v in r.items() if k != "curve"} for r in variant_runs]}
    return out
