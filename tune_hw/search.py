"""Run a study from search_spaces/ as a Ray Tune search and write its results as parquet.

    python -m tune_hw.search lr_batch                          # full study, local Ray
    python -m tune_hw.search lr_batch --quick --name r1        # CI-sized profile, ~1 minute
    python -m tune_hw.search lr_batch --set train.epochs=5 --num-samples 8
    python -m tune_hw.search my_study.yaml --storage-path /shared/runs
    python -m tune_hw.search lr_batch --address auto           # inside a Ray cluster
    python -m tune_hw.search lr_batch --name r1 --resume       # continue an interrupted run

The run lands in <storage-path>/<study>/<run-name>/: trials.parquet, epochs.parquet,
grads.parquet (gradient tracking only), study.yaml, next to Ray's experiment files.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tune_hw import layout, ray_files, results, strict_yaml, studies
from tune_hw.distributions import Distribution
from tune_hw.errors import ArgumentParser, UserError
from tune_hw.layout import DEFAULT_STORAGE, STORAGE_ENV
from tune_hw.studies import Study

LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode


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
    return overrides


# ------------------------------------------------------------------------ search space

def to_tune(dist: Distribution) -> Any:
    """One study distribution as a Ray Tune domain."""
    from ray import tune

    if dist.kind == "uniform":
        return tune.uniform(dist.low, dist.high)
    if dist.kind == "loguniform":
        return tune.loguniform(dist.low, dist.high)
    if dist.kind == "int":
        return tune.randint(int(dist.low), int(dist.high) + 1)  # study ranges are inclusive
    if dist.kind == "choice":
        return tune.choice(list(dist.values))
    return tune.grid_search(list(dist.values))


def param_space(study: Study) -> dict[str, Any]:
    """The flat dotted Tune param_space: fixed values plus one domain per searched key."""
    space = study.fixed_config()
    for key, dist in study.distributions.items():
        space[key] = to_tune(dist)
    return space


def make_search_alg(study: Study) -> Any:
    """Optuna's TPE, or Tune's own random/grid generator, with at most `max_concurrent` live
    trials (Optuna: by default as many as the running cluster fits at once)."""
    seed = study.train["seed"]
    limit = study.search["max_concurrent"]
    if study.search["algorithm"] != "optuna":
        from ray.tune.search import BasicVariantGenerator

        # it takes its own limit (0 = none): ConcurrencyLimiter refuses a non-Searcher
        return BasicVariantGenerator(random_state=seed, max_concurrent=limit)
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    # Without a ConcurrencyLimiter Tune keeps one trial of a custom searcher pending at a time,
    # so a cluster fills one trial after another and short trials all reuse the first actor.
    limit = limit or concurrent_slots(study.resources)
    searcher = OptunaSearch(seed=seed)
    return ConcurrencyLimiter(searcher, max_concurrent=limit) if limit > 0 else searcher


def concurrent_slots(resources: dict[str, float]) -> int:
    """How many trials of `resources` the running Ray cluster fits at once (0: Ray not up)."""
    import ray

    if not ray.is_initialized():
        return 0
    total = ray.cluster_resources()
    fits = [math.floor(total.get(key, 0.0) / resources[name] + 1e-6)
            for key, name in (("CPU", "cpu"), ("GPU", "gpu")) if resources.get(name, 0) > 0]
    return min(fits, default=0)


def check_trial_fits(study: Study) -> None:
    """On a local Ray a trial asking for more than the machine has would wait forever."""
    import ray

    if concurrent_slots(study.resources) < 1:
        have = ray.cluster_resources()
        raise UserError(f"a trial asks for cpu {study.resources['cpu']:g} and gpu "
                        f"{study.resources['gpu']:g} but this machine has {have.get('CPU', 0):g} "
                        f"CPUs and {have.get('GPU', 0):g} GPUs: lower --cpus-per-trial / "
                        "--gpus-per-trial (resources:), or join a cluster with --address")


def max_epochs(study: Study) -> int:
    dist = study.distributions.get("train.epochs")
    return int(dist.upper if dist else study.train["epochs"])


def make_scheduler(study: Study) -> Any:
    """ASHA on the reported epoch (it survives restores), or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if study.scheduler["name"] == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=max_epochs(study),
                         grace_period=study.scheduler["grace_period"],
                         reduction_factor=study.scheduler["reduction_factor"])


# ------------------------------------------------------------------------------ checks

def preflight(study: Study) -> dict[str, int] | None:
    """Load every dataset variant and build every model variant once in the driver, so mistakes
    stop here; each dataset is released after its checks (the driver never trains on it).

    Returns the split sizes when every variant has the same ones (trials record their own).
    """
    sizes = [_check_dataset_variant(study, dataset)
             for dataset in studies.section_variants(study, "dataset")]
    return sizes[0] if all(s == sizes[0] for s in sizes) else None


