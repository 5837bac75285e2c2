"""A run directory is untrusted input: the report never unpickles it, a resume trusts only
what it checked, a damaged run is refused and never overwritten, names stay inside the
storage path, and a local run listens on 127.0.0.1 only.

One real quick search (run once per module, its listening sockets watched while it runs)
provides the run directory the other tests copy and tamper with.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO

from tune_hw import cluster, layout, ray_files, report, results, search
from tune_hw.errors import UserError

psutil = pytest.importorskip("psutil")

STUDY_ARGS = ["lr_batch", "--quick", "--set", "space.train.batch_size={choice: [64, 128]}",
              "--set", "search.num_samples=3", "--name", "h1",
              "--fuse", "off"]  # one Tune trial per trial: Ray's own reader sees ours


class Touch:
    """A pickle that creates `path` when it is loaded: the payload a run must never run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def payload(marker: Path) -> bytes:
    return pickle.dumps(Touch(marker))


def listening(pids: set[int]) -> dict[tuple[str, int], str]:
    """Listening TCP sockets and bound UDP sockets of `pids`: (address, port) -> process."""
    found = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            name = proc.name()
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN or (conn.type == 2 and not conn.raddr):
                    found[(conn.laddr.ip, conn.laddr.port)] = name
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or ip).is_loopback


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A quick search through the CLI; every socket its process tree opens, seen meanwhile."""
    storage = tmp_path_factory.mktemp("runs")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    env.pop(cluster.LOOPBACK_ONLY, None)  # the CLI itself must confine its Ray
    proc = subprocess.Popen([sys.executable, "-m", "tune_hw.search", *STUDY_ARGS,
                             "--storage-path", str(storage)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sockets, tree = {}, set()
    try:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree |= {root.pid, *(p.pid for p in root.children(recursive=True))}
            except psutil.NoSuchProcess:
                break
            sockets.update(listening(tree))
            time.sleep(0.3)
        log = proc.communicate(timeout=600)[0]
    finally:
        for pid in tree:  # whatever Ray left behind, by PID
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, log[-3000:]
    return storage, sockets


def copy_storage(real_run, tmp_path: Path) -> tuple[Path, Path]:
    storage = tmp_path / "runs"
    shutil.copytree(real_run[0], storage)
    return storage, storage / "lr_batch" / "h1"


def resume(storage: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = search.main([*STUDY_ARGS, "--storage-path", str(storage), "--resume"])
    return code, capsys.readouterr().err


def one_error_line(err: str, says: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], err


# ------------------------------------------------------------------ 9. loopback only

def test_a_local_run_listens_on_loopback_only(real_run):
    sockets = real_run[1]
    names = set(sockets.values())
    assert "gcs_server" in names and "raylet" in names  # the whole tree was watched
    exposed = {f"{ip}:{port}": name for (ip, port), name in sockets.items()
               if not is_loopback(ip)}
    assert exposed == {}


# ------------------------------------------------------ 1. the report never unpickles

def test_the_report_of_a_running_search_never_unpickles(real_run, tmp_path, monkeypatch):
    storage, run_dir = copy_storage(real_run, tmp_path)
    written = pd.read_parquet(run_dir / layout.TRIALS_FILE)
    for name in (layout.TRIALS_FILE, layout.EPOCHS_FILE, layout.GRADS_FILE):
        (run_dir / name).unlink(missing_ok=True)
    marker = tmp_path / "payload.ran"
    state_path = layout.newest(run_dir, layout.EXPERIMENT_STATE)
    state = json.loads(state_path.read_text())
    planted = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload(marker).hex()}
    state["runner_data"]["planted"] = planted  # what Ray's decoder would unpickle
    state_path.write_text(json.dumps(state))
    for trial_dir in layout.trial_dirs(run_dir):
        (trial_dir / "params.pkl").write_bytes(payload(marker))
        (trial_dir / "error.pkl").write_bytes(payload(marker))
    monkeypatch.chdir(tmp_path)
    assert report.main([str(run_dir), "--bootstrap", "100"]) == 0
    assert not marker.exists()
    summary = json.loads(Path("reports/lr_batch/h1/summary.json").read_text())
    assert summary["n_trials"] == len(written) == 3
    assert summary["val_vs_test"]["winner"]["val_acc"] == pytest.approx(
        written.best_val_acc.max())


def test_ray_text_files_give_the_tables_of_rays_own_reader(real_run, tmp_path):
    """The plain-text reader agrees with Ray's ExperimentAnalysis on a run we made."""
    from ray.tune import ExperimentAnalysis

    _, run_dir = copy_storage(real_run, tmp_path)
    analysis = ExperimentAnalysis(str(run_dir))  # trusted: this test's own run
    frames = analysis.trial_dataframes
    theirs = [results.TrialRecord(
        t.trial_id, ray_files.flatten_config(t.config), frames[t.trial_id].to_dict("records"),
        None, t.status in ray_files.RAY_ENDED) for t in analysis.trials]
    ours = ray_files.read_ray_trials(run_dir)
    for a, b in zip(results.build_tables(theirs), results.build_tables(ours), strict=True):
        pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------- 2. resume trusts what it checks

