"""Ray's files of a run, read as plain text: a run directory may come from anyone, and nothing
in it is ever unpickled here. No Ray is imported either: the report reads a running search.

The experiment state is parsed as JSON (its embedded pickles stay unread hex); each trial
directory gives its config (params.json), its reports (result.json, completed by the trial's
own rows.jsonl) and its error (error.txt).
`read_run` is a run as it stands: its parquet files, or Ray's text files while it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tune_hw import layout
from tune_hw.errors import UserError
from tune_hw.ranking import Ranking
from tune_hw.results import Run, TrialRecord, build_tables, load_run, read_study
from tune_hw.storage import ObjectPath, check_reachable

RAY_ENDED = ("TERMINATED", "ERROR")  # Ray's statuses of a trial that will not run again
# a group's config and result: {"group": {"members": [...]}}, {"members": {member id: row}}
GROUP_KEY, MEMBERS_KEY = "group", "members"
# in a member's row: running, or why it left its group in this epoch
MEMBER_STATUS_KEY = "member_status"
MEMBER_ENDED = ("completed", "early_stopped", "diverged")


def read_experiment_state(run_dir: Path) -> list[dict[str, Any]] | None:
    """The trials of Ray's newest experiment state, parsed as plain JSON (its pickled fields
    stay unread hex), checked for what a restore needs; None before Ray has written one."""
    path = layout.newest(run_dir, layout.EXPERIMENT_STATE)
    if path is None:
        return None
    try:
        state = json.loads(path.read_bytes())
        entries = [[json.loads(part) for part in entry] for entry in state["trial_data"]]
        trials = [trial for trial, _ in entries]
        problem = None if isinstance(state["runner_data"], dict) and all(
            isinstance(t, dict) and isinstance(t.get("trial_id"), str) and "status" in t
            for t in trials) else "a trial entry lacks its id or status"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if problem:
        raise UserError(f"Ray's experiment state {path} is damaged ({problem}): nothing was "
                        "read from it or changed; if the search is still running, try again "
                        "in a moment, else restore the file from a backup or start a new "
                        "--name")
    return trials


def read_ray_trials(run_dir: Path) -> list[TrialRecord]:
    """Every tune_hw trial of a run from Ray's text files: id, status and directory from the
    experiment state, config from params.json, rows from result.json, error from error.txt;
    a group's Tune trial gives one record per member (`member_rows`)."""
    records, seen = [], set()
    for state in read_experiment_state(run_dir) or []:
        trial_dir = _state_trial_dir(run_dir, state.get("relative_logdir"))
        seen.add(trial_dir)
        records.extend(_trial_records(state["trial_id"], trial_dir, state["status"],
                                      state.get("config")))
    for trial_dir in layout.trial_dirs(run_dir):  # started after Ray last saved its state
        if trial_dir not in seen:
            rows = read_result_rows(trial_dir)
            trial_id = rows[0].get("trial_id") if rows else None
            trial_id = trial_id or trial_dir.name.removeprefix(layout.TRIAL_DIR_PREFIX)
            records.extend(_trial_records(str(trial_id), trial_dir, None, None))
    return records


def read_result_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """Tune's result.json: one JSON object per report (a line cut short by a crash is skipped)."""
    return read_json_lines(trial_dir / layout.RESULT_FILE)


def trial_rows(trial_dir: Path) -> list[dict[str, Any]]:
    """A trial's reports: Ray's rows, and for each epoch Ray never received (its result.json
    lags the trial, so a crash loses the newest) the row from the trial's own rows file;
    in epoch order. Where both hold an epoch, Ray's row wins (it adds Ray's columns, such as
    time_total_s); a retried epoch keeps its latest report. Rows without an epoch (a reported
    configuration error) stay last."""
    ray_rows = read_result_rows(trial_dir)
    by_epoch = {_epoch(r): r for r in read_json_lines(trial_dir / layout.TRIAL_ROWS_FILE)}
    by_epoch.update((_epoch(r), r) for r in ray_rows)  # Ray's row carries its own columns
    by_epoch.pop(None, None)
    return [by_epoch[e] for e in sorted(by_epoch)] + [r for r in ray_rows if _epoch(r) is None]


