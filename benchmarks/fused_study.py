"""A whole study, unfused against fused: `lr_batch` with `--fuse off` and `--fuse auto`,
interleaved, each a fresh `python -m tune_hw.search` process as a user starts it.

    python -m benchmarks.fused_study                    # reduced lr_batch, 1 repeat
    python -m benchmarks.fused_study --profile full --repeats 2   # the shipped sizes
    python -m benchmarks.fused_study --algorithm random          # random search both sides

Both sides search lr_batch's space with its ASHA settings (seed = repeat), with the study's own
search algorithm (Optuna's TPE) unless --algorithm says random. Prints a Markdown table: wall
seconds, the best validation accuracy, trials and Tune trials (groups), trials per batch size,
the load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.machine import REPO, load_average

PROFILES = {  # --set overrides of lr_batch on both sides
    "reduced": ["search.num_samples=16", "train.epochs=4", "dataset.n_train=5000"],
    "full": [],
}


def run_once(storage: Path, name: str, fuse: str, seed: int, profile: str,
             algorithm: str | None) -> dict:
    """One search, timed; its best validation accuracy and counts from trials.parquet."""
    sets = [*([f"search.algorithm={algorithm}"] if algorithm else []), *PROFILES[profile]]
    args = [sys.executable, "-m", "tune_hw.search", "lr_batch", "--fuse", fuse, "--seed",
            str(seed), "--storage-path", str(storage), "--name", name,
            *[a for s in sets for a in ("--set", s)]]
    load_before, started = load_average()[0], time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    trials = pd.read_parquet(storage / "lr_batch" / name / "trials.parquet")
    return {"fuse": fuse, "seed": seed, "wall_s": wall,
            "best_val_acc": float(trials.best_val_acc.max()), "trials": len(trials),
            "groups": int(trials.group_id.nunique()), "load": (load_before, load_average()[0]),
            "per_batch": trials.groupby("config/train.batch_size").size().to_dict()}


def table(runs: list[dict]) -> str:
    lines = ["| fuse | seed | wall s | best val acc | trials | Tune trials | trials per batch "
             "size | load before/after |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        per_batch = ", ".join(f"{b}: {n}" for b, n in sorted(r["per_batch"].items()))
        lines.append(f"| {r['fuse']} | {r['seed']} | {r['wall_s']:.1f} | "
                     f"{r['best_val_acc']:.4f} | {r['trials']} | {r['groups']} | {per_batch} | "
                     f"{r['load'][0]:.1f} / {r['load'][1]:.1f} |")
    by = {f: [r["wall_s"] for r in runs if r["fuse"] == f] for f in ("off", "auto")}
    ratio = sum(by["off"]) / sum(by["auto"])
    lines.append(f"\nWall time, off ÷ auto: {ratio:.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fused_study")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="reduced")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed ... first-seed + repeats - 1 (an odd seed runs "
                             "auto first: the order alternates)")
    parser.add_argument("--algorithm", choices=["random"], default=None,
                        help="search both sides with random search (default: the study's own)")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="fused_study") as storage:
        for seed in range(args.first_seed, args.first_seed + args.repeats):
            for fuse in ("off", "auto") if seed % 2 == 0 else ("auto", "off"):
                runs.append(run_once(Path(storage), f"{fuse}-{seed}", fuse, seed,
                                     args.profile, args.algorithm))
                print(runs[-1], file=sys.stderr, flush=True)
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