def _writable_search_gen_state(run_dir: Path, storage: Path, marker: Path) -> Path:
    path = layout.newest(run_dir, "search_gen_state-*.json")
    path.write_bytes(payload(marker))
    return path


def _writable_trial_dir(run_dir: Path, storage: Path, marker: Path) -> Path:
    trial_dir = layout.trial_dirs(run_dir)[0]
    (trial_dir / "error.pkl").write_bytes(payload(marker))
    return trial_dir


def _writable_storage(run_dir: Path, storage: Path, marker: Path) -> Path:
    layout.newest(run_dir, "searcher-state-*.pkl").write_bytes(payload(marker))
    return storage


@pytest.mark.parametrize("tamper", [_writable_search_gen_state, _writable_trial_dir,
                                    _writable_storage])
def test_resume_refuses_files_others_could_have_replaced(real_run, tmp_path, capsys, tamper):
    storage, run_dir = copy_storage(real_run, tmp_path)
    marker = tmp_path / "payload.ran"
    path = tamper(run_dir, storage, marker)
    path.chmod(path.stat().st_mode | 0o020)  # group-writable: anyone in the group could plant
    before = (run_dir / layout.TRIALS_FILE).read_bytes()
    code, err = resume(storage, capsys)
    assert code == 2
    one_error_line(err, f"refusing to resume from {path}: it is writable by others")
    assert not marker.exists()
    assert (run_dir / layout.TRIALS_FILE).read_bytes() == before


def test_the_trusted_files_are_every_file_rays_restore_loads(real_run):
    run_dir = real_run[0] / "lr_batch" / "h1"
    names = {p.relative_to(run_dir).as_posix() for p in layout.restore_inputs(run_dir)}
    assert "tuner.pkl" in names
    for glob in (layout.EXPERIMENT_STATE, *layout.PICKLED_STATES[:2]):
        assert {p.name for p in run_dir.glob(glob)} <= names and any(run_dir.glob(glob))
    assert {f"{t.name}/params.pkl" for t in layout.trial_dirs(run_dir)} <= names


# ------------------------------------------- 4. a damaged run is refused, never rewritten

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("target, says", [
    (layout.EXPERIMENT_STATE, "is damaged (JSONDecodeError"),
    ("search_gen_state-*.json", "is missing or damaged (cut short)"),
    ("tuner.pkl", "is missing or damaged (cut short)"),
])
def test_a_damaged_run_is_refused_and_its_results_kept(real_run, tmp_path, capsys, target,
                                                       says):
    storage, run_dir = copy_storage(real_run, tmp_path)
    damaged = layout.newest(run_dir, target)
    _truncate(damaged)
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.parquet")}
    code, err = resume(storage, capsys)
    assert code == 2
    one_error_line(err, says)
    assert str(damaged) in err
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.parquet")} == before


def test_a_new_run_never_reuses_a_directory_that_holds_results(real_run, tmp_path, capsys):
    """Without Ray's state the run is not resumable, and a new run would overwrite it."""
    storage, run_dir = copy_storage(real_run, tmp_path)
    for path in run_dir.glob(layout.EXPERIMENT_STATE):
        path.unlink()
    before = (run_dir / layout.TRIALS_FILE).read_bytes()
    capsys.readouterr()
    assert search.main([*STUDY_ARGS, "--storage-path", str(storage)]) == 2
    one_error_line(capsys.readouterr().err, "run 'h1' already exists")
    code, err = resume(storage, capsys)
    assert code == 2
    one_error_line(err, "nothing to resume: run 'h1' in")
    assert (run_dir / layout.TRIALS_FILE).read_bytes() == before


