"""Distributed runs on a real two-node Ray cluster on this machine, the job API, the dashboard,
and cluster.yaml against Ray's own schema.

The cluster is two `ray start --block` processes with their own temp dir, ports and token,
stopped by PID at the end: the head has 1 CPU and 2 logical GPUs, the worker 1 CPU. Nothing
here touches another Ray on the machine or ~/.ray.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from conftest import REPO, run_cli

RAY = str(Path(sys.executable).with_name("ray"))
CLUSTER_FILES = ["cluster.yaml", "cluster-local.yaml"]
# Batch size 1 makes a quick trial train for a few seconds: long enough that the second
# trial's own actor is up before the first trial ends (Tune would otherwise reuse the first
# actor for every trial and they would all land on one node / one GPU).
SLOW_QUICK = ["lr_batch", "--quick", "--set", "train.batch_size=1",
              "--set", "dataset.n_train=1000"]
FAST_QUICK = ["lr_batch", "--quick", "--set", "train.batch_size=64"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RayCluster:
    env: dict[str, str]  # what a client of this cluster needs: temp dir, token, PYTHONPATH
    address: str  # GCS address for --address
    dashboard: str  # http://127.0.0.1:PORT
    token: str

    def get(self, path: str, token: str | None = None) -> Any:
        """GET the dashboard's REST API, as a user with the cluster's token would."""
        request = urllib.request.Request(self.dashboard + path)
        request.add_header("Authorization", f"Bearer {token or self.token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def node_ids(self) -> dict[str, bool]:
        """Alive node id -> is the head node."""
        nodes = self.get("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return {n["node_id"]: n["is_head_node"] for n in nodes if n["state"] == "ALIVE"}


def start_node(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """One Ray node in the foreground (`--block`): SIGTERM to this PID stops all of it."""
    return subprocess.Popen(
        [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
         "--object-store-memory=100000000", f"--dashboard-agent-listen-port={free_port()}",
         *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_nodes(cluster: RayCluster, count: int, procs: list[subprocess.Popen],
                   logs: list[Path], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"ray start exited:\n{log.read_text()[-3000:]}"
        try:
            if len(cluster.node_ids()) == count:
                return
        except (OSError, KeyError, ValueError):
            pass  # the dashboard is still starting
        time.sleep(1)
    raise TimeoutError(f"{count} Ray nodes not alive after {timeout}s")


def stop(procs: list[subprocess.Popen]) -> None:
    """Stop the nodes we started, by PID: SIGTERM lets Ray's reaper end each node's processes."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def remove_when_unused(temp: Path, timeout: float = 30) -> None:
    """Delete a Ray temp dir once no process names it: the nodes' reaper ends their processes
    a moment after `ray start --block` exits, and they write there until they do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
            str(temp).encode() in cmdline for cmdline in _cmdlines()):
        time.sleep(0.5)
    shutil.rmtree(temp, ignore_errors=True)


def _cmdlines() -> Iterator[bytes]:
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            yield path.read_bytes()
        except OSError:
            continue  # the process ended meanwhile


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    # A short temp dir: Ray's socket paths live under it and must stay under 107 characters.
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    token = secrets.token_hex(16)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(temp),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    for name in ("RAY_ADDRESS", "TUNE_HW_SHARED_STORAGE"):
        env.pop(name, None)
    gcs, dashboard = free_port(), free_port()
    ray_cluster = RayCluster(env, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", token)
    logs = [temp / "head.log", temp / "worker.log"]
    procs = [start_node(["--head", f"--port={gcs}", "--include-dashboard=true",
                         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                         f"--ray-client-server-port={free_port()}", "--num-cpus=1",
                         "--num-gpus=2"], env, logs[0])]
    try:
        wait_for_nodes(ray_cluster, 1, procs, logs[:1])
        # Its own temp dir, as on a real second machine: nodes sharing one would delete each
        # other's copies of a job's working directory.
        procs.append(start_node([f"--address={ray_cluster.address}", "--num-cpus=1",
                                 f"--temp-dir={temp / 'w'}"], env, logs[1]))
        wait_for_nodes(ray_cluster, 2, procs, logs)
        yield ray_cluster
    finally:
        stop(procs[::-1])
        remove_when_unused(temp)


def trials_of(storage: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(storage / "lr_batch" / name / "trials.parquet")


# ------------------------------------------------------------------------- cluster.yaml

def load_cluster_file(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def start_commands(config: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in config[key] if "ray start" in c]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_validates_against_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` does before it touches a cloud: merge the provider's defaults, then check
    # the result with jsonschema against ray/autoscaler/ray-schema.json. Offline, no SSH.
    config = prepare_config(load_cluster_file(name))
    validate_config(config)
    assert any("pip install" in c and "tune_hw" in c for c in config["setup_commands"])
    assert "~/.ray/auth_token" in config["file_mounts"]  # every node gets the token


def test_aws_cluster_has_a_cpu_head_and_a_gpu_worker_type():
    config = load_cluster_file("cluster.yaml")
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"]["GPU"] == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert config["provider"]["type"] == "aws"


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_file_opens_nothing_to_the_world(name):
    text = (REPO / name).read_text()
    assert "0.0.0.0" not in text and "::/0" not in text
    config = load_cluster_file(name)
    commands = start_commands(config)
    assert len(commands) == 2  # one for the head, one for the workers
    for command in commands:
        assert "RAY_AUTH_MODE=token" in command  # token authentication on every node
    head = [c for c in commands if "--head" in c]
    assert len(head) == 1 and "--dashboard-host=127.0.0.1" in head[0]
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert all(r.get("FromPort") == r.get("ToPort") == 22 for r in rules)  # SSH at most


# --------------------------------------------------------------------- local dashboard

def listening_addresses(port: int) -> set[str]:
    """IP addresses with a TCP socket listening on `port` (from /proc: no psutil needed)."""
    found = set()
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        if not Path(path).is_file():
            continue
        for line in Path(path).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            hex_ip, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(hex_ip)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, words))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").is_file(), reason="reads Linux's /proc/net/tcp")
def test_local_dashboard_listens_on_loopback_only(tmp_path):
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": str(temp),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "tune_hw.search", *FAST_QUICK, "--num-samples", "1",
               "--dashboard", "--storage-path", str(tmp_path)]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:  # check while the run (and so the dashboard) is up
            seen.append(line)
            match = re.match(r"Ray dashboard: http://([\d.]+):(\d+)$", line.strip())
            if match:
                break
        assert match, "".join(seen)[-3000:]
        assert match.group(1) == "127.0.0.1"
        assert listening_addresses(int(match.group(2))) == {"127.0.0.1"}
        rest = proc.stdout.read()
        assert proc.wait(timeout=600) == 0, rest[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        remove_when_unused(temp)


# ------------------------------------------------------------------- filling a cluster

@pytest.mark.parametrize("algorithm, max_concurrent, expected", [
    ("random", 2, 2), ("random", 0, 0), ("optuna", 3, 3), ("optuna", 0, None)])
def test_searchers_take_the_studys_concurrency_limit(algorithm, max_concurrent, expected):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from tune_hw import studies, tuner

    overrides = {"search.algorithm": algorithm, "search.max_concurrent": max_concurrent}
    study = studies.load_study("lr_batch", quick=True, overrides=overrides)
    searcher = tuner.make_search_alg(study)
    if algorithm == "optuna":
        searcher = searcher.searcher  # inside tune_hw's restorable SearchGenerator
        # Without Ray running there is no cluster to size the limit from: no limiter.
        limited = isinstance(searcher, ConcurrencyLimiter)
        assert (searcher.max_concurrent if limited else None) == expected
    else:
        assert isinstance(searcher, BasicVariantGenerator)
        assert searcher.max_concurrent == expected


# ------------------------------------------------------------------------ a real cluster

def test_local_storage_is_refused_on_two_nodes(cluster, tmp_path):
    proc = run_cli("tune_hw.search", *FAST_QUICK, "--address", cluster.address,
                   "--storage-path", str(tmp_path), env=cluster.env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # Ray's own "Connecting to existing Ray cluster" lines come first; ours is one line, last.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert errors[0].startswith(f"error: --storage-path {tmp_path} is a local directory")
    assert "the cluster has 2 nodes" in errors[0]
    assert "TUNE_HW_SHARED_STORAGE=1" in errors[0]


def test_trials_spread_over_both_nodes(cluster, tmp_path):
    # Both "nodes" share this machine's disk, so the storage path is shared: say so.
    env = {**cluster.env, "TUNE_HW_SHARED_STORAGE": "1"}
    proc = run_cli("tune_hw.search", *SLOW_QUICK, "--address", cluster.address,
                   "--storage-path", str(tmp_path), "--name", "spread", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(tmp_path, "spread")
    assert len(trials) == 4 and set(trials.status) <= {"completed", "diverged"}
    assert set(trials.node_id) == set(cluster.node_ids())  # two distinct nodes
    assert (trials.gpu_ids == "").all()  # no GPU asked for, none given


def test_fractional_gpus_put_two_trials_on_each_logical_gpu(cluster, tmp_path):
    env = {**cluster.env, "TUNE_HW_SHARED_STORAGE": "1"}
    proc = run_cli("tune_hw.search", *SLOW_QUICK, "--address", cluster.address,
                   "--gpus-per-trial", "0.5", "--cpus-per-trial", "0.25",
                   "--storage-path", str(tmp_path), "--name", "gpus", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trials_of(tmp_path, "gpus")
    assert sorted(trials.gpu_ids) == ["0", "0", "1", "1"]
    head = next(node for node, is_head in cluster.node_ids().items() if is_head)
    assert (trials.node_id == head).all()  # the only node with GPUs


def test_job_api_run_succeeds_and_the_dashboard_lists_it(cluster, tmp_path):
    job_id = f"tune-hw-test-{secrets.token_hex(4)}"
    runtime_env = {"env_vars": {"TUNE_HW_SHARED_STORAGE": "1"}}
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id,
         "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
         sys.executable, "-m", "tune_hw.search", *FAST_QUICK, "--address", "auto",
         "--storage-path", str(tmp_path), "--name", "job"],
        env=cluster.env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len(trials_of(tmp_path, "job")) == 4
    job = cluster.get(f"/api/jobs/{job_id}")
    assert job["status"] == "SUCCEEDED" and "tune_hw.search" in job["entrypoint"]
    assert job_id in {j["submission_id"] for j in cluster.get("/api/jobs/")}
    with pytest.raises(urllib.error.HTTPError) as denied:
        cluster.get("/api/jobs/", token="not-the-token")
    assert denied.value.code in (401, 403)  # token authentication is on


def test_relative_run_weights_resolve_on_every_node(cluster, tmp_path):
    # Nobody sets TUNE_HW_STORAGE: the driver passes its storage root to the trial workers
    # (the nodes were started without it) through the job's runtime_env.
    env = {**cluster.env, "TUNE_HW_SHARED_STORAGE": "1"}
    env.pop("TUNE_HW_STORAGE", None)
    # not ./runs of the launch directory, where a worker without the root would look
    common = ["--address", cluster.address, "--storage-path", str(tmp_path / "shared")]
    source = run_cli("tune_hw.search", "pretrain", "--quick", "--name", "quick", *common,
                     env=env, cwd=tmp_path)
    assert source.returncode == 0, source.stderr[-3000:]
    proc = run_cli("tune_hw.search", "transfer", "--quick", "--name", "t", *common, env=env,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "shared" / "transfer" / "t" / "trials.parquet")
    assert len(trials) == 4 and set(trials.status) == {"completed"}, trials.error.tolist()
    assert set(trials["config/model.weights"].dropna()) == {"run:pretrain/quick"}


# ------------------------------------------------------------- the checks, without a cluster

def test_shared_storage_is_recognised_by_path_not_by_prefix(tmp_path, monkeypatch):
    from tune_hw import cluster

    monkeypatch.delenv("TUNE_HW_SHARED_STORAGE", raising=False)
    mounts = tmp_path / "mounts"
    mounts.write_text("/dev/sda1 / ext4 rw 0 0\n"
                      "server:/export /mnt/nfs nfs4 rw 0 0\n"
                      "server:/other /mnt/my\\040share nfs rw 0 0\n")
    assert cluster.is_network_fs(Path("/mnt/nfs/runs"), mounts)
    assert cluster.is_network_fs(Path("/mnt/nfs"), mounts)
    assert not cluster.is_network_fs(Path("/mnt/nfs2/runs"), mounts)  # not under /mnt/nfs
    assert cluster.is_network_fs(Path("/mnt/my share/runs"), mounts)  # \040 is a space


def test_worker_runtime_env_carries_the_storage_root(monkeypatch):
    from tune_hw import cluster

    monkeypatch.setenv("TUNE_HW_STORAGE", "/shared/runs")
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    for name in cluster.FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    assert cluster.worker_runtime_env() == {"env_vars": {"TUNE_HW_STORAGE": "/shared/runs"}}
    # an object store's endpoint and region travel to the workers, its secret never does
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    assert cluster.worker_runtime_env() == {"env_vars": {
        "TUNE_HW_STORAGE": "/shared/runs", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}}
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    # inside `ray job submit --runtime-env-json` that sets it, the job's own value stands
    job = {"runtime_env": {"env_vars": {"TUNE_HW_STORAGE": "/shared/runs"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    assert cluster.worker_runtime_env() == {}
