"""Optuna proposes the members of fused groups (ask/tell), one Tune trial per group.

A group's first member is `study.ask(distributions)`; its structural values (every searched
key but lr, momentum, weight decay and seed: `fused.MEMBER_KEYS`) fix the group, and each
further member is asked with those values enqueued (Optuna's `enqueue_trial` with partial
parameters samples the rest). TPE runs with the constant liar, for parallel asks. Each member
is told its own last reported value when it leaves or its group ends, as Ray's OptunaSearch
tells a trial (COMPLETE with the last value; FAIL for an error without one), with its
intermediate values reported per epoch. `num_samples` counts member trials.
"""

from __future__ import annotations

import math
import pickle
from typing import Any

import optuna
from ray.tune.search import Searcher

from tune_hw import fused, grouping
from tune_hw.ray_files import GROUP_KEY, MEMBER_ENDED, MEMBER_STATUS_KEY, MEMBERS_KEY, member_id
from tune_hw.studies import Study


class GroupSearcher(Searcher):
    """Tune's searcher of a fused Optuna study: one suggestion is one group of members."""

    def __init__(self, study: Study, slots: int):
        super().__init__(metric=study.search["metric"], mode=study.search["mode"])
        self.fixed, self.fuse = study.fixed_config(), study.search["fuse"]
        self.dists = {k: d.to_optuna() for k, d in study.distributions.items()}
        self.left = study.search["num_samples"]  # members still to propose
        self.cap = max(1, study.search["num_samples"] // max(1, slots))  # >= slots groups
        direction = "maximize" if study.search["mode"] == "max" else "minimize"
        sampler = optuna.samplers.TPESampler(seed=study.train["seed"], constant_liar=True)
        self.ot = optuna.create_study(direction=direction, sampler=sampler)
        self.trials: dict[str, optuna.trial.Trial] = {}  # member id -> its Optuna trial
        self.groups: dict[str, list[str]] = {}  # Tune trial id -> its member ids
        self.last: dict[str, float] = {}  # member id -> its last reported value

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # the study already fixed metric, mode and space

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next group's member configs, or FINISHED once num_samples members exist."""
        if self.left <= 0:
            return Searcher.FINISHED
        first = self.ot.ask(self.dists)
        members = [first]
        config = {**self.fixed, **first.params}
        size = min(grouping.largest_group(config, self.fuse), self.cap, self.left)
        structural = {k: v for k, v in first.params.items() if k not in fused.MEMBER_KEYS}
        for _ in range(size - 1):
            self.ot.enqueue_trial(structural, skip_if_exists=False)
            members.append(self.ot.ask(self.dists))
        self.left -= len(members)
        self.groups[trial_id] = [member_id(trial_id, k) for k in range(len(members))]
        self.trials.update(zip(self.groups[trial_id], members, strict=True))
        return {GROUP_KEY: {MEMBERS_KEY: [{**self.fixed, **t.params} for t in members]}}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Each member's value at this epoch; a member that left is told its last value."""
        for member, row in (result.get(MEMBERS_KEY) or {}).items():
            value = row.get(self.metric)
            if member not in self.trials or not isinstance(value, (int, float)):
                continue
            self.last[member] = float(value)
            self.trials[member].report(float(value), int(row.get("epoch", 0)))
            if row.get(MEMBER_STATUS_KEY) in MEMBER_ENDED:
                self._tell(member, error=False)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """The group ended: every member not told yet is told its last value."""
        if result:
            self.on_trial_result(trial_id, result)
        for member in self.groups.get(trial_id, []):
            self._tell(member, error)

    def _tell(self, member: str, error: bool) -> None:
        trial = self.trials.pop(member, None)
        if trial is None:
            return
        value = self.last.get(member)
        if value is None or math.isnan(value):
            self.ot.tell(trial, state=optuna.trial.TrialState.FAIL if error
                         else optuna.trial.TrialState.PRUNED)
        else:
            self.ot.tell(trial, value)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__.copy(), out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as source:
            self.__dict__.update(pickle.load(source))
