"""The Ray Tune search of a study: its param space, searcher, scheduler, and the Tuner, new or
restored from a run directory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Repeater
from ray.tune.search.optuna import OptunaSearch

from tune_hw import (
    cluster,
    fused_search,
    group_trial,
    layout,
    ray_trial,
    results,
    resumable,
    tracking,
)
from tune_hw.distributions import Distribution
from tune_hw.results import REPEAT_KEY
from tune_hw.storage import ObjectPath
from tune_hw.studies import Study


def to_tune(dist: Distribution) -> Any:
    """One study distribution as a Ray Tune domain."""
    if dist.kind == "uniform":
        return tune.uniform(dist.low, dist.high)
    if dist.kind == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    if dist.kind == "int":
        return tune.randint(int(dist.low), int(dist.high) + 1)  # study ranges are inclusive
    if dist.kind == "choice":
        return tune.choice(list(dist.values))
    return tune.grid_search(list(dist.values))


def param_space(study: Study) -> dict[str, Any]:
    """The flat dotted Tune param_space: fixed values plus one domain per searched key; grid and
    random searches with repeats add a grid over the repeat index (Optuna's Repeater sets it)."""
    space = study.fixed_config()
    for key, dist in study.distributions.items():
        space[key] = to_tune(dist)
    if study.search["repeats"] > 1 and study.search["algorithm"] != "optuna":
        space[REPEAT_KEY] = tune.grid_search(list(range(study.search["repeats"])))
    return space


def num_samples(study: Study) -> int:
    """Tune's num_samples: Optuna's Repeater counts every repeat as a sample; a grid over the
    repeat index multiplies the others' samples by itself."""
    repeats = study.search["repeats"] if study.search["algorithm"] == "optuna" else 1
    return study.search["num_samples"] * repeats


def make_search_alg(study: Study) -> Any:
    """Optuna's TPE, or Tune's own random/grid generator, with at most `max_concurrent` live
    trials (Optuna: by default as many as the running cluster fits at once); both can follow
    a moved run and grow on restore (resumable).

    With repeats, Optuna's suggestions go through Ray's Repeater: each config runs `repeats`
    times and TPE is told the mean of their results; the random generator keeps its sampled
    values constant across the grid over the repeat index, so the repeats share one config."""
    seed, repeats = study.train["seed"], study.search["repeats"]
    limit = study.search["max_concurrent"]
    if study.search["algorithm"] != "optuna":
        # it takes its own limit (0 = none): ConcurrencyLimiter refuses a non-Searcher
        return resumable.GrowingVariants(random_state=seed, max_concurrent=limit,
                                         constant_grid_search=repeats > 1)
    # Without a ConcurrencyLimiter Tune keeps one trial of a custom searcher pending at a time,
    # so a cluster fills one trial after another and short trials all reuse the first actor.
    limit = limit or cluster.concurrent_slots(study.resources)
    searcher = OptunaSearch(seed=seed)
    if repeats > 1:
        searcher = Repeater(searcher, repeat=repeats, set_index=True)
    return resumable.GrowingSearch(
        ConcurrencyLimiter(searcher, max_concurrent=limit) if limit > 0 else searcher)


def max_epochs(study: Study) -> int:
    dist = study.distributions.get("train.epochs")
    return int(dist.upper if dist else study.train["epochs"])


def make_scheduler(study: Study) -> Any:
    """ASHA on the reported epoch (it survives restores), or FIFO (also for fused groups,
    whose members ASHA judges one by one: fused_search.start_board)."""
    if study.scheduler["name"] == "fifo" or study.search["fuse"] != "off":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=max_epochs(study),
                         grace_period=study.scheduler["grace_period"],
                         reduction_factor=study.scheduler["reduction_factor"])


