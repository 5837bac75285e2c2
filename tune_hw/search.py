"""Run a study from search_spaces/ as a Ray Tune search and write its results as parquet.

    python -m tune_hw.search lr_batch                          # full study, local Ray
    python -m tune_hw.search lr_batch --quick --name r1        # CI-sized profile, ~1 minute
    python -m tune_hw.search lr_batch --set train.epochs=5 --num-samples 8
    python -m tune_hw.search my_study.yaml --storage-path /shared/runs
    python -m tune_hw.search lr_batch --address auto           # inside a Ray cluster

The run lands in <storage-path>/<study>/<run-name>/: trials.parquet, epochs.parquet,
grads.parquet (gradient tracking only), study.yaml, next to Ray's experiment files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tune_hw import results, spaces
from tune_hw.errors import UserError
from tune_hw.spaces import Study

DEFAULT_STORAGE = "runs"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tune_hw.search",
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
        overrides[key.strip()] = yaml.safe_load(value)
    if args.num_samples is not None:
        overrides["search.num_samples"] = args.num_samples
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    if args.cpus_per_trial is not None:
        overrides["resources.cpu"] = args.cpus_per_trial
    if args.gpus_per_trial is not None:
        overrides["resources.gpu"] = args.gpus_per_trial
    return overrides


# ------------------------------------------------------------------------ search space

def to_tune(kind: str, args: Any) -> Any:
    """One study distribution as a Ray Tune domain."""
    from ray import tune

    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "int":
        return tune.randint(int(args[0]), int(args[1]) + 1)  # study ranges are inclusive
    if kind == "choice":
        return tune.choice(args)
    return tune.grid_search(args)


def param_space(study: Study) -> dict[str, Any]:
    """The flat dotted Tune param_space: fixed values plus one domain per searched key."""
    space = {f"{section}.{key}": value for section in spaces.SECTIONS
             for key, value in getattr(study, section).items()}
    for key, spec in study.space.items():
        space[key] = to_tune(*next(iter(spec.items())))
    return space


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """A whole searched section (a mapping) spreads into its dotted keys."""
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for section, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{section}.{k}": v for k, v in value.items()})
    return flat


def make_search_alg(study: Study) -> Any:
    """Optuna's TPE, or Tune's own random/grid generator."""
    seed = study.train["seed"]
    if study.search["algorithm"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher: Any = OptunaSearch(seed=seed)
    else:
        from ray.tune.search import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=seed)
    if study.search["max_concurrent"] > 0:
        from ray.tune.search import ConcurrencyLimiter

        searcher = ConcurrencyLimiter(searcher, max_concurrent=study.search["max_concurrent"])
    return searcher


def max_epochs(study: Study) -> int:
    spec = study.space.get("train.epochs")
    if spec:
        kind, args = next(iter(spec.items()))
        return int(max(args))
    return int(study.train["epochs"])


def make_scheduler(study: Study) -> Any:
    """ASHA on the reported epoch (it survives restores), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.scheduler["name"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=max_epochs(study),
                         grace_period=study.scheduler["grace_period"],
                         reduction_factor=study.scheduler["reduction_factor"])


# ------------------------------------------------------------------------------ checks

def preflight(study: Study) -> dict[str, int]:
    """Load the data and build each model once in the driver, so mistakes stop here.

    Returns the split sizes (the report's bootstrap needs them).
    """
    from tune_hw import models
    from tune_hw.trainable import load_splits

    sizes: dict[str, int] = {}
    for dataset in spaces.section_variants(study, "dataset"):
        splits = load_splits(dataset)
        sizes = splits.sizes()
        batch_sizes = [v["batch_size"] for v in spaces.section_variants(study, "train")]
        if max(batch_sizes) > sizes["train"]:
            raise UserError(f"{study.path}: train.batch_size {max(batch_sizes)} is larger than "
                            f"the {sizes['train']} training rows of {dataset['name']}: lower it "
                            "or raise dataset.n_train")
        for model in spaces.section_variants(study, "model"):
            hp = {k: v for k, v in model.items() if k != "name"}
            models.build(model["name"], splits.in_shape, splits.num_classes, **hp)
    return sizes


# ------------------------------------------------------------------------------ running

