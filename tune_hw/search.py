"""Run a study from search_spaces/ as a Ray Tune search and write its results as parquet.

    python -m tune_hw.search lr_batch                          # full study, local Ray
    python -m tune_hw.search lr_batch --quick --name r1        # CI-sized profile, ~1 minute
    python -m tune_hw.search lr_batch --set train.epochs=5 --num-samples 8
    python -m tune_hw.search my_study.yaml --storage-path /shared/runs
    python -m tune_hw.search lr_batch --address auto           # inside a Ray cluster
    python -m tune_hw.search lr_batch --name r1 --resume       # continue an interrupted run
    python -m tune_hw.search lr_batch --set search.algorithm=random --set scheduler.name=fifo \
        --fuse auto                                            # fused groups of member trials

The run lands in <storage-path>/<study>/<run-name>/: trials.parquet, epochs.parquet,
grads.parquet (gradient tracking only), study.yaml, next to Ray's experiment files.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from tune_hw import cluster, layout, outcome, preflight, results, run_checks, strict_yaml, tuner
from tune_hw.errors import ArgumentParser, UserError
from tune_hw.layout import DEFAULT_STORAGE, STORAGE_ENV
from tune_hw.studies import load_study


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m tune_hw.search",
                                     description="Run a tune_hw study as a Ray Tune search.")
    parser.add_argument("study", help="study name in search_spaces/ (e.g. lr_batch) or a path")
    parser.add_argument("--quick", action="store_true", help="use the study's quick profile")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--name", help="run name (default: a timestamp)")
    parser.add_argument("--storage-path", default=DEFAULT_STORAGE,
                        help=f"where runs go (default ./{DEFAULT_STORAGE})")
    parser.add_argument("--address", help="join a Ray cluster: auto, or HOST:PORT")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study key, e.g. train.epochs=5 (repeatable)")
    parser.add_argument("--seed", type=int, help="override train.seed and the searcher's seed")
    parser.add_argument("--cpus-per-trial", type=float, help="override resources.cpu")
    parser.add_argument("--gpus-per-trial", type=float,
                        help="override resources.gpu; fractions share a GPU (0.25: 4 trials)")
    parser.add_argument("--max-failures", type=int,
                        help="override failure.max_failures: retries of a crashed trial")
    parser.add_argument("--fuse", help="override search.fuse: auto, off, or the largest group "
                        "of member trials trained as one (e.g. 16)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run --name (same study and options)")
    parser.add_argument("--dashboard", action="store_true",
                        help="local Ray only: start the Ray dashboard on 127.0.0.1, print its URL")
    return parser.parse_args(argv)


def parse_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set KEY=VALUE pairs (values read as YAML), then --num-samples and --seed."""
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE: write e.g. --set train.epochs=5")
        overrides[key.strip()] = strict_yaml.load(value, f"--set {key.strip()}")
    if args.num_samples is not None:
        overrides["search.num_samples"] = args.num_samples
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    if args.cpus_per_trial is not None:
        overrides["resources.cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        overrides["resources.gpu"] = args.gpus_per_trial
    if args.max_failures is not None:
        overrides["failure.max_failures"] = args.max_failures
    if args.fuse is not None:  # a number is a group size; the study checks every value
        overrides["search.fuse"] = int(args.fuse) if args.fuse.isdigit() else args.fuse
    return overrides


def run_search(args: argparse.Namespace, argv: list[str]) -> int:
    """Validate, start or resume the search, write results; the exit code."""
    run_name = time.strftime("%Y%m%d-%H%M%S") if args.name is None else \
        layout.check_name(args.name, "--name")
    if "://" in args.storage_path:
        raise UserError(f"--storage-path {args.storage_path}: object storage is not supported "
                        "for results yet; use a directory (on a cluster, one every node mounts)")
    storage = Path(args.storage_path).expanduser().resolve()
    # relative run:STUDY/RUN weights resolve under this run's storage, in driver and workers
    os.environ.setdefault(STORAGE_ENV, str(storage))
    study = load_study(args.study, quick=args.quick, overrides=parse_overrides(args))
    layout.check_name(study.name, f"{study.path}: the study name (its file name)")
    sizes = preflight.preflight(study)
    run_dir = storage / study.name / run_name
    resolved = {**study.resolved(), "data_sizes": sizes, "run_name": run_name}
    run_checks.check_run_dir(run_dir, args.resume, resolved, storage)
    run_checks.check_writable(storage, run_dir.parent)
    cluster.init_ray(args.address, args.dashboard, cluster.worker_runtime_env())
    cluster.check_shared_storage(storage)
    if not args.address:
        cluster.check_trial_fits(study)
    if not args.resume:
        results.write_study(run_dir, resolved)  # a running run is readable from the start
    search = tuner.restore_tuner(study, run_dir) if args.resume else \
        tuner.build_tuner(study, storage, run_name)
    try:
        search.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Ray has stopped its graceful shutdown
        pass
    code = outcome.write_results(run_dir, resolved, study)
    if code == 130:
        print(f"search interrupted; results so far are in {run_dir}\n"
              f"continue it with: {resume_command(argv, run_name)}", file=sys.stderr)
    return code


def resume_command(argv: list[str], run_name: str) -> str:
    """The exact command that continues this run."""
    args = [a for a in argv if a != "--resume"]
    if "--name" not in args and not any(a.startswith("--name=") for a in args):
        args += ["--name", run_name]
    return " ".join(["python -m tune_hw.search", *map(shlex.quote, args), "--resume"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        with cluster.ray_on_loopback(local=not args.address):  # before Ray starts
            return run_search(args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
