"""ASHA's rule for member trials that train inside groups: a `RungBoard` judges each config
as Ray's ASHAScheduler judges a trial (one bracket, `stop_last_trials`), across every group.
A config's repeats (`search.repeats`: members of one config_id, trained in one group) are
judged together by the mean of their values, and stop together.

Rungs sit at grace_period * reduction_factor**k epochs below max_t. A member's value is
recorded at the first rung it reaches that it has no value at yet; it stops when that value
falls below the (1 - 1/reduction_factor) percentile of the values already recorded there.
Mode min negates values, as Ray does. A result at max_t stops (the member is done).

    board = RungBoard(max_t=20, grace_period=2, reduction_factor=3, mode="max")
    stopped = board.decide([("cfgA", 2, 0.41), ("cfgA", 2, 0.45), ("cfgB", 2, 0.12)])
    # ["cfgB"] or []: cfgA's two repeats are judged at their mean, 0.43

A config whose repeats train in different groups (more repeats than the largest group, or
split to fill the trial slots) is judged by the first group to report a rung; once stopped,
its members in other groups stop when they report next.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


class RungBoard:
    """The rungs of one ASHA bracket, keyed by config (results.config_id)."""

    def __init__(self, max_t: int, grace_period: int, reduction_factor: float, mode: str):
        self.max_t, self.rf = max_t, reduction_factor
        self.sign = 1.0 if mode == "max" else -1.0
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) + 1)
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (grace_period * reduction_factor ** k, {}) for k in reversed(range(count))]
        self.stopped: set[str] = set()  # configs stopped: their repeats in other groups too

    def on_result(self, key: str, epoch: int, value: float) -> bool:
        """Record a member's result; True when ASHA stops it here."""
        if epoch >= self.max_t:
            return True
        reward = self.sign * value
        for milestone, recorded in self.rungs:
            if epoch < milestone or key in recorded:
                continue
            cutoff = self.cutoff(recorded)
            recorded[key] = reward
            return cutoff is not None and reward < cutoff
        return False

    def cutoff(self, recorded: dict[str, float]) -> float | None:
        if not recorded:
            return None
        return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100))

    def decide(self, results: Iterable[tuple[str, int, float]]) -> list[str]:
        """The configs (of one group's epoch: a (config, epoch, value) per member) that ASHA
        stops before max_t."""
        stop = [key for key, epoch, value in means(results)
                if (key in self.stopped or self.on_result(key, epoch, value))
                and epoch < self.max_t]
        self.stopped.update(stop)
        return stop

    def replay(self, results: Iterable[tuple[str, int, float]], stopped: Iterable[str] = ()
               ) -> None:
        """Rebuild the rungs from stored results (a resumed search), deciding nothing; the
        configs ASHA `stopped` stop their members that still train (a config's repeats in
        another group, or a grown grid's copy of it) as they did before the resume."""
        for key, epoch, value in sorted(means(results), key=lambda r: r[1]):
            self.on_result(key, epoch, value)
        self.stopped.update(stopped)


def means(results: Iterable[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
    """One (config, epoch, value) per config and epoch, in first-seen order: the mean of its
    members' values that are numbers (NaN when none is: a diverged epoch)."""
    values: dict[tuple[str, int], list[float]] = {}
    for key, epoch, value in results:
        values.setdefault((key, epoch), []).append(float(value))
    return [(key, epoch, nan_mean(found)) for (key, epoch), found in values.items()]


def nan_mean(values: Iterable[float]) -> float:
    """The mean of the values that are numbers (NaN when none is), as Ray's Repeater's."""
    numbers = [v for v in values if not math.isnan(v)]
    return sum(numbers) / len(numbers) if numbers else math.nan