def init_ray(address: str | None, dashboard: bool = False) -> None:
    """Join a cluster at `address`, or start a local Ray (dashboard on 127.0.0.1 if asked)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        if dashboard:
            raise UserError("--dashboard starts a local dashboard; a cluster has its own: open "
                            "it with `ray dashboard cluster.yaml` and drop --dashboard")
        try:
            ray.init(address=address)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot reach a Ray cluster at {address!r} ({exc}); start one with "
                            "`ray start --head` or check the address") from None
        return
    context = ray.init(include_dashboard=dashboard, dashboard_host="127.0.0.1")
    if dashboard:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


def check_shared_storage(storage: Path) -> None:
    """On more than one node a local storage path would scatter trial files across machines."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and "://" not in str(storage) and not _is_network_fs(storage):
        raise UserError(f"--storage-path {storage} is a local directory but the cluster has "
                        f"{len(nodes)} nodes: use shared storage (an NFS mount, or s3://... / "
                        "gs://...), or TUNE_HW_SHARED_STORAGE=1 if this path is shared")


def _is_network_fs(path: Path) -> bool:
    """True when `path` sits on NFS/CIFS or the user vouched that it is shared."""
    import os

    if os.environ.get("TUNE_HW_SHARED_STORAGE") == "1":
        return True
    mounts = Path("/proc/mounts")
    if not mounts.is_file():
        return False
    best, fstype = "", ""
    for line in mounts.read_text().splitlines():
        parts = line.split()
        if len(parts) > 2 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
            best, fstype = parts[1], parts[2]
    return fstype.startswith(("nfs", "cifs", "smb", "lustre", "gpfs", "fuse", "ceph", "beegfs"))


def build_tuner(study: Study, storage: Path, run_name: str) -> Any:
    from ray import tune

    from tune_hw.trainable import tune_trainable

    trainable = tune.with_resources(tune_trainable, {"cpu": study.resources["cpu"],
                                                      "gpu": study.resources["gpu"]})
    search = study.search
    return tune.Tuner(
        trainable,
        param_space=param_space(study),
        tune_config=tune.TuneConfig(
            metric=search["metric"], mode=search["mode"], num_samples=search["num_samples"],
            search_alg=make_search_alg(study), scheduler=make_scheduler(study),
            reuse_actors=True, trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(storage / study.name),
            failure_config=tune.FailureConfig(max_failures=study.failure["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=search["metric"],
                checkpoint_score_order=search["mode"])),
    )


def _trial_name(trial: Any) -> str:
    """Short trial directory names: Ray's default spells the whole config into the path."""
    return f"trial_{trial.trial_id}"


def collect_records(run_dir: Path) -> list[results.TrialRecord]:
    """Every trial of a run as Ray stored it: config, reported rows, error, whether it ended."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(run_dir))
    frames = analysis.trial_dataframes
    records = []
    for trial in analysis.trials:
        frame = frames.get(trial.trial_id)
        rows = frame.to_dict("records") if frame is not None and len(frame) else []
        records.append(results.TrialRecord(
            trial_id=trial.trial_id, config=flatten_config(trial.config), rows=rows,
            error=_error_text(trial), ended=trial.status in ("TERMINATED", "ERROR")))
    return records


def _error_text(trial: Any) -> str | None:
    """The last line of the trial's error file (plain text; nothing is unpickled)."""
    if trial.status != "ERROR":
        return None
    path = Path(trial.path or "", "error.txt")
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "trial failed (no error text stored)"


def print_best(run: results.Run, study: Study) -> None:
    trials = run.trials.dropna(subset=["best_val_acc"])
    if trials.empty:
        print(f"no trial reported a result; run directory: {run.path}")
        return
    best = trials.sort_values("best_val_acc", ascending=False).iloc[0]
    config = {k.removeprefix("config/"): best[k].item() if hasattr(best[k], "item") else best[k]
              for k in best.index if k.startswith("config/")
              and k.removeprefix("config/") in study.space}
    print(f"best trial {best['trial_id']} (by validation): {config}")
    print(f"  val_acc {best['best_val_acc']:.4f}  test_acc {best['test_acc_at_best']:.4f}  "
          f"at epoch {int(best['best_epoch'])}")
    print(f"  statuses: {run.trials['status'].value_counts().to_dict()}")
    print(f"run directory: {run.path}")


def run_search(args: argparse.Namespace) -> Path:
    study = spaces.load_study(args.study, quick=args.quick, overrides=parse_overrides(args))
    sizes = preflight(study)
    storage = Path(args.storage_path).expanduser().resolve()
    run_name = args.name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = storage / study.name / run_name
    init_ray(args.address, args.dashboard)
    check_shared_storage(storage)
    tuner = build_tuner(study, storage, run_name)
    tuner.fit()
    resolved = {**study.resolved(), "data_sizes": sizes, "run_name": run_name}
    run = results.write_run(run_dir, collect_records(run_dir), resolved)
    print_best(run, study)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_search(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
