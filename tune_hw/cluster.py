"""Where a search runs: a local Ray confined to 127.0.0.1, or a running Ray cluster, and what
each needs checked before trials start (a reachable address, storage every node shares, trials
that fit, the environment trial workers need).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray._private import ray_constants

from tune_hw import terminal
from tune_hw.errors import UserError
from tune_hw.layout import STORAGE_ENV
from tune_hw.storage import ENDPOINT_ENVS, ObjectPath
from tune_hw.studies import Study

FORWARDED_ENV = (*ENDPOINT_ENVS, "AWS_REGION", "AWS_DEFAULT_REGION")  # no secrets among them

LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode


def init_ray(address: str | None, dashboard: bool = False,
             runtime_env: dict[str, Any] | None = None) -> bool:
    """Join a cluster at `address`, or start a local Ray (dashboard on 127.0.0.1 if asked);
    `runtime_env` is what every trial worker of this job gets. False when this process had
    Ray running already (its caller's to stop)."""
    if ray.is_initialized():
        return False
    if address:
        if dashboard:
            raise UserError("--dashboard starts a local dashboard; a cluster has its own: open "
                            "it with `ray dashboard cluster.yaml` and drop --dashboard")
        check_reachable(address)
        try:
            ray.init(address=address, runtime_env=runtime_env)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
                            "`ray start --head` or check the address; a cluster with token "
                            "authentication also needs RAY_AUTH_MODE=token here and its token "
                            "(~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
        return True
    # address="local": always a new Ray, never someone else's `ray start` cluster on this host
    context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       runtime_env=runtime_env)
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        terminal.warn(f"warning: the local Ray listens on {node_ip}, not 127.0.0.1: it was "
                      f"started outside ray_on_loopback; set {LOOPBACK_ONLY}=0 before "
                      "starting Python")
    if dashboard:
        terminal.say(f"Ray dashboard: http://{context.dashboard_url}")
    return True


def stop_ray() -> None:
    """Disconnect from Ray (a local one stops): its last forwarded worker lines land now,
    while the driver's output still goes where the search sent it."""
    ray.shutdown()


@contextlib.contextmanager
def ray_on_loopback(local: bool) -> Iterator[None]:
    """While a local run starts, Ray binds every server to 127.0.0.1: GCS, raylet, workers,
    dashboard agent, metrics exporters.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine mode (its default on macOS
    and Windows): the node's address is the loopback one, and each server binds the node's
    address; `_node_ip_address="127.0.0.1"` alone is resolved back to the machine's network
    address. Ray reads the variable once, when it is imported, into
    `ray_constants.ENABLE_RAY_CLUSTER`: the daemons it starts import it with the variable set,
    and this process, which imported Ray before it knew whether the run is local, gets the
    flag itself. Cluster runs (`--address`) keep Ray's behaviour; the old values come back
    afterwards so a caller in the same process can still start `ray start` cluster nodes.
    """
    old_env, old_flag = os.environ.get(LOOPBACK_ONLY), ray_constants.ENABLE_RAY_CLUSTER
    if local:
        os.environ[LOOPBACK_ONLY] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if local:
            ray_constants.ENABLE_RAY_CLUSTER = old_flag
            if old_env is None:
                os.environ.pop(LOOPBACK_ONLY, None)
            else:
                os.environ[LOOPBACK_ONLY] = old_env


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a dead HOST:PORT; ray.init would retry the GCS for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and friends: ray.init itself fails fast when no cluster is found
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}); "
                        "start one with `ray start --head` or check the address") from None


def check_shared_storage(storage: Path | ObjectPath) -> None:
    """On more than one node a local storage path would scatter trial files across machines."""
    if isinstance(storage, ObjectPath):  # object storage is shared by every node
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not is_network_fs(storage):
        raise UserError(f"--storage-path {storage} is a local directory but the cluster has "
                        f"{len(nodes)} nodes: use a filesystem every node mounts (NFS, EFS, "
                        "Lustre...), or set TUNE_HW_SHARED_STORAGE=1 if this path is shared")


def is_network_fs(path: Path, mounts: Path = Path("/proc/mounts")) -> bool:
    """True when `path` sits on NFS/CIFS or the user vouched that it is shared.

    The mount holding `path` is the longest mount point that `path` lies under, compared as
    paths (/mnt/nfs2 is not under /mnt/nfs).
    """
    if os.environ.get("TUNE_HW_SHARED_STORAGE") == "1":
        return True
    if not mounts.is_file():
        return False
    target = Path(path).resolve()
    best, fstype = None, ""
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        # /proc/mounts writes a space in a mount point as \040 (and tab, newline, \ alike)
        point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), parts[1]))
        if target.is_relative_to(point) and (best is None or len(point.parts) > len(best.parts)):
            best, fstype = point, parts[2]
    # "fuse." (fuse.sshfs, fuse.juicefs...) and not "fuse": fuseblk is a local NTFS disk
    return fstype.startswith(("nfs", "cifs", "smb", "lustre", "gpfs", "fuse.", "ceph", "beegfs"))


def worker_runtime_env() -> dict[str, Any]:
    """What trial workers need of the driver's environment: the storage root that relative
    `run:` weights resolve under (workers on other nodes do not inherit the driver's
    variables; a `ray job submit` that sets it in its own runtime_env keeps it), and the
    object store's endpoint and region. Never credentials: a runtime_env is visible in the
    job's config; workers take theirs from their own environment or instance role."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_vars = (job.get("runtime_env") or {}).get("env_vars") or {}
    names = (STORAGE_ENV, *(n for n in FORWARDED_ENV if os.environ.get(n)))
    env_vars = {n: os.environ[n] for n in names if n not in job_vars}  # Ray refuses a repeat
    return {"env_vars": env_vars} if env_vars else {}


def concurrent_slots(resources: dict[str, float]) -> int:
    """How many trials of `resources` the running Ray cluster fits at once (0: Ray not up)."""
    if not ray.is_initialized():
        return 0
    total = ray.cluster_resources()
    fits = [math.floor(total.get(key, 0.0) / resources[name] + 1e-6)
            for key, name in (("CPU", "cpu"), ("GPU", "gpu")) if resources.get(name, 0) > 0]
    return min(fits, default=0)


def check_trial_fits(study: Study) -> None:
    """On a local Ray a trial asking for more than the machine has would wait forever."""
    if concurrent_slots(study.resources) < 1:
        have = ray.cluster_resources()
        raise UserError(f"a trial asks for cpu {study.resources['cpu']:g} and gpu "
                        f"{study.resources['gpu']:g} but this machine has {have.get('CPU', 0):g} "
                        f"CPUs and {have.get('GPU', 0):g} GPUs: lower --cpus-per-trial / "
                        "--gpus-per-trial (resources:), or join a cluster with --address")
