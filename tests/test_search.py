"""One real Ray Tune run end to end through the CLI, and the CLI's error lines."""

import re

import pandas as pd
import pytest

from tune_hw import results
from tune_hw.ranking import Ranking


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from conftest import run_cli
    storage = tmp_path_factory.mktemp("runs")
    proc = run_cli("tune_hw.search", "lr_batch", "--quick", "--storage-path", str(storage),
                   "--name", "r1", "--set", "search.num_samples=4")
    return proc, storage / "lr_batch" / "r1"


def test_quick_lr_batch_writes_the_schema(quick_run):
    proc, run_dir = quick_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    epochs = pd.read_parquet(run_dir / "epochs.parquet")
    assert set(results.EPOCH_COLUMNS) <= set(epochs.columns)
    expected = {"trial_id", "status", "config/train.lr", "config/train.batch_size",
                "config/model.width", "config/dataset.name", *results.TRIAL_SUMMARY_COLUMNS}
    assert expected <= set(trials.columns)
    assert len(trials) == 4 and trials.trial_id.is_unique
    assert set(trials.status) <= {"completed", "early_stopped", "diverged"}
    assert trials.node_id.notna().all() and (trials.num_params == 25802).all()
    # every trial's rows are its epochs 1..final_epoch, and steps follow the batch size
    for _, trial in trials.iterrows():
        rows = epochs[epochs.trial_id == trial.trial_id]
        assert rows.epoch.tolist() == list(range(1, trial.final_epoch + 1))
        assert (rows.steps == -(-2000 // trial["config/train.batch_size"])).all()
    assert (run_dir / "study.yaml").is_file()
    study = results.load_run(run_dir).study
    assert study["data_sizes"] == {"train": 2000, "val": 1000, "test": 1000}


def test_cli_prints_the_best_config_and_run_directory(quick_run):
    proc, run_dir = quick_run
    trials = pd.read_parquet(run_dir / "trials.parquet")
    best = trials.sort_values("best_val_acc", ascending=False).iloc[0]
    assert f"best trial {best.trial_id} (by validation)" in proc.stdout
    assert f"val_acc {best.best_val_acc:.4f}" in proc.stdout
    assert f"run directory: {run_dir}" in proc.stdout


def test_piped_output_is_a_few_progress_lines_and_rays_goes_to_driver_log(quick_run):
    proc, run_dir = quick_run
    out = proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) <= 40 and proc.stderr == "", out[-3000:]
    assert "Checkpoint successfully created" not in out and not re.search(r"\bINFO\b", out)
    assert "Configuration for experiment" not in out and "ray/session_" not in out
    progress = [line for line in proc.stdout.splitlines() if re.match(r"\[\w+\] trials ", line)]
    final = re.search(r"trials 4/4 done \| 0 running, 0 pending \| (.*) \| elapsed .* \| "
                      r"best val_acc (\d\.\d{4}) \(trial ([\w-]+)\): train\.lr=", progress[-1])
    assert final, progress
    # the display and the final block agree: both read the trials through the one ranking
    trials = pd.read_parquet(run_dir / "trials.parquet")
    counts = ", ".join(f"{n} {s}" for s, n in trials.status.value_counts(sort=False).items())
    assert sorted(final.group(1).split(", ")) == sorted(counts.split(", "))
    best = Ranking().ranked(trials).iloc[0]
    assert (final.group(3), final.group(2)) == (best.trial_id, f"{best.best_val_acc:.4f}")
    assert f"python -m tune_hw.report {run_dir}" in proc.stdout
    assert f"tensorboard --logdir {run_dir}" in proc.stdout
    log = (run_dir / "driver.log").read_text()
    # Ray's output, all of it: one marker checkpoint per Tune trial (a fused group)
    assert log.count("Checkpoint successfully created") == trials.group_id.nunique()
    assert "Started a local Ray instance" in log and "Configuration for experiment" in log


@pytest.mark.parametrize("args, message", [
    (["no_such_study"], "unknown study 'no_such_study'"),
    (["lr_batch", "--set", "train.lr=1e-3"], "train.lr must be float, got '1e-3'"),
    (["lr_batch", "--set", "train.batch_size=4096", "--quick"],
     "larger than the 2000 training rows"),
    (["lr_batch", "--set", "nonsense"], "is not KEY=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(cli, args, message):
    proc = cli("tune_hw.search", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_malformed_study_file_is_one_line(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("description: [oops\nmodel: {name: mlp}\n")
    proc = cli("tune_hw.search", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {path}: invalid YAML" in proc.stderr
