"""The Tune trainable of a fused group: one Tune trial that trains its K member trials
together (`fused.run_group`; a group of one trains through `training.run_trial`, exactly as
an unfused trial) and reports every member's row each epoch.

What it reports per epoch (`ray_files.member_rows` expands it into member trials):
    {"epoch": e, <metric>: the best live member's value (Tune's bookkeeping only),
     "members": {member id: the member's metric row + "member_status"}}
A member whose row says diverged, completed or early_stopped (the run's `rungs.RungBoard`
under ASHA, asked once per group epoch) has left the stack; later results omit it.

Saved states, in the group's trial directory (local or on object storage, as an unfused
trial's: ray_trial.TrialStates): one latest.pt for all live members (one atomic
file, so a crash never leaves members at different epochs), each member's best epoch's state
in members/<member id>/best.pt (as an unfused trial's best.pt), and the group's rows.jsonl.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tune_hw import fused, training
from tune_hw.errors import UserError
from tune_hw.layout import LATEST_STATE_FILE, best_state_path, trial_dir_name
from tune_hw.metrics import SENTINEL_METRICS
from tune_hw.ranking import Ranking
from tune_hw.ray_files import GROUP_KEY, MEMBER_STATUS_KEY, MEMBERS_KEY, member_id
from tune_hw.ray_trial import TrialStates, ray_context, report_with_marker, set_threads
from tune_hw.results import config_id
from tune_hw.storage import ObjectPath, atomic_write, location


class _Stopped(Exception):
    """The board stopped the one member of a group that trains through run_trial."""


class GroupRun:
    """One group's members, their statuses and saved states, and its reports to Tune."""

    def __init__(self, trial_dir: Path | ObjectPath, ranking: Ranking, group_id: str,
                 configs: list[dict[str, Any]], board: Any = None):
        self.trial_dir, self.ranking, self.configs = trial_dir, ranking, configs
        self.board = board  # the run's RungBoard actor, or None (FIFO)
        self.training: list[str] = []  # the ids of the members run_group trains, in order
        self.ids = [member_id(group_id, k) for k in range(len(configs))]
        self.config_ids = {m: config_id(c) for m, c in zip(self.ids, configs, strict=True)}
        self.rows = TrialStates(trial_dir, ranking)  # the group's rows file
        self.bests = {m: TrialStates(best_state_path(trial_dir.parent, m, group_id).parent,
                                     ranking) for m in self.ids}
        self.status = dict.fromkeys(self.ids, "running")
        self.states: dict[str, dict[str, Any]] = {}  # live members' latest states
        self.last_row: dict[str, Any] | None = None
        self.pending: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.marked, self.reported = tune.get_checkpoint() is not None, False
        self._load_latest()

    def _load_latest(self) -> None:
        path = self.trial_dir / LATEST_STATE_FILE
        if not path.is_file():
            return
        saved = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu",
                           weights_only=True)  # on the CPU, as TrialStates.latest (its reason)
        self.status.update(saved["status"])
        self.states, self.last_row = saved["states"], saved["row"]
        for member, best in saved["best"].items():
            self.bests[member].best = best

    def live(self) -> list[int]:
        """Positions of the members still training."""
        return [k for k, m in enumerate(self.ids) if self.status[m] == "running"]

    def train(self, device: str, context: dict[str, Any]) -> None:
        """Train the live members from their latest states to the end."""
        live = self.live()
        self.training = [self.ids[k] for k in live]
        states = [self.states.get(self.ids[k]) for k in live]
        if len(live) == 1:  # a group of one is an unfused trial
            def report_one(row: dict[str, Any], state: dict[str, Any]) -> None:
                self.member_report(live[0], row, state)
                if self.end_epoch(row["epoch"]):
                    raise _Stopped
            try:
                training.run_trial(self.configs[live[0]], report_one, states[0], device,
                                   context)
            except _Stopped:
                pass
        elif live:
            fused.run_group([self.configs[k] for k in live],
                            lambda i, row, state: self.member_report(live[i], row, state),
                            states if any(states) else None, device, context, self.end_epoch)

    def member_report(self, k: int, row: dict[str, Any], state: dict[str, Any]) -> None:
        """Hold member k's row and state until its group's epoch ends; keep its best state."""
        self.bests[self.ids[k]].keep_if_best(row, state)
        self.pending[self.ids[k]] = (row, state)

    def end_epoch(self, epoch: int) -> list[int]:
        """Report the epoch's rows as one group result, save the live members' states; the
        positions (among the members trained) of those the board stopped."""
        stopped = self._ask_board(epoch)
        members = {}
        for member, (row, _) in self.pending.items():
            epochs = training.split_config(self.configs[self.ids.index(member)])[2]["epochs"]
            self.status[member] = "diverged" if row.get("diverged") else (
                "completed" if epoch >= epochs else
                "early_stopped" if member in stopped else "running")
            members[member] = {**row, MEMBER_STATUS_KEY: self.status[member]}
        result = {"epoch": epoch, self.ranking.metric: self._tune_metric(members),
                  MEMBERS_KEY: members}
        self.rows.append_row(result)
        self.tell_tune(result)
        self.states = {m: state for m, (_, state) in self.pending.items()
                       if self.status[m] == "running"}
        self._save_latest(result)
        self.pending = {}
        return [i for i, member in enumerate(self.training) if member in stopped]

    def _ask_board(self, epoch: int) -> set[str]:
        """The members of this epoch that ASHA stops (none under FIFO): it judges configs,
        a config's repeats by their mean (rungs.RungBoard)."""
        if self.board is None:
            return set()
        asked = [(self.config_ids[m], epoch, row[self.ranking.metric])
                 for m, (row, _) in self.pending.items()]
        stopped = set(ray.get(self.board.decide.remote(asked)))
        return {m for m in self.pending if self.config_ids[m] in stopped}

    def _tune_metric(self, members: dict[str, dict[str, Any]]) -> float:
        """The best healthy member's value of the study's metric (a sentinel if none)."""
        healthy = [r[self.ranking.metric] for r in members.values() if not r.get("diverged")]
        if not healthy:
            return SENTINEL_METRICS[self.ranking.metric]
        return max(healthy) if self.ranking.mode == "max" else min(healthy)

    def _save_latest(self, row: dict[str, Any]) -> None:
        state = {"states": self.states, "status": self.status, "row": row,
                 "best": {m: s.best for m, s in self.bests.items() if s.best is not None}}
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.trial_dir / LATEST_STATE_FILE, lambda tmp: torch.save(state, tmp))

    def tell_tune(self, result: dict[str, Any]) -> None:
        """tune.report, with the marker checkpoint the first time (ray_trial's reason)."""
        if self.marked:
            tune.report(result)
        else:
            report_with_marker(result)
            self.marked = True
        self.reported = True


def group_trainable(config: dict[str, Any], run_dir: str, ranking: Ranking,
                    board: str | None = None) -> None:
    """The Ray Tune trainable of a group: its members from their latest states to the end.

    A `UserError` ends the group with one report of the sentinel metrics and its message,
    which stands for every member (as for an unfused trial, no retry can mend it). `board`
    names the run's RungBoard actor under ASHA.
    """
    set_threads()
    device, context = ray_context()
    group_id = tune.get_context().get_trial_id()
    run = GroupRun(location(run_dir) / trial_dir_name(group_id), ranking, group_id,
                   config[GROUP_KEY][MEMBERS_KEY], ray.get_actor(board) if board else None)
    try:
        run.train(device, context)
    except UserError as exc:
        run.tell_tune({**SENTINEL_METRICS, **context, "error": f"UserError: {exc}"})
        return
    if not run.reported and run.last_row is not None:
        # every member had finished when the state was saved (perhaps before Ray heard of
        # it): report the last result again, as Tune ends a trial that reports nothing in error
        run.tell_tune(run.last_row)