def _check_dataset_variant(study: Study, dataset: dict[str, Any]) -> dict[str, int]:
    """Load one dataset variant (not through the trials' per-process cache) and build every
    model variant on it; the split sizes."""
    from tune_hw import data, models

    splits = data.load(dataset["name"], **{k: v for k, v in dataset.items() if k != "name"})
    sizes = splits.sizes()
    empty = [name for name, n in sizes.items() if n == 0]
    if empty:
        raise UserError(f"{study.path}: dataset {dataset} has an empty {empty[0]} split: give "
                        "it more rows (n_train, n_val, n_test or the fractions)")
    batch_size = max(v["batch_size"] for v in studies.section_variants(study, "train"))
    if batch_size > sizes["train"]:
        raise UserError(f"{study.path}: train.batch_size {batch_size} is larger than the "
                        f"{sizes['train']} training rows of {dataset['name']}: lower it or raise "
                        "dataset.n_train")
    for model in studies.section_variants(study, "model"):
        hp = {k: v for k, v in model.items() if k != "name"}
        models.build(model["name"], splits.in_shape, splits.num_classes, **hp)
    return sizes


# ------------------------------------------------------------------------------ running

def init_ray(address: str | None, dashboard: bool = False,
             runtime_env: dict[str, Any] | None = None) -> None:
    """Join a cluster at `address`, or start a local Ray (dashboard on 127.0.0.1 if asked);
    `runtime_env` is what every trial worker of this job gets."""
    import ray

    if ray.is_initialized():
        return
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
        return
    # address="local": always a new Ray, never someone else's `ray start` cluster on this host
    context = ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1",
                       runtime_env=runtime_env)
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        print(f"warning: the local Ray listens on {node_ip}, not 127.0.0.1: Ray was imported "
              f"before tune_hw could set {LOOPBACK_ONLY}=0; set it before starting Python",
              file=sys.stderr)
    if dashboard:
        print(f"Ray dashboard: http://{context.dashboard_url}", flush=True)


@contextlib.contextmanager
def ray_on_loopback(local: bool) -> Iterator[None]:
    """While a local run starts, Ray binds every server to 127.0.0.1: GCS, raylet, workers,
    dashboard agent, metrics exporters.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine mode (its default on macOS
    and Windows): the node's address is the loopback one, and each server binds the node's
    address. Ray reads it when it is first imported, and the daemons it starts inherit it;
    `_node_ip_address="127.0.0.1"` alone is resolved back to the machine's network address.
    Cluster runs (`--address`) keep Ray's behaviour; the old value comes back afterwards so a
    caller in the same process can still start `ray start` cluster nodes.
    """
    old = os.environ.get(LOOPBACK_ONLY)
    if local:
        os.environ[LOOPBACK_ONLY] = "0"
    try:
        yield
    finally:
        if local and old is None:
            os.environ.pop(LOOPBACK_ONLY, None)
        elif local:
            os.environ[LOOPBACK_ONLY] = old


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a dead HOST:PORT; ray.init would retry the GCS for minutes."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and friends: ray.init itself fails fast when no cluster is found
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}); "
                        "start one with `ray start --head` or check the address") from None


def check_shared_storage(storage: Path) -> None:
    """On more than one node a local storage path would scatter trial files across machines."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1 and not _is_network_fs(storage):
        raise UserError(f"--storage-path {storage} is a local directory but the cluster has "
                        f"{len(nodes)} nodes: use a filesystem every node mounts (NFS, EFS, "
                        "Lustre...), or set TUNE_HW_SHARED_STORAGE=1 if this path is shared")


def worker_runtime_env() -> dict[str, Any]:
    """What trial workers need of the driver's environment: the storage root that relative
    `run:` weights resolve under (workers on other nodes do not inherit the driver's
    variables; a `ray job submit` that sets it in its own runtime_env keeps it)."""
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    job_vars = (job.get("runtime_env") or {}).get("env_vars") or {}
    if STORAGE_ENV in job_vars:  # Ray refuses to merge one variable set twice
        return {}
    return {"env_vars": {STORAGE_ENV: os.environ[STORAGE_ENV]}}


def _is_network_fs(path: Path, mounts: Path = Path("/proc/mounts")) -> bool:
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


def make_trainable(study: Study, run_dir: Path, trainable: Callable | None = None) -> Any:
    """The Tune trainable with the study's per-trial resources; tune_trainable also gets the
    run directory (where each trial keeps its states) and the study's ranking."""
    from ray import tune

    from tune_hw.ray_trial import tune_trainable

    if trainable is None:
        trainable = tune.with_parameters(tune_trainable, run_dir=str(run_dir),
                                         ranking=study.ranking)
    return tune.with_resources(trainable,
                               {"cpu": study.resources["cpu"], "gpu": study.resources["gpu"]})


