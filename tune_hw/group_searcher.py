"""Optuna proposes the members of fused groups (ask/tell), one Tune trial per group.

Every config is `study.ask(distributions)`, asked freely: no ask is steered by another's
structure (TPE runs with the constant liar, as for any parallel asks). The asked configs wait in
a pool of `window` (the configs of one slot's share of the study); a group takes the oldest
waiting config and the others of its structure (every searched key but lr, momentum, weight
decay and seed: `fused.structure_key`), at most what fusion pays for and 1/slots of the
configs not started yet. So a group forms from what TPE proposed, never the other way round;
the price is later feedback: a config is asked before the results of the configs pooled with
it are in, as if TPE had `window` more parallel workers (and TPE samples at random until 10
configs have ended). Each member is told its own last reported value when it leaves or its
group ends, as Ray's OptunaSearch tells a trial (COMPLETE with the last value; FAIL for an
error without one), with its intermediate values reported per epoch.

An earlier design asked one config and enqueued its structure for the rest of the group
(`enqueue_trial` with partial parameters); that skews TPE toward the first ask's structure: in
the full lr_batch run one batch-1 ask brought 19 more batch-1 configs (unfused TPE drew 7 of
40), and that group trained alone on one core for most of an hour.

With `search.repeats` R > 1 each asked config is R members of its group (repeat r trains with
seed train.seed + r: results.REPEAT_KEY), and `num_samples` counts configs, as Ray's Repeater
does unfused: the config's Optuna trial is told the mean of its repeats' last values once all
of them ended, and each epoch's intermediate value once all its repeats reported that epoch.
"""

from __future__ import annotations

import math
import pickle
from collections import defaultdict
from typing import Any

import optuna
from ray.tune.search import Searcher

from tune_hw import fused, grouping
from tune_hw.ray_files import GROUP_KEY, MEMBER_ENDED, MEMBER_STATUS_KEY, MEMBERS_KEY, member_id
from tune_hw.results import REPEAT_KEY
from tune_hw.rungs import nan_mean
from tune_hw.studies import Study


