"""Run a study from search_spaces/ as a Ray Tune search and write its results as parquet.

    python -m tune_hw.search lr_batch                          # full study, local Ray
    python -m tune_hw.search lr_batch --quick --name r1        # CI-sized profile, ~1 minute
    python -m tune_hw.search lr_batch --set train.epochs=5 --num-samples 8
    python -m tune_hw.search architectures --repeats 3         # every config with 3 seeds
    python -m tune_hw.search my_study.yaml --storage-path /shared/runs
    python -m tune_hw.search lr_batch --address auto           # inside a Ray cluster
    python -m tune_hw.search lr_batch --name r1 --resume       # continue an interrupted run
    python -m tune_hw.search lr_batch --name r1 --resume --num-samples 80   # grow a run
    python -m tune_hw.search lr_batch --storage-path s3://bucket/runs      # object storage
    python -m tune_hw.search lr_batch --set search.algorithm=random --set scheduler.name=fifo \
        --fuse auto                                            # fused groups of member trials

The run lands in <storage-path>/<study>/<run-name>/: trials.parquet, epochs.parquet,
grads.parquet (gradient tracking only), study.yaml, optuna.db (for optuna-dashboard) and
TensorBoard event files per trial, next to Ray's experiment files. The terminal shows a
progress display; everything Ray prints goes to driver.log there (--verbose: to the
terminal, as Ray prints it).

    python -m tune_hw.search lr_batch --mlflow sqlite:///mlruns.db   # also log to MLflow
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tune_hw import (
    cluster,
    layout,
    outcome,
    preflight,
    progress,
    results,
    run_checks,
    strict_yaml,
    terminal,
    tracking,
    tuner,
)
from tune_hw.errors import ArgumentParser, UserError
from tune_hw.layout import DEFAULT_STORAGE, STORAGE_ENV
from tune_hw.storage import ObjectPath, atomic_write, location
from tune_hw.studies import Study, load_study


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m tune_hw.search",
                                     description="Run a tune_hw study as a Ray Tune search.")
    parser.add_argument("study", help="study name in search_spaces/ (e.g. lr_batch) or a path")
    parser.add_argument("--quick", action="store_true", help="use the study's quick profile")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--repeats", type=int,
                        help="override search.repeats: seeds per config (train.seed + r)")
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
                        help="continue the run --name (same study and options; a larger "
                        "--num-samples grows it)")
    parser.add_argument("--dashboard", action="store_true",
                        help="local Ray only: start the Ray dashboard on 127.0.0.1, print its URL")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's full output instead of the progress display "
                             "(otherwise it goes to <run>/driver.log)")
    parser.add_argument("--mlflow", metavar="URI",
                        help="also log each trial to MLflow (sets log.mlflow): sqlite:///PATH, "
                             "http(s)://HOST:PORT or a directory")
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
    if args.repeats is not None:
        overrides["search.repeats"] = args.repeats
    if args.cpus_per_trial is not None:
        overrides["resources.cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        overrides["resources.gpu"] = args.gpus_per_trial
    if args.max_failures is not None:
        overrides["failure.max_failures"] = args.max_failures
    if args.mlflow is not None:
        overrides["log.mlflow"] = args.mlflow
    if args.fuse is not None:  # a number is a group size; the study checks every value
        overrides["search.fuse"] = int(args.fuse) if args.fuse.isdigit() else args.fuse
    return overrides


def run_search(args: argparse.Namespace, argv: list[str]) -> int:
    """Validate, start or resume the search, write results; the exit code."""
    run_name = time.strftime("%Y%m%d-%H%M%S") if args.name is None else \
        layout.check_name(args.name, "--name")
    storage = location(args.storage_path)  # a directory, or object storage (s3://...)
    storage = storage if isinstance(storage, ObjectPath) else storage.resolve()
    # relative run:STUDY/RUN weights resolve under this run's storage, in driver and workers
    os.environ.setdefault(STORAGE_ENV, str(storage))
    study = load_study(args.study, quick=args.quick, overrides=parse_overrides(args))
    layout.check_name(study.name, f"{study.path}: the study name (its file name)")
    sizes = preflight.preflight(study)
    run_dir = storage / study.name / run_name
    resolved = {**study.resolved(), "data_sizes": sizes, "run_name": run_name}
    run_checks.check_writable(storage, run_dir.parent)  # first: an unreachable bucket
    run_checks.check_run_dir(run_dir, args.resume, resolved, storage)
    if args.resume:
        tuner.check_growth(study, run_dir)
        download_log(run_dir)
    with terminal.run_log(local_log_dir(run_dir), enabled=not args.verbose) as settle:
        if not args.verbose:
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no colour codes in driver.log
        started = cluster.init_ray(args.address, args.dashboard, cluster.worker_runtime_env())
        try:
            search = start_search(args, study, storage, run_dir, resolved)
            settle()  # the run directory exists now: driver.log moves in
            try:
                search.fit()
            except KeyboardInterrupt:  # a second Ctrl-C: Ray stopped its graceful shutdown
                pass
        finally:
            if started:  # inside the redirect: Ray's last lines go to driver.log too
                cluster.stop_ray()
    upload_log(run_dir)
    code = outcome.write_results(run_dir, resolved, study)
    if isinstance(run_dir, Path):  # optuna.db is SQLite: a local (or mounted) run only
        tracking.sync_optuna(study, run_dir)  # it ends as the parquet files, whatever it missed
    if code == 0:
        outcome.print_next_steps(run_dir, study.log.get("mlflow"))
    elif not args.verbose:
        print(f"Ray's full output: {run_dir / layout.DRIVER_LOG}", file=sys.stderr)
    if code == 130:
        print(f"search interrupted; results so far are in {run_dir}\n"
              f"continue it with: {resume_command(argv, run_name)}", file=sys.stderr)
    return code


def local_log_dir(run_dir: Path | ObjectPath) -> Path:
    """Where driver.log is written while the search runs: the run directory, or for a run on
    object storage (descriptors need a local file) a local directory uploaded at the end."""
    if isinstance(run_dir, Path):
        return run_dir
    local = Path(tempfile.gettempdir(), f"tune_hw-{os.getuid()}", run_dir.parent.name,
                 run_dir.name)
    local.mkdir(parents=True, exist_ok=True)
    return local


def download_log(run_dir: Path | ObjectPath) -> None:
    """A resumed run on object storage continues its log: the bucket's driver.log comes down
    first, unless the local copy holds at least as much (this machine ran the last session
    and was stopped before it uploaded)."""
    remote = run_dir / layout.DRIVER_LOG
    if isinstance(run_dir, Path) or not remote.is_file():
        return
    local = local_log_dir(run_dir) / layout.DRIVER_LOG
    if not local.is_file() or local.stat().st_size < remote.stat().st_size:
        data = remote.read_bytes()
        atomic_write(local, lambda tmp: Path(tmp).write_bytes(data))


def upload_log(run_dir: Path | ObjectPath) -> None:
    """Copy the local driver.log of a run on object storage into its run directory."""
    local = local_log_dir(run_dir) / layout.DRIVER_LOG
    if not isinstance(run_dir, Path) and local.is_file():
        atomic_write(run_dir / layout.DRIVER_LOG, lambda tmp: shutil.copyfile(local, tmp))


def start_search(args: argparse.Namespace, study: Study, storage: Path | ObjectPath,
                 run_dir: Path | ObjectPath, resolved: dict[str, Any]) -> Any:
    """Check the cluster, write study.yaml and make (or restore) the Tuner, with the
    progress display unless --verbose asks for Ray's own output."""
    cluster.check_shared_storage(storage)
    if not args.address:
        cluster.check_trial_fits(study)
    # a running run is readable from the start; a grown one records its new total
    results.write_study(run_dir, resolved)
    display = [] if args.verbose else [progress.Progress(
        study, outcome.expected_trials(study), tuner.max_epochs(study))]
    verbose = None if args.verbose else 0  # 0: Ray's own reporter prints nothing
    if args.resume:
        return tuner.restore_tuner(study, run_dir, callbacks=display, verbose=verbose)
    return tuner.build_tuner(study, storage, run_dir.name, callbacks=display, verbose=verbose)


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