def _epoch(row: dict[str, Any]) -> int | None:
    epoch = row.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line (a line cut short by a crash is skipped)."""
    rows = []
    for line in (path.read_text(errors="replace").splitlines() if path.is_file() else []):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def member_rows(trial_id: str, config: dict[str, Any], result: dict[str, Any]
                ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """THE expansion of one reported result into tune_hw trials: (trial id, flat config, row)
    for each. Every reader of reports (the parquet files, the callbacks) goes through it.

    An ordinary Tune trial is one tune_hw trial. A group's (config {"group": {"members":
    [flat configs]}}) result carries each live member's row under "members"; a member's row
    gets the group's own columns (Ray's time_total_s, ...) beneath its own, and a member that
    left earlier is absent. A group result without "members" (a configuration error, or {}
    for a group that has not reported) stands for every member.
    """
    group = config.get(GROUP_KEY) if isinstance(config, dict) else None
    if not isinstance(group, dict):
        return [(trial_id, flatten_config(config), result)]
    reported = result.get(MEMBERS_KEY)
    shared = {k: v for k, v in result.items() if k not in (MEMBERS_KEY, "config")}
    out = []
    for k, member_config in enumerate(group.get(MEMBERS_KEY) or []):
        member = member_id(trial_id, k)
        if not isinstance(reported, dict):
            out.append((member, flatten_config(member_config), shared))
        elif isinstance(reported.get(member), dict):
            out.append((member, flatten_config(member_config), {**shared, **reported[member]}))
    return out


def member_id(group_id: str, k: int) -> str:
    """The trial id of a group's member k: stable, as Tune keeps a trial's id on --resume."""
    return f"{group_id}-m{k:02d}"


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """A whole searched section (a mapping) spreads into its dotted keys."""
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for section, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
    return flat


def read_run(run_dir: Path | ObjectPath) -> Run:
    """A run's tables: its parquet files, or Ray's text files while the search has written
    study.yaml but no trials.parquet yet (it is still running)."""
    if isinstance(run_dir, ObjectPath):
        check_reachable(run_dir, "run")
    if not run_dir.exists():
        raise UserError(f"{run_dir} does not exist: pass a run directory such as "
                        "runs/<study>/<run_name>")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory: pass the directory that "
                        f"holds {layout.TRIALS_FILE}, e.g. runs/<study>/<run_name>")
    if (run_dir / layout.TRIALS_FILE).is_file() or not (run_dir / layout.STUDY_FILE).is_file():
        return load_run(run_dir)  # its own UserError when this is not a run at all
    return live_run(run_dir)


def live_run(run_dir: Path) -> Run:
    """Read a search that has not written its parquet files yet from Ray's text files."""
    records = read_ray_trials(run_dir)
    if not records:
        raise UserError(f"{run_dir} has no trial results yet (the search has only just "
                        "started): run the report again once a trial has reported")
    study = read_study(run_dir)
    trials, epochs, grads = build_tables(records, Ranking.of(study))
    return Run(run_dir, trials, epochs, grads, study)


def _trial_records(trial_id: str, trial_dir: Path | None, status: str | None,
                   state_config: Any) -> list[TrialRecord]:
    """The tune_hw trials of one Tune trial (several for a group), each with its own rows."""
    params = _json_file(trial_dir / layout.PARAMS_FILE) if trial_dir else None
    config = params if isinstance(params, dict) else state_config
    config = config if isinstance(config, dict) else {}
    error = None
    if status == "ERROR":
        lines = _text_lines(trial_dir / layout.ERROR_FILE) if trial_dir else []
        error = lines[-1] if lines else "trial failed (no error text stored)"
    records = {member: TrialRecord(trial_id=member, config=flat, rows=[], error=error,
                                   ended=status in RAY_ENDED, group_id=trial_id)
               for member, flat, _ in member_rows(trial_id, config, {})}
    for result in trial_rows(trial_dir) if trial_dir else []:
        for member, _, row in member_rows(trial_id, config, result):
            records[member].rows.append(row)
    for record in records.values():  # a member that left its group ended before any error
        if (record.rows[-1] if record.rows else {}).get(MEMBER_STATUS_KEY) in MEMBER_ENDED:
            record.ended, record.error = True, None
    return list(records.values())


def _state_trial_dir(run_dir: Path, name: Any) -> Path | None:
    """The trial's directory named in the state, only when it is a directory of this run."""
    try:
        path = run_dir / layout.check_name(name, "trial directory")
    except (UserError, TypeError):
        return None
    return path if path.is_dir() else None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _text_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