class GroupSearcher(Searcher):
    """Tune's searcher of a fused Optuna study: one suggestion is one group of members."""

    def __init__(self, study: Study, slots: int):
        super().__init__(metric=study.search["metric"], mode=study.search["mode"])
        self.fixed, self.fuse = study.fixed_config(), study.search["fuse"]
        self.repeats = study.search["repeats"]
        self.dists = {k: d.to_optuna() for k, d in study.distributions.items()}
        self.total = self.left = study.search["num_samples"]  # configs: all, still to ask
        self.slots = max(1, slots)
        direction = "maximize" if study.search["mode"] == "max" else "minimize"
        sampler = optuna.samplers.TPESampler(seed=study.train["seed"], constant_liar=True)
        self.ot = optuna.create_study(direction=direction, sampler=sampler)
        self.trials: dict[str, optuna.trial.Trial] = {}  # member id -> its config's trial
        self.groups: dict[str, list[str]] = {}  # Tune trial id -> its member ids
        self.last: dict[str, float] = {}  # member id -> its last reported value
        self.ended: dict[int, list[str]] = defaultdict(list)  # Optuna trial -> ended members
        self.epochs: dict[tuple[int, int], dict[str, float]] = {}  # (config, epoch): values
        self.pool: list[optuna.trial.Trial] = []  # asked, in order, not in a group yet
        self.queue: list[tuple[optuna.trial.Trial, int]] = []  # (config, repeat) to group
        self.chunk = 1  # the members of one group while the queue lasts

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True  # the study already fixed metric, mode and space

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next group's member configs, or FINISHED once all num_samples configs are in
        groups."""
        if not self.queue:
            self._ask_members()
            if not self.queue:
                return Searcher.FINISHED
        members, self.queue = self.queue[:self.chunk], self.queue[self.chunk:]
        self.groups[trial_id] = [member_id(trial_id, k) for k in range(len(members))]
        self.trials.update(zip(self.groups[trial_id], [t for t, _ in members], strict=True))
        return {GROUP_KEY: {MEMBERS_KEY: [self._member_config(t, r) for t, r in members]}}

    def _ask_members(self) -> None:
        """Queue the members of the next group: fill the pool with free asks, then take the
        oldest pooled config and those of its structure, each config's repeats together;
        `chunk` members make a group (a config whose repeats outnumber the largest group
        spans several groups)."""
        window = max(1, math.ceil(self.total / self.slots))
        while self.left > 0 and len(self.pool) < window:
            self.pool.append(self.ot.ask(self.dists))
            self.left -= 1
        if not self.pool:
            return
        oldest = self._member_config(self.pool[0], 0)
        structure, largest = fused.structure_key(oldest), grouping.largest_group(oldest, self.fuse)
        # the configs not started spread over at least as many groups as trial slots: a group
        # holds at most 1/slots of them, so the last groups do not leave slots idle
        not_started = len(self.pool) + self.left
        size = min(max(1, largest // self.repeats), math.ceil(not_started / self.slots))
        taken = [t for t in self.pool
                 if fused.structure_key(self._member_config(t, 0)) == structure][:size]
        self.pool = [t for t in self.pool if t not in taken]
        self.queue = [(trial, r) for trial in taken for r in range(self.repeats)]
        self.chunk = min(largest, len(self.queue))

    def _member_config(self, trial: optuna.trial.Trial, repeat: int) -> dict[str, Any]:
        repeat_key = {REPEAT_KEY: repeat} if self.repeats > 1 else {}  # as Ray's Repeater
        return {**self.fixed, **trial.params, **repeat_key}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Each member's value at this epoch; a member that left is told its last value."""
        for member, row in (result.get(MEMBERS_KEY) or {}).items():
            value = row.get(self.metric)
            if member not in self.trials or not isinstance(value, (int, float)):
                continue
            self.last[member] = float(value)
            self._report(member, float(value), int(row.get("epoch", 0)))
            if row.get(MEMBER_STATUS_KEY) in MEMBER_ENDED:
                self._tell(member, error=False)

    def _report(self, member: str, value: float, epoch: int) -> None:
        """The config's intermediate value at `epoch`: the mean once all its repeats have one
        (keyed by member: a row seen twice counts once)."""
        trial = self.trials[member]
        values = self.epochs.setdefault((trial.number, epoch), {})
        values[member] = value
        if len(values) == self.repeats:
            trial.report(nan_mean(list(values.values())), epoch)
            del self.epochs[(trial.number, epoch)]

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """The group ended: every member not told yet is told its last value."""
        if result:
            self.on_trial_result(trial_id, result)
        for member in self.groups.get(trial_id, []):
            self._tell(member, error)

    def _tell(self, member: str, error: bool) -> None:
        """Member `member` ended; once all its config's repeats have, tell Optuna their mean."""
        trial = self.trials.pop(member, None)
        if trial is None:
            return
        ended = self.ended[trial.number]
        ended.append(member)
        if len(ended) < self.repeats:
            return
        value = nan_mean([self.last.get(m, math.nan) for m in self.ended.pop(trial.number)])
        if math.isnan(value):
            self.ot.tell(trial, state=optuna.trial.TrialState.FAIL if error
                         else optuna.trial.TrialState.PRUNED)
        else:
            self.ot.tell(trial, value)

    def grow(self, tune_samples: int) -> None:
        """A restored search raised to Tune's `tune_samples` (num_samples x repeats: --resume
        --num-samples) proposes the configs it lacks; never fewer (a run never shrinks)."""
        configs = tune_samples // self.repeats
        if configs > self.total:
            self.left += configs - self.total
            self.total = configs

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as out:
            pickle.dump(self.__dict__.copy(), out)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as source:
            self.__setstate__({**self.__dict__, **pickle.load(source)})

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A searcher pickled before repeats joined fused groups (or before free asks) lacks
        their fields: it had one member per config and no queue or pool; its total is the
        configs it had asked."""
        asked = len(state["ot"].trials) if "ot" in state else 0
        defaults = {"repeats": 1, "slots": 1, "pool": [], "queue": [], "chunk": 1, "epochs": {},
                    "ended": defaultdict(list), "total": state.get("left", 0) + asked}
        self.__dict__.update({**defaults, **state})
