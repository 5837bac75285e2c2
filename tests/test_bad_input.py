"""Every kind of bad input, through the real CLIs: one clear line, exit 2, no traceback."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli

BASE = """\
description: bad-input base
dataset: {name: countries, n_train: 500, n_val: 100, n_test: 100}
model: {name: mlp, width: 16, depth: 2}
train: {epochs: 2, lr: 0.01, batch_size: 32}
space:
  train.lr: {loguniform: [1.0e-4, 1.0]}
search: {algorithm: optuna, num_samples: 2}
scheduler: {name: asha}
"""

# name: (text replaced in BASE, replacement, extra CLI args, what the one line must say)
CASES = {
    "invalid_yaml": ("description: bad-input base", "description: [unclosed", [],
                     "invalid YAML at line"),
    "unknown_key": ("description: bad-input base", "descripton: typo", [],
                    "unknown key(s) ['descripton']"),
    "unknown_model": ("{name: mlp, width: 16, depth: 2}", "{name: transformer}", [],
                      "unknown model 'transformer': use one of"),
    "unknown_dataset": ("{name: countries,", "{name: imagenet,", [],
                        "unknown dataset 'imagenet': use one of"),
    "unknown_optimizer": ("lr: 0.01,", "lr: 0.01, optimizer: lion,", [],
                          "train.optimizer is 'lion': use one of"),
    "unknown_scheduler": ("{name: asha}", "{name: pbt}", [], "scheduler.name is 'pbt'"),
    "wrong_type": ("width: 16", "width: wide", [], "model.width must be int, got 'wide'"),
    "low_not_below_high": ("[1.0e-4, 1.0]", "[1.0, 1.0e-4]", [], "low must be < high"),
    "log_range_touches_zero": ("[1.0e-4, 1.0]", "[0.0, 1.0]", [], "a log range must be > 0"),
    "string_for_number": ("[1.0e-4, 1.0]", "[1e-4, 1.0]", [], "'1e-4' is a string"),
    "empty_space": ("space:\n  train.lr: {loguniform: [1.0e-4, 1.0]}", "space: {}", [],
                    "space is empty"),
    "num_samples_below_one": ("num_samples: 2", "num_samples: 0", [],
                              "search.num_samples must be >= 1"),
    "negative_epochs": ("epochs: 2", "epochs: -3", [], "train.epochs must be >= 1, got -3"),
    "batch_larger_than_train_set": ("batch_size: 32", "batch_size: 4096", [],
                                    "larger than the 500 training rows"),
    "missing_data_root": ("{name: countries, n_train: 500, n_val: 100, n_test: 100}",
                          "{name: mnist, root: /no/such/data/root}", [],
                          "data root /no/such/data/root does not exist"),
    "unreachable_address": ("", "", ["--address", "127.0.0.1:1"],
                            "cannot reach a Ray cluster at '127.0.0.1:1'"),
    "trial_larger_than_machine": ("", "", ["--gpus-per-trial", "1"],
                                  "a trial asks for cpu 1 and gpu 1 but this machine has"),
    "object_storage": ("", "", ["--storage-path", "s3://bucket/runs"],
                       "object storage is not supported for results yet"),
    "misspelled_searched_key": ("  train.lr: {loguniform: [1.0e-4, 1.0]}",
                                "  train.lrr: {loguniform: [1.0e-4, 1.0]}", [],
                                "(from space.train.lrr = 0.0001): train has unknown key(s) "
                                "['lrr']"),
    "bad_optimizer_in_a_choice": ("  train.lr: {loguniform: [1.0e-4, 1.0]}",
                                  "  train.lr: {loguniform: [1.0e-4, 1.0]}\n"
                                  "  train.optimizer: {choice: [sgd, adamx]}", [],
                                  "train.optimizer is 'adamx': use one of"),
    "negative_searched_lr": ("{loguniform: [1.0e-4, 1.0]}", "{uniform: [-1, 0.1]}", [],
                             "train.lr must be > 0, got -1.0"),
    "cpus_per_trial_nan": ("", "", ["--cpus-per-trial", "nan"],
                           "resources.cpu must be a finite number, got nan"),
    "python_object_tag": ("description: bad-input base",
                          "description: !!python/object/apply:os.system ['touch {marker}']",
                          [], "invalid YAML"),
}
NOT_ABOUT_THE_FILE = {"unreachable_address", "trial_larger_than_machine", "object_storage"}


def run_case(tmp_path: Path, name: str):
    old, new, extra, _ = CASES[name]
    marker = tmp_path / f"{name}.ran"
    study = tmp_path / f"{name}.yaml"
    study.write_text(BASE.replace(old, new.replace("{marker}", str(marker)), 1) if old else BASE)
    storage = [] if "--storage-path" in extra else ["--storage-path", str(tmp_path / "runs")]
    return run_cli("tune_hw.search", str(study), *storage, *extra, timeout=120), study, marker


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case at once: each is a fresh interpreter importing torch and Ray."""
    tmp_path = tmp_path_factory.mktemp("bad")
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run_case, tmp_path, name) for name in CASES}
    return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clear_line(outcomes, name):
    proc, study, marker = outcomes[name]
    message = CASES[name][3]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    if name not in NOT_ABOUT_THE_FILE:
        assert str(study) in lines[0] or "data root" in lines[0] or "training rows" in lines[0]
    assert not marker.exists()  # nothing in the file was executed
    assert not (study.parent / "runs").exists()  # no run was started


def test_report_on_a_directory_that_is_not_a_run(tmp_path):
    proc = run_cli("tune_hw.report", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path} is not a tune_hw run: it has no trials.parquet; pass a directory "
        "like runs/<study>/<run_name>"]