def test_results_are_never_rewritten_with_fewer_trials(tmp_path):
    import report_fixtures as F

    F.write_lr_batch_run(tmp_path / "run", n=6)
    before = (tmp_path / "run" / layout.TRIALS_FILE).read_bytes()
    with pytest.raises(UserError, match=r"refusing to replace .*\(6 trials\) with 1 trials"):
        results.write_run(tmp_path / "run", F.lr_batch_records(1), F.study_dict())
    assert (tmp_path / "run" / layout.TRIALS_FILE).read_bytes() == before


# --------------------------------------- 3. the report's directory comes from plain names

@pytest.mark.parametrize("name", ["/abs/elsewhere", "../../elsewhere", ".."])
def test_a_study_name_cannot_redirect_or_clean_the_report(tmp_path, monkeypatch, capsys, name):
    import report_fixtures as F

    target = tmp_path / "abs" / "elsewhere" if name.startswith("/") else tmp_path / "elsewhere"
    study_name = str(tmp_path / "abs" / "elsewhere") if name.startswith("/") else name
    (target / "figures").mkdir(parents=True)
    (target / "figures" / "holiday.png").write_bytes(b"a photo")
    run_dir = tmp_path / "work" / "runs" / "lr_batch" / "r1"
    F.write_lr_batch_run(run_dir, n=4)
    study = results.read_study(run_dir)
    results.write_study(run_dir, {**study, "name": study_name})
    monkeypatch.chdir(tmp_path / "work")
    assert report.main([str(run_dir), "--bootstrap", "100"]) == 0
    assert "reports/lr_batch/r1/" in capsys.readouterr().out
    assert (tmp_path / "work" / "reports" / "lr_batch" / "r1" / "index.html").is_file()
    assert sorted(p.name for p in target.rglob("*")) == ["figures", "holiday.png"]


def test_the_report_deletes_only_figures_its_earlier_report_made(tmp_path):
    import report_fixtures as F

    F.write_lr_batch_run(tmp_path / "run", n=4)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "mine.png").write_bytes(b"not the report's")
    assert report.main([str(tmp_path / "run"), "--out", str(out), "--bootstrap", "100"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    (out / "figures" / "stale.png").write_bytes(b"an earlier report's")
    summary["figures"] += ["figures/stale.png", "../outside.png"]
    (out / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "outside.png").write_bytes(b"never listed by a report")
    assert report.main([str(tmp_path / "run"), "--out", str(out), "--bootstrap", "100"]) == 0
    assert (out / "figures" / "mine.png").is_file() and (tmp_path / "outside.png").is_file()
    assert not (out / "figures" / "stale.png").exists()


# ------------------------------------------- 8. run: references stay under the storage

@pytest.mark.parametrize("ref, says", [
    ("run:../elsewhere", "must be run:<study>/<run_name> of two plain names"),
    ("run:pretrain/..", "must be run:<study>/<run_name> of two plain names"),
    ("run:{dir}/elsewhere", "trials.parquet cannot be read as parquet"),  # absolute: allowed
])
def test_run_references_stay_under_the_storage_path(tmp_path, capsys, monkeypatch, ref, says):
    storage = tmp_path / "runs"
    storage.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "trials.parquet").write_bytes(b"PAR1 not a table")
    study = tmp_path / "transfer.yaml"
    study.write_text(
        "description: a run reference\n"
        "dataset: {name: digits, classes: [5, 6, 7, 8, 9], n_train: 50}\n"
        "model: {name: resnet18, mode: linear_probe, weights: "
        f"\"{ref.replace('{dir}', str(tmp_path))}\"}}\n"
        "train: {epochs: 1, lr: 0.01, batch_size: 10}\n"
        "space:\n  train.lr: {loguniform: [1.0e-3, 1.0e-1]}\n"
        "search: {algorithm: random, num_samples: 1}\n")
    monkeypatch.setenv("TUNE_HW_STORAGE", str(storage))
    capsys.readouterr()
    assert search.main([str(study), "--storage-path", str(storage)]) == 2
    one_error_line(capsys.readouterr().err, says)
    assert list(storage.iterdir()) == []
