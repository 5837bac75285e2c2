"""Every kind of bad input, through the real CLIs: one clear line, exit 2, no traceback."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
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
    "unreachable_bucket": ("", "", ["--storage-path",
                                    "s3://bucket/runs?endpoint_override=127.0.0.1:1&scheme=http"],
                           "cannot reach 127.0.0.1:1"),
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
NOT_ABOUT_THE_FILE = {"unreachable_address", "trial_larger_than_machine", "unreachable_bucket"}


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


# ------------------------------------------------- caught before Ray, run in this process

BIG = "description: bad-input base\n# " + "x" * (2 << 20)
# name: (text replaced in BASE, replacement, extra CLI args, what the one line must say);
# {marker}, {dir} and {study} in the arguments are the payload marker, the case's directory
# and the study file
EARLY_CASES = {
    "billion_laughs": ("description: bad-input base",
                       'description: &a ["lol", "lol"]\nx: &b [*a, *a, *a]', [],
                       "anchors and aliases (&name, *name) are not accepted"),
    "file_over_1_mib": ("description: bad-input base", BIG, [], "KiB a study file may have"),
    "not_utf8": ("description: bad-input base", "description: caf\udce9", [], "is not UTF-8"),
    "description_not_a_string": ("description: bad-input base", "description: {a: 1}", [],
                                 "description must be a string"),
    "duplicate_key": ("scheduler: {name: asha}", "scheduler: {name: asha}\ntrain: {epochs: 3}",
                      [], "duplicate key 'train'"),
    "non_string_key": ("scheduler: {name: asha}", "scheduler: {name: asha}\n1: one", [],
                       "key 1 is not a string"),
    "null_value": ("width: 16", "width: null", [], "model.width is null"),
    "empty_value": ("width: 16", "width: ", [], "model.width is null"),
    "float_for_int": ("width: 16", "width: 16.0", [], "model.width must be int, got 16.0"),
    "float_int_bounds": ("  train.lr: {loguniform: [1.0e-4, 1.0]}",
                         "  train.lr: {loguniform: [1.0e-4, 1.0]}\n  model.depth: {int: [1.0, 3.0]}",
                         [], "int bounds must be whole numbers"),
    "set_unclosed": ("", "", ["--set", "train.lr=[unclosed"], "--set train.lr: invalid YAML"),
    "set_yaml_tag": ("", "", ["--set", "train.lr=!!python/object/apply:os.system ['touch {marker}']"],
                     "tags like tag:yaml.org,2002:python/object/apply:os.system are not accepted"),
    "set_null": ("", "", ["--set", "train.lr="], "--set train.lr: is empty (null)"),
    "storage_is_a_file": ("", "", ["--storage-path", "{study}"], "cannot write runs into"),
    "storage_under_proc": ("", "", ["--storage-path", "/proc/tune_hw_runs"],
                           "cannot write runs into /proc/tune_hw_runs/"),
    "name_climbs_out": ("", "", ["--name", "../../x"], "contains a path separator"),
    "name_absolute": ("", "", ["--name", "{dir}/elsewhere"], "contains a path separator"),
    "name_dotdot": ("", "", ["--name", ".."], "--name '..' is '..'"),
    "name_dot": ("", "", ["--name", "."], "--name '.' is '.'"),
    "name_too_long": ("", "", ["--name", "x" * 300], "is 300 bytes long"),
    "resume_name_climbs_out": ("", "", ["--name", "../../x", "--resume"],
                               "contains a path separator"),
    "resume_name_absolute": ("", "", ["--name", "{dir}/elsewhere", "--resume"],
                             "contains a path separator"),
    "num_samples_not_a_number": ("", "", ["--num-samples", "many"],
                                 "argument --num-samples: invalid int value: 'many'"),
    "repeats_zero": ("", "", ["--repeats", "0"], "search.repeats must be >= 1 (seeds per config)"),
    "claim_on_a_value_never_searched": (
        "scheduler: {name: asha}", "scheduler: {name: asha}\nclaims:\n  - name: cnn wins\n"
        "    compare: best_val_acc\n    higher: {model.name: cnn}\n    lower: all", [],
        "claims[0] ('cnn wins'): model.name: 'cnn' is not a value of this study"),
    "claim_with_an_unknown_metric": (
        "scheduler: {name: asha}", "scheduler: {name: asha}\nclaims:\n  - name: fast\n"
        "    trend: speed\n    across: train.lr\n    direction: rising", [],
        "claims[0] ('fast'): trend: unknown metric 'speed'"),
}


def every_path(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize("name", sorted(EARLY_CASES))
def test_bad_input_before_ray_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch,
                                                             name):
    from tune_hw import search

    old, new, extra, message = EARLY_CASES[name]
    marker, study, storage = tmp_path / "payload.ran", tmp_path / "study.yaml", tmp_path / "runs"
    text = BASE.replace(old, new, 1) if old else BASE
    study.write_bytes(text.encode("utf-8", "surrogateescape"))
    args = [a.replace("{marker}", str(marker)).replace("{dir}", str(tmp_path))
            .replace("{study}", str(study)) for a in extra]
    if "--storage-path" not in args:
        args += ["--storage-path", str(storage)]
    monkeypatch.setenv("TUNE_HW_STORAGE", str(storage))  # main() must not leak its own
    before = every_path(tmp_path)
    with pytest.raises(SystemExit) if name == "num_samples_not_a_number" else nullcontext() \
            as exited:
        code = search.main([str(study), *args])
    code = exited.value.code if exited else code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not marker.exists()  # nothing in the input was executed
    assert every_path(tmp_path) == before  # nothing written, inside the storage path or out


# ------------------------------------------------------------------------------ report

def _report_run(tmp_path: Path) -> Path:
    import report_fixtures as F

    F.write_lr_batch_run(tmp_path / "run", n=4)
    return tmp_path / "run"


def _corrupt(name: str, data: bytes):
    def setup(run: Path) -> None:
        (run / name).write_bytes(data)
    return setup


def _columns_missing(run: Path) -> None:
    import pandas as pd

    pd.DataFrame({"trial_id": ["a"], "best_val_acc": [0.5]}).to_parquet(run / "trials.parquet")


def _out_file(run: Path) -> None:
    (run.parent / "out.txt").write_text("my notes")


# name: (setup of the hand-made run, CLI arguments after the run directory, the one line)
REPORT_CASES = {
    "corrupt_trials_parquet": (_corrupt("trials.parquet", b"PAR1 half a file"), [],
                               "trials.parquet cannot be read as parquet"),
    "corrupt_epochs_parquet": (_corrupt("epochs.parquet", b"\0" * 64), [],
                               "epochs.parquet cannot be read as parquet"),
    "columns_missing": (_columns_missing, [], "lacks the column(s) ['status', 'best_epoch'"),
    "study_yaml_aliases": (_corrupt("study.yaml", b"name: &a [x]\nb: [*a, *a]\n"), [],
                           "anchors and aliases"),
    "out_is_a_file": (_out_file, ["--out", "{dir}/out.txt"], "out.txt is a file"),
    "negative_seed": (None, ["--seed", "-1"], "argument --seed: must be 0 or more, got -1"),
    "huge_bootstrap": (None, ["--bootstrap", "1000000000"],
                       "argument --bootstrap: must be from 1 to 100,000, got 1,000,000,000"),
    "zero_top": (None, ["--top", "0"], "argument --top: must be 1 or more, got 0"),
}


@pytest.mark.parametrize("name", sorted(REPORT_CASES))
def test_bad_report_input_is_one_line(tmp_path, capsys, name):
    from tune_hw import report

    setup, extra, message = REPORT_CASES[name]
    run = _report_run(tmp_path)
    if setup:
        setup(run)
    args = [a.replace("{dir}", str(tmp_path)) for a in extra]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "report")]
    capsys.readouterr()
    try:
        code = report.main([str(run), *args])
    except SystemExit as exited:  # argparse
        code = exited.code
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "report").exists()
    if name == "out_is_a_file":
        assert (tmp_path / "out.txt").read_text() == "my notes"
