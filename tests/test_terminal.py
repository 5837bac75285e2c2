"""The terminal while a search runs: Ray's output in driver.log, tune_hw's lines on the real
terminal; the progress display in place under a pseudo-terminal; --verbose as Ray prints."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import REPO, run_cli

from tune_hw import layout, terminal

QUICK = ["lr_batch", "--quick", "--set", "train.batch_size=64", "--set", "dataset.n_train=500"]


SCENARIO = """
import os, subprocess, sys
from pathlib import Path
from tune_hw import terminal

run_dir = Path(sys.argv[1])
with terminal.run_log(run_dir) as settle:
    if sys.argv[2] == "fail":
        print("ray said something before a check failed")
        raise SystemExit(2)
    settle()
    os.write(1, b"C-level stdout\\n")
    print("python stdout")
    print("python stderr", file=sys.stderr)
    sys.stdout.flush()
    subprocess.run(["sh", "-c", "echo child out; echo child err >&2"], check=True)
    terminal.say("ours on stdout")
    terminal.warn("ours on stderr")
print("after")
"""


def run_scenario(run_dir: Path, how: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCENARIO, str(run_dir), how], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120)


def test_run_log_sends_fds_1_and_2_to_the_log_and_ours_to_the_terminal(tmp_path):
    run_dir = tmp_path / "study" / "r1"
    run_dir.mkdir(parents=True)  # a resume: the log goes straight into the run
    proc = run_scenario(run_dir, "ok")
    assert (proc.stdout, proc.stderr) == ("ours on stdout\nafter\n", "ours on stderr\n")
    lines = ["C-level stdout", "python stdout", "python stderr", "child out", "child err"]
    assert (run_dir / layout.DRIVER_LOG).read_text().splitlines() == lines
    run_scenario(run_dir, "ok")  # a second resume appends
    assert (run_dir / layout.DRIVER_LOG).read_text().splitlines() == lines * 2


def test_run_log_of_a_new_run_moves_in_once_the_run_exists(tmp_path):
    run_dir = tmp_path / "study" / "r1"
    with terminal.run_log(run_dir) as settle:
        os.write(1, b"before the run directory\n")
        assert [p.name for p in run_dir.parent.iterdir()] == [".r1.driver.log"]
        run_dir.mkdir()
        settle()
        os.write(2, b"after\n")
    assert (run_dir / layout.DRIVER_LOG).read_text() == "before the run directory\nafter\n"
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["r1"]


def test_run_log_of_a_run_that_never_started_leaves_nothing(tmp_path):
    proc = run_scenario(tmp_path / "runs" / "study" / "r1", "fail")
    assert proc.returncode == 2 and proc.stdout == ""
    assert list(tmp_path.iterdir()) == []  # neither the log nor the directories it needed


def test_restore_replaces_the_callbacks_and_verbosity_pickled_in_tuner_pkl(tmp_path):
    # Tuner.restore takes no RunConfig: restore_tuner sets them on Ray's private
    # _local_tuner; this pins that Ray still restores them from tuner.pkl and that it works
    import ray

    from tune_hw import studies

    study = studies.load_study("lr_batch", quick=True)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=ray_tmp)  # the fused run's board
    try:
        _restore_and_check(study, tmp_path)
    finally:
        ray.shutdown()


def _restore_and_check(study, tmp_path):
    from ray import tune

    from tune_hw import progress, tracking, tuner

    first = progress.Progress(study, total=4, max_epochs=2)
    tuner.build_tuner(study, tmp_path, "r1", callbacks=[first], verbose=0)
    run_dir = tmp_path / "lr_batch" / "r1"
    pickled = tune.Tuner.restore(str(run_dir), tuner.make_trainable(study, run_dir))
    config = pickled._local_tuner.get_run_config()
    tracked = [tracking.StoreCallback, tracking.EpochTensorBoard]  # always first
    assert [type(c) for c in config.callbacks] == [*tracked, progress.Progress]
    assert config.verbose == 0
    restored = tuner.restore_tuner(study, run_dir, callbacks=[], verbose=None)  # --verbose
    config = restored._local_tuner.get_run_config()
    assert [type(c) for c in config.callbacks] == tracked and config.verbose is None
    again = progress.Progress(study, total=4, max_epochs=2)
    config = tuner.restore_tuner(study, run_dir, callbacks=[again], verbose=0) \
        ._local_tuner.get_run_config()
    assert config.callbacks[len(tracked):] == [again] and config.verbose == 0


def run_in_pty(args: list[str], env: dict, timeout: float = 600) -> tuple[int, str]:
    """Run `python -m tune_hw.search ARGS` with a pseudo-terminal as its stdout and stderr."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "tune_hw.search", *args], env)
    raw, deadline = bytearray(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), raw.decode("utf-8", "replace")


def test_on_a_terminal_the_progress_display_updates_in_place(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "COLUMNS": "160"}
    code, text = run_in_pty([*QUICK, "--num-samples", "2", "--storage-path", str(tmp_path),
                             "--name", "t1"], env)
    assert code == 0, text[-3000:]
    draws = len(re.findall(r"trials \d/2 done", text))
    # rich redraws the display over itself: it moves the cursor up and erases the line
    assert draws >= 2 and text.count("\x1b[1A") >= 1 and text.count("\x1b[2K") >= draws - 1
    assert "trials 2/2 done | 0 running, 0 pending" in text
    # the lines the screen advanced: each redraw first moves back up over the one before
    assert text.count("\n") - text.count("\x1b[1A") < 40, text[-3000:]
    assert "Checkpoint successfully created" not in text and " INFO " not in text
    assert re.search(r"best trial [\w-]+ \(by validation\)", text)
    assert "Checkpoint successfully created" in Path(tmp_path, "lr_batch", "t1",
                                                      layout.DRIVER_LOG).read_text()


def test_verbose_prints_rays_output_and_keeps_no_log(tmp_path):
    proc = run_cli("tune_hw.search", *QUICK, "--num-samples", "1", "--verbose",
                   "--storage-path", str(tmp_path), "--name", "v1",
                   env={"RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Configuration for experiment" in out and "Checkpoint successfully created" in out
    assert "Started a local Ray instance" in out
    assert not re.search(r"trials \d/1 done", out)  # no progress display of ours
    assert re.search(r"best trial [\w-]+ \(by validation\)", proc.stdout)
    assert not Path(tmp_path, "lr_batch", "v1", layout.DRIVER_LOG).exists()


def test_the_display_counts_members_that_left_a_running_group_as_done():
    from types import SimpleNamespace

    from tune_hw import progress, studies

    study = studies.load_study("lr_batch", quick=True)
    shown = progress.Progress(study, total=3, max_epochs=2)
    shown._members, shown._seen, shown._done = {}, set(), set()
    shown._t0, shown._epochs = time.monotonic(), 1
    config = {"group": {"members": [{"train.lr": lr, "train.epochs": 2} for lr in (0.1, 0.2)]}}
    group = SimpleNamespace(trial_id="g", status="RUNNING", path=None, config=config)
    single = SimpleNamespace(trial_id="t", status="PENDING", path=None, config={})
    row = {"epoch": 1, "val_acc": 0.5, "val_loss": 1.0}
    shown._absorb(group, {"epoch": 1, "val_acc": 0.5, "members": {
        "g-m00": {**row, "member_status": "running"},
        "g-m01": {**row, "member_status": "early_stopped"}}})
    view = shown.view([group, single])
    assert (view.done, view.running, view.pending) == (1, 1, 1)
    assert view.by_status == {"early_stopped": 1}
