"""The one Ray Tune trainable: `training.run_trial` with Tune's reporter and the trial's own
saved states, for every architecture.

Each trial keeps two states in its directory of the run (`TrialStates`): the latest (what a
retry, a lost node or --resume continues from) and its best epoch's by the study's ranking
(what `weights: run:` transfers). Tune itself keeps none.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from tune_hw.errors import UserError
from tune_hw.layout import (
    BEST_STATE_FILE,
    LATEST_STATE_FILE,
    MARKER_FILE,
    TRIAL_ROWS_FILE,
    trial_dir_name,
)
from tune_hw.metrics import SENTINEL_METRICS
from tune_hw.ranking import VALIDATION_METRICS, Ranking
from tune_hw.storage import ObjectPath, atomic_write, location
from tune_hw.training import flush_denormals, run_trial


class TrialStates:
    """A trial's two saved states in its directory of the run, each replaced atomically: the
    latest (retries and --resume continue from it) and its best epoch's by the study's ranking
    (what `weights: run:` transfers); and its rows, each added before Tune hears of it.
    The directory may be local or on object storage (`storage.location`).

    The rows file exists because the latest state runs ahead of Ray's result.json (Ray copies
    that on its sync period): after a crash, a trial resumed from its state would skip the
    epochs Ray had not copied yet, and the results would lose them.

    Tune itself keeps no checkpoints: for Tune to delete superseded ones it forces a snapshot
    of the whole experiment every few epochs, and each snapshot costs O(trials), so a search
    of 1,000 short trials spent most of its time snapshotting (benchmarks/, case snapshot).
    """

    def __init__(self, trial_dir: Path | ObjectPath, ranking: Ranking):
        self.trial_dir, self.ranking = trial_dir, ranking
        self.best: dict[str, Any] | None = None  # metrics of the best epoch saved so far
        self.rows: list[str] | None = None  # the rows file's lines, read once on first use

    def latest(self) -> dict[str, Any] | None:
        """The latest saved state, on the CPU whatever device saved it (the batch-order
        generator only takes a CPU state; load_state_dict moves the rest to the model's)."""
        path = self.trial_dir / LATEST_STATE_FILE
        if not path.is_file():
            return None
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu",
                           weights_only=True)
        self.best = state.pop("best", None)
        return state

    def append_row(self, metrics: dict[str, Any]) -> None:
        """Add one reported row to the trial's rows file, rewritten whole and atomically.

        Object storage cannot append to an object, so every store rewrites it (one code path;
        rows are ~1 KB, so even 1,000 epochs rewrite ~1 MB an epoch, beside the model's state).
        Earlier rows (a retry, --resume) are read once and kept.
        """
        path = self.trial_dir / TRIAL_ROWS_FILE
        if self.rows is None:
            self.rows = path.read_text(errors="replace").splitlines() if path.is_file() else []
        self.rows.append(json.dumps(metrics))
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{line}\n" for line in self.rows)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def keep_if_best(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        """Save `state` as the best when its epoch ranks above the best so far."""
        if self.ranking.best_epoch([metrics, self.best] if self.best else [metrics]) is metrics:
            self.best = {k: metrics[k] for k in ("epoch", "diverged", *VALIDATION_METRICS)}
            self._save(BEST_STATE_FILE, state)

    def keep_latest(self, metrics: dict[str, Any], state: dict[str, Any]) -> None:
        """Save `state` as the latest, with the row it was reported with (`row`)."""
        self._save(LATEST_STATE_FILE, {**state, "best": self.best, "row": metrics})

    def _save(self, name: str, state: dict[str, Any]) -> None:
        self.trial_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.trial_dir / name, lambda tmp: torch.save(state, tmp))


def ray_context() -> tuple[str, dict[str, Any]]:
    """The device Ray assigned this trial, and where it runs (node id, GPU ids)."""
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    return device, {"node_id": ray.get_runtime_context().get_node_id(),
                    "gpu_ids": ",".join(gpu_ids)}


def set_threads() -> None:
    """Torch threads follow the CPUs Ray gave the trial (oversubscription slows every trial),
    and compute with subnormals as zero (training.flush_denormals: set before the threads
    start, which inherit it)."""
    flush_denormals()
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def report_with_marker(metrics: dict[str, Any]) -> None:
    """Report with a marker checkpoint (a note, no state), once per trial: Tune treats a trial
    without a checkpoint as new on --resume and starts its result files afresh, which would
    lose the epochs already reported. The state itself lives in the trial's files."""
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, MARKER_FILE).write_text(f"the state is in {LATEST_STATE_FILE}\n")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


def tune_trainable(config: dict[str, Any], run_dir: str, ranking: Ranking) -> None:
    """The Ray Tune trainable: `run_trial` with tune.report and the trial's saved states,
    continuing from the latest one if there is one (a retry, a lost node, --resume).
    `run_dir` is a path or a URI string: the trial resolves it with the credentials of its
    own environment, so no secret travels in a pickle.

    A `UserError` (a configuration no retry can mend) ends the trial with one report of the
    sentinel metrics and its message, instead of an exception Tune would retry.
    """
    set_threads()
    device, context = ray_context()
    states = TrialStates(location(run_dir) / trial_dir_name(tune.get_context().get_trial_id()),
                         ranking)
    marked, reported = [tune.get_checkpoint() is not None], [False]

    def tell_tune(metrics: dict[str, Any]) -> None:
        if marked[0]:
            tune.report(metrics)
        else:
            report_with_marker(metrics)
            marked[0] = True
        reported[0] = True

    def report(metrics: dict[str, Any], trial_state: dict[str, Any]) -> None:
        states.keep_if_best(metrics, trial_state)  # before the report: Tune may stop us there
        states.append_row(metrics)
        tell_tune(metrics)
        states.keep_latest(metrics, trial_state)

    latest = states.latest()
    try:
        run_trial(config, report, latest, device, context)
    except UserError as exc:
        tell_tune({**SENTINEL_METRICS, **context, "error": f"UserError: {exc}"})
        return
    if not reported[0] and latest is not None and "row" in latest:
        # The state already held the last epoch (a crash came after it was saved, perhaps
        # before Ray heard of it): report that row again, as Tune ends a trial that reports
        # nothing with an error
        tell_tune(latest["row"])
