"""ASHA over configs for an unfused study with repeats (`search.repeats` > 1, `--fuse off`).

Ray's ASHAScheduler judges Tune trials one by one, so it would cut a config's repeats (one
config_id over several trials) each on its own seed's luck. `ConfigASHA` judges the config
instead, by the mean of its repeats at each rung, with the rule fused groups use
(`rungs.RungBoard`), and stops all of them.

A repeat that reaches a rung before its config's other repeats pauses there (its state is
saved, its slot freed) until the last one arrives, so the config is judged before any repeat
trains past the rung; a repeat that can no longer report the rung (it ended, or it got past
it in an earlier session) is not waited for. Paused repeats resume first, and pending
repeats of a waiting config start before other trials:

    scheduler = ConfigASHA(board, repeats=2, stored=[])
    # repeat 0 reports epoch 2 (a rung): PAUSE, waiting for repeat 1;
    # repeat 1 reports epoch 2: the board judges the mean of the two, and both go on (repeat 0
    # resumes from its saved state) or both stop

On --resume the values stored at each rung come back: a rung every repeat reached is
replayed into the board, an unfinished one waits again for the repeats it lacks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from tune_hw.results import config_id
from tune_hw.rungs import RungBoard
from tune_hw.studies import Study

ENDED = (Trial.TERMINATED, Trial.ERROR)


def judges_configs(study: Study) -> bool:
    """Whether the study's trials are repeats that ConfigASHA judges together; its search
    then keeps at least `repeats` trials live, or paused repeats would wait forever for one
    that is never started."""
    return (study.scheduler["name"] == "asha" and study.search["fuse"] == "off"
            and study.search["repeats"] > 1)


class ConfigASHA(FIFOScheduler):
    """Tune's scheduler: FIFO order, ASHA's cuts per config (a `RungBoard`), repeats waiting
    for each other at the rungs."""

    # every result must reach on_trial_result before the trial trains on (a rung may pause it)
    _supports_buffered_results = False

    def __init__(self, board: RungBoard, repeats: int,
                 stored: Iterable[tuple[str, str, int, float]]):
        super().__init__()  # Tune sets the metric (set_search_properties); the board has the mode
        self.board, self.repeats = board, repeats
        # the first epoch at or past each rung below max_t: the only epochs whose values the
        # board records (a result at max_t ends the trial, judged or not)
        epochs = (math.ceil(milestone) for milestone, _ in board.rungs)
        self.rung_epochs = {epoch for epoch in epochs if epoch < board.max_t}
        self.waiting: dict[tuple[str, int], dict[str, float]] = {}  # (config, epoch) -> values
        self.judged: set[tuple[str, int]] = set()  # a resumed repeat may report a rung again
        self.stopping: set[str] = set()  # repeats of cut configs that _judge stops
        self.keys: dict[str, str] = {}  # trial id -> config id (a digest: computed once)
        self._restore(stored)

    def _restore(self, stored: Iterable[tuple[str, str, int, float]]) -> None:
        """The stored rung values of a resumed run: complete rungs into the board, the others
        back to waiting."""
        for trial_id, key, epoch, value in stored:
            if epoch in self.rung_epochs:
                self.keys[trial_id] = key
                self.waiting.setdefault((key, epoch), {})[trial_id] = value
        complete = sorted((k for k, values in self.waiting.items()
                           if len(values) >= self.repeats), key=lambda k: k[1])
        for key, epoch in complete:
            self.board.replay([(key, epoch, v) for v in self.waiting.pop((key, epoch)).values()])
            self.judged.add((key, epoch))

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        """STOP if the config is cut; at a rung, record the value and PAUSE until the
        config's other repeats have theirs, unless this result ends the trial anyway (it
        diverged, or it is the trial's last epoch)."""
        key, epoch = self._key(trial), result.get("epoch")
        if key in self.board.stopped:
            return TrialScheduler.STOP
        if (epoch not in self.rung_epochs or (key, epoch) in self.judged
                or not isinstance(result.get(self.metric), (int, float))):
            return TrialScheduler.CONTINUE
        self.waiting.setdefault((key, epoch), {})[trial.trial_id] = result[self.metric]
        self._judge(tune_controller, key)
        if key in self.board.stopped:
            return TrialScheduler.STOP
        ends = result.get("diverged") or epoch >= int(trial.config.get("train.epochs", epoch))
        waits = (key, epoch) in self.waiting and not ends
        return TrialScheduler.PAUSE if waits else TrialScheduler.CONTINUE

    # A repeat that ends is one fewer to wait for at the rungs it never reached. Tune calls
    # these before it marks the trial ended, so the trial is named.
    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        if trial.status == Trial.ERROR:
            return  # Tune's retry: it marks the trial ERROR, tells us, then requeues it
        self._judge(tune_controller, self._key(trial), ending=trial)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        if trial.trial_id not in self.stopping:  # else: _judge is stopping it (stop_trial)
            self._judge(tune_controller, self._key(trial), ending=trial)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        if trial.trial_id not in self.stopping:
            self._judge(tune_controller, self._key(trial), ending=trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """A paused repeat whose rung is judged, else a pending repeat of a waiting config,
        else the first pending trial; never a repeat still waiting at a rung."""
        trials = tune_controller.get_trials()
        waited_for = {key for key, _ in self.waiting}
        waiting = {trial_id for values in self.waiting.values() for trial_id in values}
        for wanted in (lambda t: t.status == Trial.PAUSED and t.trial_id not in waiting,
                       lambda t: t.status == Trial.PENDING and self._key(t) in waited_for,
                       lambda t: t.status == Trial.PENDING):
            chosen = next((t for t in trials if wanted(t)), None)
            if chosen is not None:
                return chosen
        return None

    def _judge(self, tune_controller: Any, key: str, ending: Trial | None = None) -> None:
        """Hand the board every rung of config `key` whose values are all in, lowest first;
        if it cut the config, stop its paused repeats (the others stop at their next report;
        choose_trial_to_run resumes the paused repeats of a config that goes on)."""
        repeats = [t for t in tune_controller.get_trials() if self._key(t) == key]
        for epoch in sorted(e for k, e in self.waiting if k == key):
            values = self.waiting[(key, epoch)]
            gone = sum(t.trial_id not in values and self._past(t, epoch, ending)
                       for t in repeats)
            if len(values) < self.repeats - gone:
                break  # a later rung cannot be complete before this one
            self.board.decide([(key, epoch, value) for value in values.values()])
            self.judged.add((key, epoch))
            del self.waiting[(key, epoch)]
        if key in self.board.stopped:
            for trial in repeats:  # paused, or still saving its pause: as Ray's HyperBand does
                if ((trial.status == Trial.PAUSED or trial.is_saving)
                        and trial.trial_id not in self.stopping):
                    self.stopping.add(trial.trial_id)
                    tune_controller.stop_trial(trial)  # the searcher gets its last result

    @staticmethod
    def _past(trial: Trial, epoch: int, ending: Trial | None) -> bool:
        """Whether `trial` can no longer report `epoch`: it ended, or it reported a later
        epoch (a resumed run's repeat that got past the rung before the interruption)."""
        last = (trial.last_result or {}).get("epoch")
        return (trial is ending or trial.status in ENDED
                or (isinstance(last, int) and last > epoch))

    def _key(self, trial: Trial) -> str:
        if trial.trial_id not in self.keys:
            self.keys[trial.trial_id] = config_id(trial.config)
        return self.keys[trial.trial_id]
