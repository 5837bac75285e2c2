"""A fused study's driver killed by SIGKILL resumes with no member lost or repeated (real Ray,
stopped by PID, as tests/test_reliability.py)."""

from __future__ import annotations

import os
import signal

import pandas as pd
import pytest
from conftest import run_cli
from test_reliability import (  # noqa: F401 (ray_tmp is a fixture)
    LONG_EPOCHS,
    SLOW_TRIALS,
    kill_a_worker_mid_run,
    kill_pids,
    last_rows,
    ray_pids_under,
    ray_tmp,
    reported_epochs,
    start_search,
    wait_for,
)

from tune_hw import ray_files


def group_epochs(run_dir) -> dict[str, list[int]]:
    """Each group's epochs as its rows file holds them."""
    return {path.parent.name.removeprefix("trial_"):
            [row["epoch"] for row in ray_files.read_json_lines(path)]
            for path in run_dir.glob("trial_*/rows.jsonl")}


# lr_batch's own search (Optuna, its groups proposed by a GroupSearcher restored from
# tuner.pkl) as well as random search (its groups a grid cut from the whole sample); later
# --set values win
OPTUNA = ["--set", "search.algorithm=optuna", "--set", "space.train.batch_size={choice: [16]}"]


# 6 configs in groups of at most 2, two trials at once (max_concurrent, whatever the CPUs):
# random cuts 3 groups from the whole sample; Optuna's last groups hold at most half of the
# configs not started (2, 2, 1, 1 in one search; a resume from an earlier save of the searcher
# may cut the rest otherwise)
@pytest.mark.parametrize("search, groups", [([], {3}), (OPTUNA, {3, 4, 5, 6})],
                         ids=["random", "optuna"])
def test_a_sigkilled_fused_search_resumes_every_member(tmp_path, ray_tmp, search,  # noqa: F811
                                                       groups):
    args = ["lr_batch", *SLOW_TRIALS, *search, "--set", "search.num_samples=6", "--fuse", "2",
            "--set", "search.max_concurrent=2", "--storage-path", str(tmp_path), "--name", "k1"]
    run_dir = tmp_path / "lr_batch" / "k1"
    proc = start_search(args, ray_tmp)

    def one_finished_one_started():  # finished in Ray's lagging copy: its state is saved
        done = {g for g, e in reported_epochs(run_dir).items() if e and e[-1] == 6}
        return done if done and len(group_epochs(run_dir)) >= 2 else None

    finished = wait_for(one_finished_one_started, 300, "a finished group", proc)
    before, written = reported_epochs(run_dir), group_epochs(run_dir)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_pids(ray_pids_under(ray_tmp))

    resumed = run_cli("tune_hw.search", *args, "--resume", env={"RAY_TMPDIR": ray_tmp})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert len(trials) == 6 and trials.trial_id.is_unique
    assert trials.group_id.nunique() in groups
    assert trials.groupby("group_id").size().max() <= 2
    assert set(trials.status) == {"completed"}
    after = reported_epochs(run_dir)
    for group_id in finished:  # a finished group trained no epoch again
        assert group_epochs(run_dir)[group_id] == written[group_id] == list(range(1, 7))
    for group_id, seen in after.items():  # Ray's copy: at most the last epoch re-reported
        assert seen.count(1) == 1  # no group restarted from scratch
        new = seen[len(before.get(group_id, [])):]
        assert new == sorted(new)
    for trial_id in trials.trial_id:  # every member: epochs 1..6, no gap, no repeat
        assert epochs[epochs.trial_id == trial_id].epoch.tolist() == list(range(1, 7))


def test_a_killed_group_worker_is_retried_and_every_member_continues(tmp_path, ray_tmp):  # noqa: F811
    # one group of two members (one trial slot's share), long enough to be caught mid-run
    args = ["lr_batch", *SLOW_TRIALS, "--set", "search.num_samples=2", "--fuse", "2",
            "--set", "search.max_concurrent=1", "--max-failures", "2",
            "--set", f"train.epochs={LONG_EPOCHS}", "--storage-path", str(tmp_path),
            "--name", "w1"]
    run_dir = tmp_path / "lr_batch" / "w1"
    row = kill_a_worker_mid_run(run_dir, start_search(args, ray_tmp))  # the group's worker
    trials = pd.read_parquet(run_dir / "trials.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert len(trials) == 2 and trials.group_id.nunique() == 1  # both members in the group
    assert set(trials.status) == {"completed"}
    assert trials.final_epoch.tolist() == [LONG_EPOCHS] * 2
    for trial_id in trials.trial_id:  # every member: each epoch once, none lost
        assert epochs[epochs.trial_id == trial_id].epoch.tolist() == \
            list(range(1, LONG_EPOCHS + 1))
    # its time counts the epochs before the retry too (Ray's own clock restarts)
    assert (trials.wall_s.to_numpy() >= epochs.groupby("trial_id").epoch_s.sum()
            .loc[trials.trial_id].to_numpy()).all()
    [seen] = reported_epochs(run_dir).values()  # Ray's copy, retries included
    assert seen.count(1) == 1 and seen[-1] == LONG_EPOCHS  # never again from epoch 1
    [last] = last_rows(run_dir).values()
    assert last["pid"] != row["pid"]  # a new worker finished the group