def build_tuner(study: Study, storage: Path, run_name: str,
                trainable: Callable | None = None) -> Any:
    """A new Tuner for the study; `trainable` replaces tune_trainable (tests inject faults).

    Tune keeps no checkpoints (each trial keeps its own states: ray_trial.TrialStates), so it
    never forces experiment snapshots; it takes them on its own schedule (about 5 % of time).
    """
    from ray import tune

    search = study.search
    return tune.Tuner(
        make_trainable(study, storage / study.name / run_name, trainable),
        param_space=param_space(study),
        tune_config=tune.TuneConfig(
            metric=search["metric"], mode=search["mode"], num_samples=search["num_samples"],
            search_alg=make_search_alg(study), scheduler=make_scheduler(study),
            reuse_actors=True, trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(storage / study.name),
            failure_config=tune.FailureConfig(max_failures=study.failure["max_failures"])),
    )


def restore_tuner(study: Study, run_dir: Path, trainable: Callable | None = None) -> Any:
    """Ray's Tuner.restore with the searcher's state: finished trials stay finished,
    unfinished ones continue from their latest state, errored ones stay errored."""
    from ray import tune

    return tune.Tuner.restore(str(run_dir), make_trainable(study, run_dir, trainable),
                              resume_unfinished=True, resume_errored=False,
                              restart_errored=False, param_space=param_space(study))


def _trial_name(trial: Any) -> str:
    return layout.trial_dir_name(trial.trial_id)


def print_best(run: results.Run, study: Study) -> None:
    """The best trial by the study's ranking, its searched values and scores."""
    ranked = study.ranking.ranked(run.trials)
    statuses = run.trials["status"].value_counts().to_dict()
    if ranked.empty:
        print(f"no trial finished a healthy epoch (statuses: {statuses}); run directory: "
              f"{run.path}")
        return
    best = ranked.iloc[0]
    searched = [k for k in best.index if k.startswith("config/") and (
        k.removeprefix("config/") in study.space  # a searched key, or a key of a searched section
        or k.removeprefix("config/").partition(".")[0] in study.space)]
    config = {k.removeprefix("config/"): best[k].item() if hasattr(best[k], "item") else best[k]
              for k in searched if not _missing(best[k])}
    print(f"best trial {best['trial_id']} (by validation): {config}")
    print(f"  val_acc {best['best_val_acc']:.4f}  val_loss {best['val_loss_at_best']:.4f}  "
          f"test_acc {best['test_acc_at_best']:.4f}  at epoch {int(best['best_epoch'])} "
          f"(ranked by {study.ranking.metric}, {study.ranking.mode})")
    print(f"  statuses: {statuses}")
    print(f"run directory: {run.path}")


def no_result_line(run: results.Run) -> str | None:
    """One line when no trial reported a single epoch: how many failed and the first error."""
    if len(run.epochs) or run.trials.empty:
        return None
    errors = run.trials["error"].dropna()
    first = f"; the first error: {errors.iloc[0]}" if len(errors) else ""
    return (f"no trial produced a result: {len(errors)} of {len(run.trials)} trials failed"
            f"{first} (run directory: {run.path})")


# ----------------------------------------------------------------------- resume, interrupts

def check_run_dir(run_dir: Path, resume: bool, resolved: dict[str, Any], storage: Path) -> None:
    """A new run must not overwrite anything; a resumed run must exist, be trusted, be whole
    and match the study."""
    if not resume:
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UserError(f"run {run_dir.name!r} already exists in {run_dir.parent}: add "
                            "--resume to continue it, or choose another --name")
        return
    if not run_dir.is_dir():
        raise UserError(f"nothing to resume: no run {run_dir.name!r} under {run_dir.parent}; "
                        "check --name and --storage-path, or drop --resume to start it")
    check_trusted(run_dir, storage)
    check_restorable(run_dir)
    stored = results.read_study(run_dir)
    current = strict_yaml.load(strict_yaml.dump(resolved), "the study", allow_null=True)
    differ = sorted(k for k in current if k != "run_name" and stored.get(k) != current[k])
    if differ:
        raise UserError(f"run {run_dir.name!r} was made with a different study (differs in "
                        f"{differ}): resume with the same study, --quick and --set options, "
                        "or start a new --name")