def search_inputs(study: Study) -> tuple[dict[str, Any], int, Any]:
    """(param space, num_samples, search algorithm): one trial per config, or with
    search.fuse auto or K one trial per group of member configs (fused_search)."""
    if study.search["fuse"] == "off":
        return param_space(study), num_samples(study), make_search_alg(study)
    return fused_search.group_search(study, param_space(study))


def make_trainable(study: Study, run_dir: Path | ObjectPath, trainable: Callable | None = None
                   ) -> Any:
    """The Tune trainable with the study's per-trial resources; tune_trainable (or a fused
    study's group_trainable) also gets the run directory (where each trial keeps its states)
    and the study's ranking."""
    if trainable is None and study.search["fuse"] == "off":
        trainable = tune.with_parameters(ray_trial.tune_trainable, run_dir=str(run_dir),
                                         ranking=study.ranking)
    elif trainable is None:
        board = fused_search.start_board(study, run_dir, max_epochs(study))
        trainable = tune.with_parameters(group_trial.group_trainable, run_dir=str(run_dir),
                                         ranking=study.ranking, board=board)
    return tune.with_resources(trainable,
                               {"cpu": study.resources["cpu"], "gpu": study.resources["gpu"]})


def build_tuner(study: Study, storage: Path | ObjectPath, run_name: str,
                trainable: Callable | None = None, callbacks: Sequence[Any] = (),
                verbose: int | None = None) -> Any:
    """A new Tuner for the study; `trainable` replaces tune_trainable (tests inject faults);
    `callbacks` and `verbose` (None: Ray's default) set what the driver prints; the run's
    tracking callbacks (optuna.db, MLflow) always come first.

    Tune keeps no checkpoints (each trial keeps its own states: ray_trial.TrialStates), so it
    never forces experiment snapshots; it takes them on its own schedule (about 5 % of time).
    """
    search = study.search
    space, samples, search_alg = search_inputs(study)
    return tune.Tuner(
        make_trainable(study, storage / study.name / run_name, trainable),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=search["metric"], mode=search["mode"], num_samples=samples,
            search_alg=search_alg, scheduler=make_scheduler(study),
            reuse_actors=True, trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(storage / study.name),
            callbacks=[*tracking.callbacks(study, storage / study.name / run_name),
                       *callbacks], verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=study.failure["max_failures"])),
    )


def check_growth(study: Study, run_dir: Path | ObjectPath) -> None:
    """Before Ray starts: a resumed fused random/grid run grows only by the draws that follow
    its own (fused_search.check_growth)."""
    held = (results.read_study(run_dir).get("search") or {}).get("num_samples")
    if isinstance(held, int):  # run_checks.check_run_dir refused a run without one
        fused_search.check_growth(study, param_space(study), run_dir, held)


def restore_tuner(study: Study, run_dir: Path | ObjectPath, trainable: Callable | None = None,
                  callbacks: Sequence[Any] = (), verbose: int | None = None) -> Any:
    """Ray's Tuner.restore with the searcher's state: finished trials stay finished,
    unfinished ones continue from their latest state, errored ones stay errored; new trials
    go to the run's current place (it may have moved), up to the study's num_samples.

    The restored Tuner would bring back the callbacks and verbosity pickled in tuner.pkl
    (the first run's display and tracking callbacks); this run's replace them.
    Tuner.restore takes no RunConfig, so this sets them on its private `_local_tuner`
    (tests pin it)."""
    space, samples, _ = search_inputs(study)
    resumable.follow(str(run_dir.parent), run_dir.name, samples,
                     fused_search.space_growth(study, param_space(study)))
    tuner = tune.Tuner.restore(str(run_dir), make_trainable(study, run_dir, trainable),
                               resume_unfinished=True, resume_errored=False,
                               restart_errored=False, param_space=space)
    run_config = tuner._local_tuner.get_run_config()
    run_config.callbacks = [*tracking.callbacks(study, run_dir), *callbacks]
    run_config.verbose = verbose
    return tuner


def _trial_name(trial: Any) -> str:
    return layout.trial_dir_name(trial.trial_id)
