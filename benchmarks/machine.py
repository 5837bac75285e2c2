"""The machine, the library versions, and how busy the machine was while we measured.

Process figures come from /proc (Linux); elsewhere they are reported as missing.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parent.parent
PROC = Path("/proc")
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory, OS and Python of this machine."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = PROC / "cpuinfo"
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": _memory_gib(),
            "os": platform.platform(), "python": platform.python_version()}


def _memory_gib() -> float | None:
    meminfo = PROC / "meminfo"
    if not meminfo.is_file():
        return None
    kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
    return round(kib / 2**20, 1)


def versions() -> dict[str, str]:
    """Versions of what the figures depend on, and the tune_hw commit measured."""
    import numpy
    import optuna
    import ray
    import torch

    return {"tune_hw": _git_commit(), "torch": torch.__version__, "ray": ray.__version__,
            "optuna": optuna.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0]}


def _git_commit() -> str:
    """Short commit, with +dirty when the working tree has changes (the figures are of those)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, text=True, capture_output=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def driver_peak_rss_mib() -> float:
    """Peak resident memory of this (the driver) process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


class Proc(NamedTuple):
    ppid: int
    cpu_s: float  # user + system CPU of the process itself
    reaped_cpu_s: float  # CPU of the children it has waited for (raylet reaps Ray's workers)
    rss: int  # resident bytes


def process_table() -> dict[int, Proc]:
    """Every visible process by pid, read from /proc/PID/stat."""
    table = {}
    for entry in PROC.glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        cpu = [int(v) / TICK for v in fields[11:15]]
        table[int(entry.name)] = Proc(int(fields[1]), cpu[0] + cpu[1], cpu[2] + cpu[3],
                                      int(fields[21]) * PAGE)
    return table


def descendants(root: int, table: dict[int, Proc]) -> set[int]:
    """`root` and every process below it (Ray's raylet and workers hang under the driver)."""
    children: dict[int, list[int]] = {}
    for pid, proc in table.items():
        children.setdefault(proc.ppid, []).append(pid)
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


class Monitor:
    """Samples processes twice a second: other processes' CPU, this tree's CPU and memory.

    The machine is shared, so "how loaded was it" is a measured figure, not a guess: CPU
    seconds used by processes outside this benchmark's process tree, per second of wall time.
    The tree's CPU includes processes that ended: raylet lets the kernel reap Ray's workers,
    which drops their CPU from every parent's account, so the last sample of each is kept.
    """

    active: Monitor | None = None

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.available = PROC.is_dir()
        self.other_cpu_s = 0.0
        self.ended_cpu_s = 0.0  # CPU of this tree's processes that have ended
        self.own_cpu_s = 0.0  # the sampling itself: reading /proc is not the tool's work
        self.tree_rss_peak = 0
        self._previous: dict[int, Proc] = {}
        self._mine: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = time.perf_counter()

    def __enter__(self) -> Monitor:
        if self.available:
            self.sample()
            self.other_cpu_s = 0.0
            self._thread.start()
        Monitor.active = self
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        Monitor.active = None
        self.wall_s = time.perf_counter() - self._started

    def reset_peak(self) -> None:
        self.tree_rss_peak = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> float:
        """Take one sample; the tree's CPU seconds so far (live plus ended), less sampling's."""
        with self._lock:
            began = time.thread_time()
            table = process_table()
            mine = descendants(os.getpid(), table)
            for pid in self._mine - set(table):
                ended = self._previous[pid]
                self.ended_cpu_s += ended.cpu_s + ended.reaped_cpu_s
            for pid, proc in table.items():
                if pid not in mine:
                    before = self._previous.get(pid)
                    # a process new since the last sample started inside the interval
                    self.other_cpu_s += proc.cpu_s - (before.cpu_s if before else 0.0)
            self.tree_rss_peak = max(self.tree_rss_peak, sum(table[pid].rss for pid in mine))
            self._previous, self._mine = table, mine & set(table)
            self.own_cpu_s += time.thread_time() - began
            return self.ended_cpu_s - self.own_cpu_s + sum(
                table[pid].cpu_s + table[pid].reaped_cpu_s for pid in self._mine)

    def other_cores(self) -> float | None:
        """Mean number of cores kept busy by other processes while this ran."""
        if not self.available or not getattr(self, "wall_s", 0):
            return None
        return round(self.other_cpu_s / self.wall_s, 2)


def tree_cpu_s() -> float | None:
    """CPU seconds used so far by this process and all below it, or None without a Monitor.

    On a shared machine CPU time is steadier than wall time: waiting for a core costs none.
    """
    monitor = Monitor.active
    return monitor.sample() if monitor is not None and monitor.available else None
