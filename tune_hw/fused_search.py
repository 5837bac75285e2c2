"""The search of a fused study (`search.fuse` auto or K): the member configs Tune's own
random/grid generator would give the unfused study, cut into groups (`grouping`), or with
Optuna the groups a `group_searcher.GroupSearcher` proposes; each group one Tune trial of
`group_trial.group_trainable`. Under ASHA, Tune's scheduler is FIFO and the
members are judged by a `rungs.RungBoard` in a named actor of the driver (`start_board`),
which every group asks after each epoch.

The member configs are drawn exactly as `BasicVariantGenerator(random_state=seed)` draws
today's trials (Ray's `generate_variants`, `num_samples` times, one seeded generator), so a
fused study trains the very configs its unfused run would. `num_samples` counts what it counts
unfused: member trials (configs x repeats) of a grid/random search, configs under Optuna.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
from ray.tune.search.variant_generator import generate_variants

from tune_hw import cluster, grouping, ray_files, results, resumable
from tune_hw.errors import UserError
from tune_hw.group_searcher import GroupSearcher
from tune_hw.ray_files import GROUP_KEY, MEMBER_STATUS_KEY, MEMBERS_KEY
from tune_hw.rungs import RungBoard
from tune_hw.storage import ObjectPath
from tune_hw.studies import Study


def member_configs(study: Study, space: dict[str, Any]) -> list[dict[str, Any]]:
    """The flat configs of the unfused study's trials, in Tune's order, from its param space
    (with repeats, the sampled values held constant across the grid over the repeat index, as
    tuner.make_search_alg's generator holds them)."""
    rng = _BackwardsCompatibleNumpyRng(study.train["seed"])
    constant = study.search["repeats"] > 1
    configs = []
    for _ in range(study.search["num_samples"]):
        for _, spec in generate_variants({"config": space}, constant_grid_search=constant,
                                         random_state=rng):
            configs.append(spec["config"])
    return configs


def group_configs(study: Study, space: dict[str, Any], slots: int) -> list[dict[str, Any]]:
    """One Tune config per group: {"group": {"members": [flat member configs]}}."""
    return cut_groups(study, member_configs(study, space), slots)


def cut_groups(study: Study, configs: list[dict[str, Any]], slots: int
               ) -> list[dict[str, Any]]:
    """`configs` as group configs: fused where it pays, never fewer groups than `slots`."""
    device = "cuda" if study.resources["gpu"] > 0 else "cpu"
    groups = grouping.make_groups(configs, study.search["fuse"], slots, device)
    return [{MEMBERS_KEY: [configs[i] for i in group]} for group in groups]


def space_growth(study: Study, space: dict[str, Any]) -> resumable.AddedSpace | None:
    """How a restored fused random/grid run grows on --resume --num-samples: given the param
    spaces its Tuner holds (grids over groups), the grid over the groups of the member configs
    they lack. Those are the configs a new run of the grown study draws after the held ones
    (one seeded generator: its first draws are the held run's), cut into groups of their own
    (the held groups stay as they are). None where Tune grows the run itself (unfused) or the
    GroupSearcher does (Optuna)."""
    if not grows_by_grid(study):
        return None
    slots = trial_slots(study)

    def added_space(held_spaces: list[dict[str, Any]]) -> dict[str, Any] | None:
        held = sum(len(group[MEMBERS_KEY]) for held_space in held_spaces
                   for group in held_space[GROUP_KEY]["grid_search"])
        added = member_configs(study, space)[held:]
        return {GROUP_KEY: tune.grid_search(cut_groups(study, added, slots))} if added else None

    return added_space


def grows_by_grid(study: Study) -> bool:
    """A fused random/grid study: its Tuner's space is one grid over its groups."""
    return study.search["fuse"] != "off" and study.search["algorithm"] != "optuna"


def trial_slots(study: Study) -> int:
    """The trials that run at once, which fusion must keep busy: search.max_concurrent when
    set (fewer than the cluster fits, or more on an autoscaling cluster), else what the
    running cluster fits, at least one (concurrent_slots is 0 while Ray is not up)."""
    return study.search["max_concurrent"] or max(1, cluster.concurrent_slots(study.resources))


def check_growth(study: Study, space: dict[str, Any], run_dir: Path | ObjectPath,
                 held_samples: int) -> None:
    """Before Ray starts: a fused random/grid run of `held_samples` grows (space_growth) by
    the draws that follow its own, which holds only while this tune_hw and Ray draw what the
    ones that made it drew; a run whose members are not the grown study's first draws is
    refused."""
    if not grows_by_grid(study) or held_samples >= study.search["num_samples"]:
        return
    configs = member_configs(study, space)
    prefix = configs[:len(configs) // study.search["num_samples"] * held_samples]
    held = Counter(_member_key(r.config) for r in ray_files.read_ray_trials(run_dir))
    if held - Counter(map(_member_key, prefix)):
        raise UserError(f"run {run_dir.name!r} holds configs this version does not draw for "
                        "its study (made by another tune_hw or Ray?), so it cannot grow: "
                        f"--resume it with --num-samples {held_samples}, or grow it into a "
                        "new --name")


def _member_key(config: dict[str, Any]) -> tuple[str, int]:
    return results.config_id(config), int(config.get(results.REPEAT_KEY) or 0)


def group_search(study: Study, space: dict[str, Any]) -> tuple[dict[str, Any], int, Any]:
    """(param space, num_samples, search algorithm) of the Tuner of a fused study: a grid
    over the groups, each group one trial, at most `max_concurrent` running; with Optuna, a
    GroupSearcher that proposes each group when it starts (num_samples configs in all). Both
    follow a moved run and grow on --resume --num-samples (resumable; the grid by
    space_growth, the GroupSearcher by itself)."""
    slots = trial_slots(study)
    if study.search["algorithm"] == "optuna":
        searcher = ConcurrencyLimiter(GroupSearcher(study, slots), max_concurrent=slots)
        # Tune's bound on its trials (groups): every group has a member, so at most the
        # members; the GroupSearcher says FINISHED once its num_samples configs are in groups
        members = study.search["num_samples"] * study.search["repeats"]
        return {}, members, resumable.GrowingSearch(searcher)
    groups = group_configs(study, space, slots)
    searcher = resumable.GrowingVariants(max_concurrent=study.search["max_concurrent"])
    return {GROUP_KEY: tune.grid_search(groups)}, 1, searcher


BoardActor = ray.remote(num_cpus=0)(RungBoard)
_BOARDS: list[Any] = []  # the driver holds its board for the whole search


def start_board(study: Study, run_dir: Path | ObjectPath, max_t: int) -> str | None:
    """The name of the run's RungBoard actor, started with the member results already stored
    (a resumed search), or None when the study's scheduler is FIFO."""
    if study.scheduler["name"] != "asha":
        return None
    name = f"tune_hw_board:{run_dir}"
    # one board per run in this Ray: a Tuner restored in the same process asks the same one
    board = BoardActor.options(name=name, get_if_exists=True).remote(
        max_t, study.scheduler["grace_period"], study.scheduler["reduction_factor"],
        study.search["mode"])
    ray.get(board.replay.remote(*stored_rungs(run_dir, study.search["metric"])))
    _BOARDS.append(board)
    return name


def stored_rungs(run_dir: Path | ObjectPath, metric: str
                 ) -> tuple[list[tuple[str, int, float]], list[str]]:
    """What a run already holds for its board: (member's config id, epoch, metric value) of
    every result, and the config ids of the members ASHA stopped."""
    records = ray_files.read_ray_trials(run_dir) if run_dir.is_dir() else []
    values = [(results.config_id(record.config), row["epoch"], row[metric])
              for record in records for row in record.rows
              if isinstance(row.get("epoch"), int) and isinstance(row.get(metric), (int, float))]
    stopped = [results.config_id(record.config) for record in records
               if record.rows and record.rows[-1].get(MEMBER_STATUS_KEY) == "early_stopped"]
    return values, stopped
