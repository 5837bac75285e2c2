"""Runs that live elsewhere, end to end with real Ray: a fused search on a bucket (moto's S3
server on 127.0.0.1, through pyarrow's real S3 filesystem) killed and resumed, then reported; a finished
run copied to a new directory, its original deleted, reported and grown there from 4 trials
to 8."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile

import pandas as pd
import pytest
from conftest import S3_SECRET, run_cli
from test_reliability import SLOW_TRIALS, kill_pids, ray_pids_under, start_search, wait_for

from tune_hw import layout, ray_files, report, results
from tune_hw.storage import location


@pytest.fixture
def ray_tmp():
    """A short private RAY_TMPDIR; whatever Ray left under it is stopped by PID afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield temp_dir
    kill_pids(ray_pids_under(temp_dir))


def rows_by_trial(run_dir) -> dict[str, list[int]]:
    """Each trial's epochs as it wrote them to its rows file (local or on the bucket)."""
    return {path.parent.name.removeprefix(layout.TRIAL_DIR_PREFIX):
            [r["epoch"] for r in ray_files.read_json_lines(path)]
            for path in run_dir.glob(f"trial_*/{layout.TRIAL_ROWS_FILE}")}


def test_a_search_on_a_bucket_resumes_after_sigkill_and_reports(s3_bucket, ray_tmp, tmp_path):
    args = ["lr_batch", *SLOW_TRIALS, "--set", "search.num_samples=3",
            "--set", "dataset.n_train=6000", "--set", "train.epochs=4", "--fuse", "auto",
            "--storage-path", f"{s3_bucket}/runs", "--name", "k1"]  # fused: the default
    run_dir = location(f"{s3_bucket}/runs/lr_batch/k1")
    proc = start_search(args, ray_tmp)

    def one_finished():
        done = {t for t, e in rows_by_trial(run_dir).items() if e and e[-1] == 4}
        return done or None

    finished = wait_for(one_finished, 300, "a finished trial", proc)
    before = {t: (run_dir / f"trial_{t}" / layout.TRIAL_ROWS_FILE).read_bytes()
              for t in finished}
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every process in its session
    proc.wait()
    kill_pids(ray_pids_under(ray_tmp))

    resumed = run_cli("tune_hw.search", *args, "--resume", env={"RAY_TMPDIR": ray_tmp})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    loaded = results.load_run(str(run_dir))  # every results file is on the bucket
    trials, epochs = loaded.trials, loaded.epochs
    assert len(trials) == 3 and trials.trial_id.is_unique
    assert set(trials.status) <= {"completed", "diverged"}
    for trial_id in finished:  # finished trials did not train an earlier epoch again
        after = (run_dir / f"trial_{trial_id}" / layout.TRIAL_ROWS_FILE).read_bytes()
        assert after.startswith(before[trial_id])
        # a kill between a group's last report and its state save re-reports that last epoch
        again = [json.loads(line)["epoch"] for line in after[len(before[trial_id]):].splitlines()]
        assert set(again) <= {4}
    members = trials.groupby("group_id").trial_id.apply(list)
    assert len(members) == 2  # 3 members in a group of 2 and one of 1 (2 trial slots)
    for group_id, written in rows_by_trial(run_dir).items():
        # an epoch may run twice when the kill fell between its row and its saved state
        # (the group continues from that state), but epochs never go backwards further
        assert written == sorted(written)
        for trial_id in members[group_id]:
            rows = epochs[epochs.trial_id == trial_id].epoch.tolist()
            assert rows == list(range(1, len(rows) + 1))  # no gap, no repeat in the parquet
            assert max(written) == rows[-1]
    for group_id, trial_ids in members.items():
        names = {p.name for p in (run_dir / f"trial_{group_id}").iterdir()}
        # Ray's own result.json is not asked for: Ray uploads it on its sync period, so a
        # group that finished just before the kill may never have it on the bucket (CI saw
        # this); its rows.jsonl, written before each report, is what the tables above read
        assert {"latest.pt", "rows.jsonl"} <= names
        assert all(layout.best_state_path(run_dir, t, group_id).is_file() for t in trial_ids)
    assert {"trials.parquet", "epochs.parquet", "study.yaml", "tuner.pkl"} <= \
        {p.name for p in run_dir.iterdir()}
    for path in [*run_dir.glob("*.pkl"), *run_dir.glob("*.json")]:  # Ray's saved state
        assert S3_SECRET.encode() not in path.read_bytes(), path  # no pickled credentials

    out = report.build_report(str(run_dir), tmp_path / "report", n_boot=200)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == 3 and summary["run_name"] == "k1"


