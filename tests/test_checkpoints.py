"""`weights: run:<study>/<run>`: the best checkpoint of an earlier run, and clear errors."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest
import torch

from tune_hw import checkpoints, models, search
from tune_hw.errors import UserError


def fake_run(run_dir, trials, reports, state=None):
    """A run directory shaped like Tune's: trials.parquet, trial_<id>/result.json, checkpoints.

    `reports`: trial id -> list of (epoch, val_acc, checkpoint kept on disk?).
    """
    run_dir.mkdir(parents=True)
    pd.DataFrame(trials).to_parquet(run_dir / "trials.parquet")
    for trial_id, rows in reports.items():
        trial_dir = run_dir / f"trial_{trial_id}"
        trial_dir.mkdir()
        lines = []
        for index, (epoch, val_acc, kept) in enumerate(rows):
            name = f"checkpoint_{index:06d}"
            lines.append(json.dumps({"epoch": epoch, "val_acc": val_acc,
                                     "checkpoint_dir_name": name}))
            if kept:
                (trial_dir / name).mkdir()
                torch.save(state or {"model": {"w": torch.full((1,), float(epoch))},
                                     "epoch": epoch}, trial_dir / name / "state.pt")
        (trial_dir / "result.json").write_text("\n".join(lines) + "\n")
    return run_dir


TRIALS = {"trial_id": ["a", "b", "c", "d"],
          "status": ["completed", "completed", "diverged", "completed"],
          "best_val_acc": [0.8, 0.9, 0.95, 0.99],
          "config/model.name": ["resnet18", "resnet18", "resnet18", "hist_gradient_boosting"]}


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_HW_STORAGE", str(tmp_path))
    monkeypatch.delenv("TUNE_ORIG_WORKING_DIR", raising=False)
    return tmp_path


def test_best_trial_then_its_best_kept_checkpoint(storage):
    # b is best (c diverged, d is a tree baseline without weights); its best epoch 2 is kept,
    # epoch 1 was deleted by Tune's num_to_keep
    fake_run(storage / "pretrain" / "r1", TRIALS, {
        "a": [(1, 0.8, True)],
        "b": [(1, 0.5, False), (2, 0.9, True), (3, 0.7, True)],
    })
    path = checkpoints.best_run_checkpoint("pretrain/r1")
    assert path == storage / "pretrain" / "r1" / "trial_b" / "checkpoint_000001" / "state.pt"
    assert checkpoints.best_run_checkpoint(str(storage / "pretrain" / "r1")) == path


def test_ties_go_to_the_earliest_epoch(storage):
    fake_run(storage / "s" / "r", {"trial_id": ["a"], "status": ["completed"],
                                   "best_val_acc": [0.9]},
             {"a": [(1, 0.9, True), (2, 0.9, True)]})
    assert checkpoints.best_run_checkpoint("s/r").parent.name == "checkpoint_000000"


def test_storage_root_defaults_to_runs_of_the_launch_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNE_HW_STORAGE", raising=False)
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(tmp_path))  # what Tune sets in a trial
    assert checkpoints.run_directory("pretrain/full") == tmp_path / "runs" / "pretrain" / "full"


@pytest.mark.parametrize("ref, message", [
    ("pretrain", "must be run:<study>/<run_name>"),
    ("no_such_study/r1", "is not a tune_hw run.*run the source study first"),
    # only the conventional names are created on demand: a typo must not start a long run
    ("pretrain/ful", r"create it with `python -m tune_hw.search pretrain --name ful`"),
])
def test_bad_references_are_one_clear_error(storage, ref, message):
    with pytest.raises(UserError, match=message):
        checkpoints.best_run_checkpoint(ref)


def test_a_run_without_checkpoints_or_usable_trials_is_an_error(storage):
    fake_run(storage / "s" / "empty", TRIALS, {"b": [(1, 0.9, False)]})
    with pytest.raises(UserError, match="has no checkpoint"):
        checkpoints.best_run_checkpoint("s/empty")
    fake_run(storage / "s" / "bad", {**TRIALS, "status": ["diverged"] * 3 + ["completed"]}, {})
    with pytest.raises(UserError, match="no neural trial"):
        checkpoints.best_run_checkpoint("s/bad")


def test_a_missing_run_of_a_known_study_is_created_first(storage, monkeypatch):
    calls = []

    def fake_search(command, env):
        calls.append(command)
        study, name = command[3], command[5]
        fake_run(storage / study / name, {"trial_id": ["a"], "status": ["completed"],
                                          "best_val_acc": [0.5]}, {"a": [(1, 0.5, True)]})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(checkpoints.subprocess, "run", fake_search)
    path = checkpoints.best_run_checkpoint("pretrain/quick")
    assert calls[0][1:] == ["-m", "tune_hw.search", "pretrain", "--name", "quick",
                            "--storage-path", str(storage), "--quick"]
    assert path.is_file()
    checkpoints.best_run_checkpoint("pretrain/quick")  # now it exists: nothing runs again
    assert len(calls) == 1


def test_a_failed_creation_or_a_trial_never_runs_a_study(storage, monkeypatch):
    monkeypatch.setattr(checkpoints.subprocess, "run",
                        lambda command, env: subprocess.CompletedProcess(command, 1))
    with pytest.raises(UserError, match="failed"):
        checkpoints.best_run_checkpoint("pretrain/full")
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(storage))
    with pytest.raises(UserError, match="not visible from this worker"):
        checkpoints.best_run_checkpoint("pretrain/full")


def test_finetune_loads_the_run_checkpoint_backbone(storage):
    source = models.build("resnet18", (1, 8, 8), 5)
    fake_run(storage / "pretrain" / "r1", {"trial_id": ["a"], "status": ["completed"],
                                           "best_val_acc": [0.9]},
             {"a": [(1, 0.9, True)]}, state={"model": source.state_dict(), "epoch": 1})
    net = models.build("resnet18", (1, 8, 8), 5, mode="finetune", weights="run:pretrain/r1")
    assert torch.equal(net.conv1.weight, source.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert not torch.equal(net.fc.weight, source.fc.weight)  # the head is always new


def test_a_tree_checkpoint_has_no_weights_to_load(storage):
    fake_run(storage / "s" / "trees", {"trial_id": ["a"], "status": ["completed"],
                                       "best_val_acc": [0.9]},
             {"a": [(1, 0.9, True)]}, state={"epoch": 1})
    with pytest.raises(UserError, match="holds no model tensors"):
        models.build("resnet18", (1, 8, 8), 5, mode="finetune", weights="run:s/trees")


def test_cli_stops_on_a_missing_run_with_one_line(storage, capsys):
    grid = '{grid: [{name: resnet18, mode: finetune, weights: "run:nosuch/r1"}]}'
    code = search.main(["transfer", "--quick", "--set", f"space.model={grid}",
                        "--storage-path", str(storage)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: weights run:nosuch/r1:") and "not a tune_hw run" in err[0]
