"""Reliability against real Ray processes: a killed driver resumes, a killed worker or a
lost node costs only the epochs since the last checkpoint, failing trials end `error`."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import REPO, run_cli

from tune_hw import ray_files

LONG_EPOCHS = 20  # trials a test catches mid-run through Ray's (lagging) copy of result.json
SLOW_TRIALS = [  # trials long enough (about a second an epoch) to be interrupted mid-way,
    # unfused (ray_trial.tune_trainable): test_fused_reliability.py and test_storage_runs.py
    # kill fused searches (a later --fuse wins)
    "--fuse", "off", "--quick", "--set", "dataset.n_train=12000", "--set", "space.train.batch_size={grid: [16]}",
    "--set", "space.train.lr={loguniform: [0.001, 0.01]}", "--set", "search.algorithm=random",
    "--set", "train.epochs=6", "--set", "scheduler.name=fifo",
]


def reported_epochs(run_dir: Path) -> dict[str, list[int]]:
    """Every trial's epochs in the order Ray's result.json received them (retries included)."""
    out = {}
    for path in run_dir.glob("trial_*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name.removeprefix("trial_")] = [row["epoch"] for row in lines]
    return out


def written_epochs(run_dir: Path) -> dict[str, list[int]]:
    """Every trial's epochs as the trial wrote them to its rows file (no lag, unlike Ray's)."""
    return {path.parent.name.removeprefix("trial_"):
            [row["epoch"] for row in ray_files.read_json_lines(path)] for path in run_dir.glob("trial_*/rows.jsonl")}


def last_rows(run_dir: Path) -> dict[str, dict]:
    rows = {}
    for path in run_dir.glob("trial_*/result.json"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            rows[path.parent.name.removeprefix("trial_")] = json.loads(lines[-1])
    return rows


def wait_for(condition, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the search ended before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def ray_pids_under(temp_dir: str) -> list[int]:
    """PIDs of the Ray processes whose command line names our own temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if temp_dir in cmdline:
                pids.append(int(entry.name))
    return pids


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_tmp():
    """A short private RAY_TMPDIR; whatever Ray left under it is stopped by PID afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield temp_dir
    kill_pids(ray_pids_under(temp_dir))


def start_search(args: list[str], ray_tmp: str, **env) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, **env}
    return subprocess.Popen([sys.executable, "-m", "tune_hw.search", *args], cwd=REPO,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_sigkilled_search_resumes_without_losing_or_repeating_trials(tmp_path, ray_tmp):
    args = ["lr_batch", *SLOW_TRIALS, "--set", "search.num_samples=5",
            "--storage-path", str(tmp_path), "--name", "k1"]
    run_dir = tmp_path / "lr_batch" / "k1"
    proc = start_search(args, ray_tmp)

    def two_finished():
        done = {t for t, e in reported_epochs(run_dir).items() if e and e[-1] == 6}
        return done if len(done) >= 2 else None

    finished = wait_for(two_finished, 240, "two finished trials", proc)
    before = reported_epochs(run_dir)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every process in its session
    proc.wait()
    kill_pids(ray_pids_under(ray_tmp))  # Ray daemons that left the session

    resumed = run_cli("tune_hw.search", *args, "--resume", env={"RAY_TMPDIR": ray_tmp})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert len(trials) == 5 and trials.trial_id.is_unique
    assert set(trials.status) <= {"completed", "diverged"}
    # the resumed display counts the trials of the first run too (it reads their rows)
    progress = [line for line in resumed.stdout.splitlines() if " trials 5/5 done" in line]
    assert progress and "error" not in progress[-1], resumed.stdout[-3000:]
    after = reported_epochs(run_dir)
    for trial_id in finished:  # finished trials were not run again
        assert after[trial_id] == before[trial_id]
    for trial_id, epochs_seen in after.items():
        rows = epochs[epochs.trial_id == trial_id].epoch.tolist()
        assert rows == list(range(1, len(rows) + 1))  # no gap, no repeat in the parquet
        assert epochs_seen.count(1) == 1  # nobody restarted from scratch
        new = epochs_seen[len(before.get(trial_id, [])):]
        assert new == sorted(new)  # epochs of resumed trials never go backwards
    # optuna.db ends as the parquet files: each trial once, its state and every epoch's value
    study = optuna.load_study(study_name="lr_batch/k1", storage=f"sqlite:///{run_dir / 'optuna.db'}")
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert sorted(by_id) == sorted(trials.trial_id) and len(study.trials) == 5
    for trial in trials.itertuples():
        healthy = epochs[(epochs.trial_id == trial.trial_id) & ~epochs.diverged]
        assert by_id[trial.trial_id].state.name == {"completed": "COMPLETE", "diverged": "FAIL"}[trial.status]
        assert by_id[trial.trial_id].intermediate_values == pytest.approx(dict(zip(healthy.epoch, healthy.val_acc, strict=True)))

    env = {"RAY_TMPDIR": ray_tmp}
    changed = run_cli("tune_hw.search", *args, "--set", "train.epochs=7", "--resume", env=env)
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert "was made with a different study (differs in ['train'])" in changed.stderr
    again = run_cli("tune_hw.search", *args, env=env)
    assert again.returncode == 2 and "run 'k1' already exists" in again.stderr


def test_resume_errors_are_one_line(tmp_path, cli):
    proc = cli("tune_hw.search", "lr_batch", "--quick", "--storage-path", str(tmp_path),
               "--name", "nope", "--resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nothing to resume: no run 'nope'" in proc.stderr


def kill_a_worker_mid_run(run_dir: Path, proc) -> dict:
    """SIGKILL a trial's worker process once Ray's copy of its results is past epoch 3 and
    short of the last, and wait for the search to succeed; the row it was killed after."""
    row = wait_for(lambda: next((r for r in last_rows(run_dir).values()
                                 if 3 <= r["epoch"] < LONG_EPOCHS), None), 240, "epoch 3", proc)
    os.kill(row["pid"], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return row


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(tmp_path, ray_tmp):
    # Long enough to be caught mid-run: Ray copies result.json to the storage path on its
    # snapshot schedule (about every 10 s), so what this test reads lags the trial
    args = ["lr_batch", *SLOW_TRIALS, "--set", "search.num_samples=1", "--max-failures", "2",
            "--set", f"train.epochs={LONG_EPOCHS}", "--storage-path", str(tmp_path),
            "--name", "w1"]
    run_dir = tmp_path / "lr_batch" / "w1"
    kill_a_worker_mid_run(run_dir, start_search(args, ray_tmp))
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert trials.status.tolist() == ["completed"]
    assert trials.final_epoch.tolist() == [LONG_EPOCHS]
    seen = next(iter(reported_epochs(run_dir).values()))
    assert seen.count(1) == 1 and seen[-1] == LONG_EPOCHS
    restart = next(i for i in range(1, len(seen)) if seen[i] <= seen[i - 1]) \
        if seen != sorted(set(seen)) else None
    # either the kill landed between epochs (no repeat) or the retry began at the epoch after
    # the last checkpoint: never from epoch 1
    assert restart is None or seen[restart] >= 2


def test_ctrl_c_saves_state_writes_parquet_and_prints_the_resume_command(tmp_path, ray_tmp):
    args = ["lr_batch", *SLOW_TRIALS, "--set", "search.num_samples=3",
            "--storage-path", str(tmp_path), "--name", "i1"]
    run_dir = tmp_path / "lr_batch" / "i1"
    proc = start_search(args, ray_tmp)
    # Ray's result.json lags by its sync period, in which the other trials could finish too
    wait_for(lambda: any(e and e[-1] == 6 for e in written_epochs(run_dir).values()), 240,
             "a finished trial", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    hint = next(line for line in err.splitlines() if line.startswith("continue it with: "))
    partial = pd.read_parquet(run_dir / "trials.parquet")
    assert "completed" in set(partial.status) and len(partial) <= 3
    # the display counts as done only what finished: Tune also ends the trials it stops at
    # the interrupt (the final line showed them as early_stopped and error)
    lines = re.findall(r"trials (\d+)/3 done \| \d+ running, \d+ pending( \|[^|\n]*)?", out)
    assert lines, out[-2000:]
    for done, counts in lines:  # FIFO, no failure: nothing is early-stopped or an error
        assert int(done) <= (partial.status == "completed").sum(), out[-2000:]
        assert "early_stopped" not in counts and "error" not in counts, out[-2000:]

    command = shlex.split(hint.removeprefix("continue it with: "))
    assert command[:3] == ["python", "-m", "tune_hw.search"] and command[-1] == "--resume"
    command = command[2:]
    resumed = run_cli(*command, env={"RAY_TMPDIR": ray_tmp})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 3 and set(trials.status) == {"completed"}
    finished_before = set(partial.trial_id[partial.status == "completed"])
    assert finished_before <= set(trials.trial_id)


def always_failing_trainable(config):
    raise RuntimeError(f"cannot train lr={config['train.lr']:.3g}")


def test_a_trial_that_keeps_failing_ends_error_and_the_search_finishes(tmp_path, ray_tmp):
    import ray
    from ray import cloudpickle  # Ray's vendored copy is the one that pickles trainables

    from tune_hw import outcome, studies, tuner
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    study = studies.load_study("lr_batch", quick=True, overrides={  # an unfused trainable
        "search.num_samples": 2, "failure.max_failures": 1, "search.fuse": "off"})
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp)
    try:
        tuner.build_tuner(study, tmp_path, "f1", always_failing_trainable).fit()
        run_dir = tmp_path / "lr_batch" / "f1"
        outcome.write_results(run_dir, {"name": "lr_batch"}, study)
    finally:
        ray.shutdown()
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert trials.status.tolist() == ["error", "error"]
    assert all(e.startswith("RuntimeError: cannot train lr=") for e in trials.error)


def test_losing_a_worker_node_costs_only_the_epochs_since_its_checkpoint(tmp_path, ray_tmp):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "temp_dir": ray_tmp, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    try:
        args = ["lr_batch", *SLOW_TRIALS, "--set", "search.num_samples=2",
                "--set", f"train.epochs={LONG_EPOCHS}", "--max-failures", "3",
                "--address", cluster.address,
                "--storage-path", str(tmp_path), "--name", "n1"]
        run_dir = tmp_path / "lr_batch" / "n1"
        # one machine, so the storage path really is shared between the test's nodes
        proc = start_search(args, ray_tmp, TUNE_HW_SHARED_STORAGE="1")
        row = wait_for(lambda: next((r for r in last_rows(run_dir).values()
                                     if 3 <= r["epoch"] < LONG_EPOCHS), None), 240, "epoch 3",
                       proc)
        victim = next(node for node in workers if node.node_id == row["node_id"])
        survivor = next(node for node in workers if node is not victim)
        cluster.remove_node(victim, allow_graceful=False)
        out, err = proc.communicate(timeout=300)
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, err[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet").set_index("trial_id")
    assert trials.status.tolist() == ["completed", "completed"]
    assert (trials.final_epoch == LONG_EPOCHS).all()
    lost = row["trial_id"]
    assert trials.loc[lost, "node_id"] == survivor.node_id  # it finished on the other node
    seen = reported_epochs(run_dir)[lost]
    assert seen.count(1) == 1 and seen[-1] == LONG_EPOCHS  # continued, not from epoch 1
    assert len(seen) - LONG_EPOCHS <= 2  # at most the epochs since the last save were redone


def failing_tune_trainable(config, run_dir, ranking):
    raise RuntimeError(f"out of memory at lr={config['train.lr']:.3g}")


def test_a_search_in_which_every_trial_failed_exits_1_with_one_line(tmp_path, ray_tmp,
                                                                    monkeypatch, capfd):
    import ray
    from ray import cloudpickle

    from tune_hw import ray_trial, search
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(ray_trial, "tune_trainable", failing_tune_trainable)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp)
    try:
        code = search.main(["lr_batch", "--quick", "--num-samples", "2", "--max-failures", "0",
                            "--fuse", "off", "--storage-path", str(tmp_path),
                            "--name", "all_failed"])
    finally:
        ray.shutdown()
    err = capfd.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 1 and len(errors) == 1, errors
    # and one line per failed trial while it ran, its traceback left to driver.log
    failed = [line for line in err.splitlines() if re.fullmatch(
        r"trial \w+ failed: .*RuntimeError: out of memory at lr=\S+ \(the traceback is in "
        r"driver.log\)", line)]
    assert len(failed) == 2, err[-3000:]
    assert errors[0].startswith("error: no trial produced a result: 2 of 2 trials failed; "
                                "the first error: RuntimeError: out of memory at lr=")
    assert pd.read_parquet(tmp_path / "lr_batch" / "all_failed" / "trials.parquet").status \
        .tolist() == ["error", "error"]


def test_a_configuration_error_inside_a_trial_is_not_retried(tmp_path, ray_tmp):
    import ray

    from tune_hw import outcome, studies, tuner
    study = studies.load_study("lr_batch", quick=True, overrides={
        "search.num_samples": 2, "failure.max_failures": 2})
    study.train["optimizer"] = "adamx"  # what validation refuses, met inside the trials
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp)
    try:
        tuner.build_tuner(study, tmp_path, "config_error").fit()
        run_dir = tmp_path / "lr_batch" / "config_error"
        code = outcome.write_results(run_dir, study.resolved(), study)
    finally:
        ray.shutdown()
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert code == 1 and trials.status.tolist() == ["error", "error"]
    assert all(e.startswith("UserError: unknown optimizer 'adamx'") for e in trials.error)
    for path in run_dir.glob("trial_*/result.json"):  # one attempt each, not 1 + 2 retries
        assert len(path.read_text().splitlines()) == 1
    assert not list(run_dir.glob("trial_*/error.txt"))


def test_a_trial_whose_state_ran_ahead_of_ray_resumes_with_every_epoch(tmp_path, ray_tmp):
    """What a SIGKILL leaves when it falls in Ray's sync lag, made by hand: the trial's state
    holds its last epoch, but Ray's experiment state says running and its result.json has
    only the first epoch. The resume re-reports the state's last row (a trial that trains
    nothing must still report) and the trial's rows file gives back the epochs Ray lost."""
    args = ["lr_batch", "--quick", "--set", "search.num_samples=1", "--set",
            "search.algorithm=random", "--set", "train.epochs=3", "--set", "scheduler.name=fifo",
            "--storage-path", str(tmp_path), "--name", "lag"]
    env = {"RAY_TMPDIR": ray_tmp}
    assert run_cli("tune_hw.search", *args, env=env).returncode == 0
    run_dir = tmp_path / "lr_batch" / "lag"
    before = pd.read_parquet(run_dir / "epochs.parquet")
    (result,) = run_dir.glob("trial_*/result.json")
    result.write_text(result.read_text().splitlines()[0] + "\n")  # Ray heard of epoch 1 only
    state_path = max(run_dir.glob("experiment_state-*.json"))
    state = json.loads(state_path.read_text())
    trial, runtime = state["trial_data"][0]
    state["trial_data"][0] = [json.dumps({**json.loads(trial), "status": "RUNNING"}), runtime]
    state_path.write_text(json.dumps(state))
    for name in ("trials.parquet", "epochs.parquet", "grads.parquet"):
        (run_dir / name).unlink(missing_ok=True)  # the crash came before the driver wrote them

    resumed = run_cli("tune_hw.search", *args, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert trials.status.tolist() == ["completed"] and epochs.epoch.tolist() == [1, 2, 3]
    assert epochs.val_acc.tolist() == pytest.approx(before.val_acc.tolist())
