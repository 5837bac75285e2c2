"""Where the machine's CPU went while Tune ran: CPU seconds per process, sorted into roles.

A thread samples every process (psutil) twice a second: the driver, Ray's daemons (raylet,
gcs_server, the dashboard and its agents, the log monitor, the autoscaler's monitor), Ray's
worker processes, and everything else: in this benchmark's process tree, or outside it
(other engineers' work on a shared machine).
For each trial worker it also keeps the CPU of its busiest thread (the training loop) apart
from its other threads (Ray's gRPC, event and metric threads), and the cores the worker used
while it trained, which tells a worker that waited for a core from one busy with Ray.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psutil

ROLES = (  # (role, what its command line holds), first match wins
    ("raylet", "raylet/raylet"), ("gcs_server", "gcs/gcs_server"),
    ("dashboard_agent", "DashboardAgent"), ("dashboard_agent", "dashboard/agent.py"),
    ("runtime_env_agent", "RuntimeEnvAgent"), ("runtime_env_agent", "runtime_env/agent"),
    ("dashboard", "dashboard/dashboard.py"), ("log_monitor", "log_monitor.py"),
    ("autoscaler_monitor", "autoscaler/_private/monitor.py"), ("ray_workers", "ray::"),
    ("ray_workers", "workers/default_worker.py"),
)
Sample = tuple[float, float, dict[int, float]]
BUSY_CORES = 0.3  # a worker using more than this is training (or starting), not idle


def role_of(proc: psutil.Process, command: str, driver: int, peers: set[int]) -> str:
    """The role of one process by its pid, command line and ancestry ("outside": not started
    by this benchmark, e.g. other engineers' work on a shared machine)."""
    if proc.pid == driver:
        return "driver"
    if proc.pid in peers:
        return "benchmark_peers"
    try:
        mine = any(parent.pid == driver for parent in proc.parents())
    except psutil.Error:
        mine = False
    if not mine:  # another engineer's Ray has raylets and workers too
        return "outside"
    return next((role for role, mark in ROLES if mark in command), "tree_other")


class CpuAccount:
    """Samples CPU per process while a `with` block runs; `result()` sums it by role."""

    def __init__(self, peers: set[int] | None = None, interval_s: float = 0.5):
        self.interval_s, self.peers, self.driver = interval_s, peers or set(), os.getpid()
        self.cpu_s: dict[str, float] = {}
        self.roles: dict[int, str] = {}
        self.previous: dict[int, float] = {}
        self.timeline: dict[int, list[Sample]] = {}  # per worker: time, CPU, CPU per thread
        self.own_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuAccount:
        self._sample(count=False)  # the baseline: CPU from before the block is not counted
        self.started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.wall_s = time.perf_counter() - self.started

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self, count: bool = True) -> None:
        began, now = time.thread_time(), time.perf_counter()
        seen = {}
        for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
            pid, times = proc.info["pid"], proc.info["cpu_times"]
            if times is None:
                continue
            if pid not in self.roles:
                command = " ".join(proc.info["cmdline"] or [])
                self.roles[pid] = role_of(proc, command, self.driver, self.peers)
            seen[pid] = times.user + times.system
            if count:  # a process new since the last sample started inside the interval
                role = self.roles[pid]
                self.cpu_s[role] = self.cpu_s.get(role, 0.0) + seen[pid] - self.previous.get(
                    pid, 0.0)
            if self.roles[pid] == "ray_workers":
                self._follow_worker(proc, now, seen[pid])
        self.previous = seen
        self.own_cpu_s += time.thread_time() - began

    def _follow_worker(self, proc: psutil.Process, now: float, cpu: float) -> None:
        try:
            threads = {t.id: t.user_time + t.system_time for t in proc.threads()}
        except psutil.Error:
            return
        self.timeline.setdefault(proc.pid, []).append((now, cpu, threads))

    def result(self) -> dict[str, Any]:
        """CPU seconds and mean cores per role (the sampling's own CPU taken off the driver's),
        and each trial worker's training window."""
        cpu = dict(self.cpu_s)
        cpu["driver"] = cpu.get("driver", 0.0) - self.own_cpu_s
        workers = [w for w in map(busy_window, self.timeline.values()) if w is not None]
        return {"wall_s": self.wall_s, "sampling_cpu_s": self.own_cpu_s,
                "cpu_s": {role: round(value, 3) for role, value in sorted(cpu.items())},
                "cores": {role: round(value / self.wall_s, 3) for role, value in
                          sorted(cpu.items())},
                "trial_workers": workers}


def busy_window(samples: list[Sample]) -> dict[str, float] | None:
    """A worker's cores used, and its busiest thread's share (Tune runs the trainable in a
    thread of its own; the rest is Ray's threads), over the middle 60 % of the span in which
    it was busy (start-up and the last epoch's end left out); None for an idle worker."""
    busy = [i for i in range(1, len(samples))
            if _cores(samples[i - 1], samples[i]) > BUSY_CORES]
    if len(busy) < 5:
        return None
    first, last = samples[busy[0] - 1], samples[busy[-1]]
    span = last[0] - first[0]
    inside = [s for s in samples if first[0] + 0.2 * span <= s[0] <= last[0] - 0.2 * span]
    if len(inside) < 2:
        return None
    start, end = inside[0], inside[-1]
    cpu = end[1] - start[1]
    busiest = max((used - start[2].get(tid, 0.0) for tid, used in end[2].items()), default=0.0)
    return {"busy_s": span, "cores": _cores(start, end),
            "training_thread_share": busiest / cpu if cpu > 0 else None,
            "cpu_s": samples[-1][1] - samples[0][1]}


def _cores(a: Sample, b: Sample) -> float:
    return (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else 0.0