def check_trusted(run_dir: Path, storage: Path) -> None:
    """Ray's restore unpickles files of the run: restore only files this user owns, in
    directories (from the storage path down to each trial's) that nobody else can write."""
    above = [p for p in run_dir.parents if p == storage or storage in p.parents]
    trials = [p for p in run_dir.iterdir() if p.is_dir()]
    for path in (*reversed(above), run_dir, *trials, *layout.restore_inputs(run_dir)):
        info = path.stat()
        problem = (f"owned by user id {info.st_uid}, not you" if info.st_uid != os.getuid()
                   else f"writable by others (mode {info.st_mode & 0o777:o})"
                   if info.st_mode & 0o022 else None)
        if problem:
            raise UserError(f"refusing to resume from {path}: it is {problem}, and restoring "
                            "the run would unpickle its files; resume only runs you made in "
                            "directories only you can write (chmod -R go-w), or start a new "
                            "--name")


def check_restorable(run_dir: Path) -> None:
    """Refuse a damaged run before Ray reads it: Ray would log a traceback, start the
    experiment over, and the new trials alone would replace the old results."""
    if ray_files.read_experiment_state(run_dir) is None:  # its own error when damaged
        raise UserError(f"nothing to resume: run {run_dir.name!r} in {run_dir.parent} has no "
                        f"Ray experiment state ({layout.EXPERIMENT_STATE}); start it again "
                        "under a new --name")
    pickles = [run_dir / layout.TUNER_STATE,
               *(layout.newest(run_dir, glob) for glob in layout.PICKLED_STATES)]
    for path in pickles:
        if path is not None and not _whole_pickle(path):
            raise UserError(f"{path} is missing or damaged (cut short): the run is not resumed "
                            "and nothing was changed; restore it from a backup, or start a "
                            "new --name")


def _whole_pickle(path: Path) -> bool:
    """True when `path` is a complete pickle; its opcodes are walked, never executed."""
    import pickletools

    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except (OSError, ValueError, EOFError):
        return False
    return True


def expected_trials(study: Study) -> int:
    """How many trials a finished search has: num_samples times the size of every grid."""
    return math.prod([study.search["num_samples"],
                      *(dist.grid_size for dist in study.distributions.values())])


def was_interrupted(records: list[results.TrialRecord], study: Study) -> bool:
    return len(records) < expected_trials(study) or not all(r.ended for r in records)


def resume_command(argv: list[str], run_name: str) -> str:
    """The exact command that continues this run."""
    args = [a for a in argv if a != "--resume"]
    if "--name" not in args and not any(a.startswith("--name=") for a in args):
        args += ["--name", run_name]
    return " ".join(["python -m tune_hw.search", *map(shlex.quote, args), "--resume"])


def write_results(run_dir: Path, resolved: dict[str, Any], study: Study) -> int:
    """Write the parquet files from what Ray stored; the exit code: 0, 130 when the search was
    interrupted, 1 when it ran but no trial produced a result."""
    records = ray_files.read_ray_trials(run_dir)
    run = results.write_run(run_dir, records, resolved)
    if was_interrupted(records, study):
        return 130
    failed = no_result_line(run)
    if failed:
        print(f"error: {failed}", file=sys.stderr)
        return 1
    print_best(run, study)
    return 0


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


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
    study = studies.load_study(args.study, quick=args.quick, overrides=parse_overrides(args))
    layout.check_name(study.name, f"{study.path}: the study name (its file name)")
    sizes = preflight(study)
    run_dir = storage / study.name / run_name
    resolved = {**study.resolved(), "data_sizes": sizes, "run_name": run_name}
    check_run_dir(run_dir, args.resume, resolved, storage)
    check_writable(storage, run_dir.parent)
    init_ray(args.address, args.dashboard, worker_runtime_env())
    check_shared_storage(storage)
    if not args.address:
        check_trial_fits(study)
    if not args.resume:
        results.write_study(run_dir, resolved)  # a running run is readable from the start
    tuner = restore_tuner(study, run_dir) if args.resume else build_tuner(study, storage,
                                                                          run_name)
    try:
        tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: Ray has stopped its graceful shutdown
        pass
    code = write_results(run_dir, resolved, study)
    if code == 130:
        print(f"search interrupted; results so far are in {run_dir}\n"
              f"continue it with: {resume_command(argv, run_name)}", file=sys.stderr)
    return code


def check_writable(storage: Path, study_dir: Path) -> None:
    """Runs can be written under the storage path: make the study's directory and a probe
    file, before Ray starts, then remove what the probe made."""
    import tempfile

    made = [p for p in (study_dir, *study_dir.parents) if not p.exists()]  # deepest first
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=study_dir).close()
    except OSError as exc:
        raise UserError(f"--storage-path {storage}: cannot write runs into {study_dir} "
                        f"({exc.strerror or exc}); give a directory you can write") from None
    finally:
        for path in made:
            with contextlib.suppress(OSError):
                path.rmdir()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        with ray_on_loopback(local=not args.address):  # before anything imports Ray
            return run_search(args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