FAST_OPTUNA = ["lr_batch", "--quick", "--set", "scheduler.name=fifo",
               "--set", "space.train.batch_size={choice: [64, 128]}"]


def test_a_moved_run_reports_and_grows_from_4_to_8_trials(tmp_path, ray_tmp):
    env = {"RAY_TMPDIR": ray_tmp}
    first, moved = tmp_path / "a", tmp_path / "b"
    made = run_cli("tune_hw.search", *FAST_OPTUNA, "--storage-path", str(first), "--name", "g",
                   env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    shutil.copytree(first, moved)  # e.g. `ray rsync-down`, or an archive unpacked elsewhere
    shutil.rmtree(first)
    run_dir = moved / "lr_batch" / "g"
    old_trials = pd.read_parquet(run_dir / "trials.parquet")
    old_epochs = pd.read_parquet(run_dir / "epochs.parquet")

    out = report.build_report(run_dir, tmp_path / "report", n_boot=200)
    assert json.loads((out / "summary.json").read_text())["n_trials"] == 4

    grown = run_cli("tune_hw.search", *FAST_OPTUNA, "--storage-path", str(moved), "--name", "g",
                    "--num-samples", "8", "--resume", env=env)
    assert grown.returncode == 0, grown.stderr[-3000:]
    assert not first.exists()  # nothing went back to the old place
    trials = pd.read_parquet(run_dir / "trials.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert len(trials) == 8 and trials.trial_id.is_unique
    assert set(trials.status) <= {"completed", "diverged"}
    kept = trials.set_index("trial_id").loc[old_trials.trial_id].reset_index()
    pd.testing.assert_frame_equal(kept[old_trials.columns], old_trials)  # unchanged rows
    def by_trial(frame):  # the trials' order in Ray's state may change
        return frame.sort_values(["trial_id", "epoch"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(by_trial(epochs[epochs.trial_id.isin(old_trials.trial_id)]),
                                  by_trial(old_epochs))
    # Optuna kept its state: a fresh searcher of the same seed would suggest trials 1-4 again
    configs = trials[["config/train.lr", "config/train.batch_size"]].apply(tuple, axis=1)
    new = configs[~trials.trial_id.isin(old_trials.trial_id)]
    assert not set(new) & set(configs[trials.trial_id.isin(old_trials.trial_id)])
    study = (run_dir / "study.yaml").read_text()
    assert "num_samples: 8" in study

    again = run_cli("tune_hw.search", *FAST_OPTUNA, "--storage-path", str(moved), "--name", "g",
                    "--resume", env=env)  # 4 < the run's 8: a run never shrinks
    assert again.returncode == 2 and "--num-samples 8 or more" in again.stderr


def test_a_resume_may_raise_num_samples_only():
    from tune_hw import run_checks
    from tune_hw.errors import UserError

    stored = {"search": {"num_samples": 8, "metric": "val_acc"}, "train": {"epochs": 2}}
    run_checks.check_growth(location("/r/g"), stored, {**stored, "search": {
        "num_samples": 12, "metric": "val_acc"}})  # grows
    with pytest.raises(UserError, match="search.num_samples 8: --resume it with --num-samples 8"):
        run_checks.check_growth(location("/r/g"), stored, {**stored, "search": {
            "num_samples": 4, "metric": "val_acc"}})
    for algorithm in ("random", "grid", "optuna"):  # fused runs grow too (space_growth)
        fused = {**stored, "search": {"num_samples": 8, "metric": "val_acc", "fuse": "auto",
                                      "algorithm": algorithm}}
        run_checks.check_growth(location("/r/g"), fused,
                                {**fused, "search": {**fused["search"], "num_samples": 12}})
    # only num_samples is set aside: any other change still differs
    assert run_checks._without_growth(stored) == {"search": {"metric": "val_acc"},
                                                  "train": {"epochs": 2}}


def test_a_resume_that_differs_in_fuse_says_which_fuse_to_add():
    from tune_hw import run_checks

    stored = {"search": {"num_samples": 8, "fuse": "off"}}  # made before auto was the default
    assert run_checks._fuse_hint(stored, {"search": {"num_samples": 8, "fuse": "auto"}}) == \
        "; its search.fuse was 'off', now 'auto': add --fuse off"
    assert run_checks._fuse_hint(stored, stored) == ""
