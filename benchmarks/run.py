"""Run tune_hw's benchmark suite and write benchmarks/RESULTS.md and benchmarks/results.json.

    python -m benchmarks.run                        # full suite, ~30 minutes on 2 idle cores
    python -m benchmarks.run --quick --out /tmp/b   # a one-minute smoke run (the tests run it)
    python -m benchmarks.run --only data_path overhead

Run from the repository root (benchmarks/ is not installed with the package).

Cases: overhead (tune_hw vs a bare PyTorch loop), data_path (tune_hw's batching vs
DataLoader), search_efficiency (ASHA + Optuna vs FIFO + random vs plain Optuna), scaling
(1 vs 2 concurrent trials, memory), snapshot (Tune's experiment snapshots at 1,000 short
trials, against per-epoch Tune checkpoints), fusion (K stacked members vs one model at a
time), per_step (a batch-1 training step in a Tune trial vs outside Ray, and where the
machine's CPU went). Variants run interleaved with repeats; medians and min-max are reported
with the machine's load, because a shared machine makes every timing noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import datapath, efficiency, fusion, overhead, per_step, scaling, snapshot, table
from benchmarks.common import TORCH_THREADS, log, ray_worker_niceness, start_peer, warm_up
from benchmarks.machine import REPO, Monitor, load_average, machine_info, versions

CASES = ("overhead", "data_path", "search_efficiency", "scaling", "snapshot", "fusion",
         "per_step")
NO_RAY = ("data_path", "fusion")  # cases that train in this process, before Ray starts
HERE = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description="Measure tune_hw against bare PyTorch.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one repeat: checks the suite runs (figures mean little)")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="directory for RESULTS.md and results.json (default benchmarks/)")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES),
                        help="run only these cases")
    return parser.parse_args(argv)


def timed_subprocess(args: list[str], timeout: int = 900) -> float:
    """Wall seconds of a fresh Python process, as a user would start it."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def one_time_costs(quick: bool, storage: Path) -> dict[str, Any]:
    """Costs paid once per command, not per trial: imports, and the whole CLI end to end."""
    from tune_hw import results

    if quick:  # fresh processes, and a second Ray instance, would double the smoke test
        return {"import_torch_s": None, "import_tune_hw_search_s": None, "cli_quick_s": None}
    out: dict[str, Any] = {
        "import_torch_s": timed_subprocess(["-c", "import torch"]),
        "import_tune_hw_search_s": timed_subprocess(
            ["-c", "import torch, ray.tune, tune_hw.search, tune_hw.ray_trial"])}
    log("one-time: python -m tune_hw.search lr_batch --quick (fresh process, starts Ray)")
    out["cli_quick_s"] = timed_subprocess(["-m", "tune_hw.search", "lr_batch", "--quick",
                                           "--storage-path", str(storage), "--name", "cli"])
    trials = results.load_run(storage / "lr_batch" / "cli").trials
    out["cli_quick_trial_s"] = float(trials.wall_s.sum())
    out["cli_quick_trials"] = len(trials)
    return out


def start_ray() -> float:
    """tune_hw's own Ray start (cluster.init_ray on 127.0.0.1, as the CLI starts it), timed;
    later searches reuse it."""
    from tune_hw import cluster

    started = time.perf_counter()
    with cluster.ray_on_loopback(True):
        cluster.init_ray(None)
    return time.perf_counter() - started


def run_cases(args: argparse.Namespace, storage: Path, monitor: Monitor) -> dict[str, Any]:
    """Data path and fusion first (no Ray running), then Ray once for the three Ray cases."""
    profile = "quick" if args.quick else "full"
    meta: dict[str, Any] = {"one_time": one_time_costs(args.quick, storage)}
    warm_up()
    cases: dict[str, Any] = {}
    if "data_path" in args.only:
        cases["data_path"] = datapath.run(profile)
    if "fusion" in args.only:
        cases["fusion"] = fusion.run(profile)
    ray_cases = [c for c in CASES if c in args.only and c not in NO_RAY]
    if ray_cases:
        import ray

        meta["one_time"]["ray_init_s"] = start_ray()
        meta["trial_niceness"] = ray_worker_niceness()
        peer = start_peer(meta["trial_niceness"])
        try:
            if "overhead" in ray_cases:
                cases["overhead"] = overhead.run(profile, storage, peer)
            if "search_efficiency" in ray_cases:
                cases["search_efficiency"] = efficiency.run(profile, storage, peer)
            if "scaling" in ray_cases:
                cases["scaling"] = scaling.run(profile, storage, monitor)
            if "snapshot" in ray_cases:
                cases["snapshot"] = snapshot.run(profile, storage)
            if "per_step" in ray_cases:
                cases["per_step"] = run_per_step(profile, storage, peer, meta)
        finally:
            peer.shutdown()
            ray.shutdown()  # only the instance this process started
    return {"meta": meta, "cases": cases}


def run_per_step(profile: str, storage: Path, peer: Any, meta: dict[str, Any]) -> Any:
    """Case per_step, with a second pair of warm processes for two minimal loops at once."""
    pair = start_peer(meta["trial_niceness"], workers=2)
    try:
        return per_step.run(profile, storage, peer, pair)
    finally:
        pair.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.time(), load_average()
    log(f"{'quick' if args.quick else 'full'} suite: {', '.join(args.only)}; load {load_start}")
    with Monitor() as monitor, tempfile.TemporaryDirectory(prefix="tune_hw_bench_") as tmp:
        report = run_cases(args, Path(tmp), monitor)
    report["meta"].update({
        "quick": args.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                                      time.localtime(started)),
        "duration_s": time.time() - started, "machine": machine_info(), "versions": versions(),
        "torch_threads": TORCH_THREADS, "load_average_start": load_start,
        "load_average_end": load_average(), "other_processes_cores": monitor.other_cores(),
        "command": "python -m benchmarks.run" + (" --quick" if args.quick else "")})
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (args.out / "RESULTS.md").write_text(table.render(report))
    log(f"wrote {args.out / 'RESULTS.md'} and results.json in {report['meta']['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
