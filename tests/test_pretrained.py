"""Pretrained weights (tune_hw.pretrained): a state_dict file, `weights: run:<study>/<run>` (the
best saved state of an earlier run), and clear errors."""

from __future__ import annotations

import math
import pickle
import subprocess

import pandas as pd
import pytest
import torch

from tune_hw import models, pretrained, results, search
from tune_hw.errors import UserError


def fake_run(run_dir, trials, best_states, study=None):
    """A run directory as tune_hw writes it: trials.parquet, study.yaml and, per trial that
    reached a healthy epoch, trial_<id>/best.pt (`best_states`: trial id -> saved state)."""
    run_dir.mkdir(parents=True)
    pd.DataFrame(trials).to_parquet(run_dir / "trials.parquet")
    if study is not None:
        results.write_study(run_dir, study)
    for trial_id, state in best_states.items():
        (run_dir / f"trial_{trial_id}").mkdir()
        torch.save(state, run_dir / f"trial_{trial_id}" / "best.pt")
    return run_dir


def weights(value):
    return {"model": {"w": torch.full((1,), float(value))}, "epoch": 1}


# c diverged in its first epoch (no healthy epoch: no score), d is a tree baseline
TRIALS = {"trial_id": ["a", "b", "c", "d"],
          "status": ["completed", "completed", "diverged", "completed"],
          "best_val_acc": [0.8, 0.9, math.nan, 0.99],
          "val_loss_at_best": [0.5, 0.7, math.nan, 0.1],
          "config/model.name": ["resnet18", "resnet18", "resnet18", "hist_gradient_boosting"]}


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_HW_STORAGE", str(tmp_path))
    monkeypatch.delenv("TUNE_ORIG_WORKING_DIR", raising=False)
    return tmp_path


def test_best_trial_then_its_best_state(storage):
    # b is best by val_acc (c has no healthy epoch, d is a tree baseline without weights)
    fake_run(storage / "pretrain" / "r1", TRIALS, {t: weights(i) for i, t in enumerate("abd")})
    path = pretrained.best_run_checkpoint("pretrain/r1")
    assert path == storage / "pretrain" / "r1" / "trial_b" / "best.pt"
    assert pretrained.best_run_checkpoint(str(storage / "pretrain" / "r1")) == path


def test_a_fused_members_best_state_is_in_its_groups_directory(storage):
    run_dir = fake_run(storage / "pretrain" / "f1", {
        "trial_id": ["g1-m00", "g1-m01"], "group_id": ["g1", "g1"],
        "status": ["completed", "completed"], "best_val_acc": [0.5, 0.9]}, {})
    member_dir = run_dir / "trial_g1" / "members" / "g1-m01"
    member_dir.mkdir(parents=True)
    torch.save(weights(1), member_dir / "best.pt")
    assert pretrained.best_run_checkpoint("pretrain/f1") == member_dir / "best.pt"


def test_the_best_trial_follows_the_runs_own_metric(storage):
    # ranked by val_loss (min), a is best although b has the higher accuracy
    study = {"name": "pretrain", "search": {"metric": "val_loss", "mode": "min"}}
    fake_run(storage / "pretrain" / "r2", TRIALS, {t: weights(i) for i, t in enumerate("abd")},
             study)
    assert pretrained.best_run_checkpoint("pretrain/r2").parent.name == "trial_a"


def test_storage_root_defaults_to_runs_of_the_launch_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("TUNE_HW_STORAGE", raising=False)
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(tmp_path))  # what Tune sets in a trial
    assert pretrained.run_directory("pretrain/full") == tmp_path / "runs" / "pretrain" / "full"


@pytest.mark.parametrize("ref, message", [
    ("pretrain", "must be run:<study>/<run_name>"),
    ("no_such_study/r1", "is not a tune_hw run.*run the source study first"),
    # only the conventional names are created on demand: a typo must not start a long run
    ("pretrain/ful", r"create it with `python -m tune_hw.search pretrain --name ful`"),
])
def test_bad_references_are_one_clear_error(storage, ref, message):
    with pytest.raises(UserError, match=message):
        pretrained.best_run_checkpoint(ref)


def test_a_run_without_states_or_usable_trials_is_an_error(storage):
    fake_run(storage / "s" / "empty", TRIALS, {})
    with pytest.raises(UserError, match="saved no best.pt"):
        pretrained.best_run_checkpoint("s/empty")
    no_healthy = {**TRIALS, "best_val_acc": [math.nan] * 3 + [0.9]}
    fake_run(storage / "s" / "bad", {**no_healthy, "status": ["diverged"] * 3 + ["completed"]},
             {})
    with pytest.raises(UserError, match="no neural trial"):
        pretrained.best_run_checkpoint("s/bad")


def test_a_missing_run_of_a_known_study_is_created_first(storage, monkeypatch):
    calls = []

    def fake_search(command, env):
        calls.append(command)
        study, name = command[3], command[5]
        fake_run(storage / study / name, {"trial_id": ["a"], "status": ["completed"],
                                          "best_val_acc": [0.5]}, {"a": weights(1)})
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(pretrained.subprocess, "run", fake_search)
    path = pretrained.best_run_checkpoint("pretrain/quick")
    assert calls[0][1:] == ["-m", "tune_hw.search", "pretrain", "--name", "quick",
                            "--storage-path", str(storage), "--quick"]
    assert path.is_file()
    pretrained.best_run_checkpoint("pretrain/quick")  # now it exists: nothing runs again
    assert len(calls) == 1


def test_a_failed_creation_or_a_trial_never_runs_a_study(storage, monkeypatch):
    monkeypatch.setattr(pretrained.subprocess, "run",
                        lambda command, env: subprocess.CompletedProcess(command, 1))
    with pytest.raises(UserError, match="failed"):
        pretrained.best_run_checkpoint("pretrain/full")
    monkeypatch.setenv("TUNE_ORIG_WORKING_DIR", str(storage))
    with pytest.raises(UserError, match="not visible from this worker"):
        pretrained.best_run_checkpoint("pretrain/full")


def test_finetune_loads_the_run_checkpoint_backbone(storage):
    source = models.build("resnet18", (1, 8, 8), 5)
    fake_run(storage / "pretrain" / "r1", {"trial_id": ["a"], "status": ["completed"],
                                           "best_val_acc": [0.9]},
             {"a": {"model": source.state_dict(), "epoch": 1}})
    net = models.build("resnet18", (1, 8, 8), 5, mode="finetune", weights="run:pretrain/r1")
    assert torch.equal(net.conv1.weight, source.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert not torch.equal(net.fc.weight, source.fc.weight)  # the head is always new


def test_a_tree_checkpoint_has_no_weights_to_load(storage):
    fake_run(storage / "s" / "trees", {"trial_id": ["a"], "status": ["completed"],
                                       "best_val_acc": [0.9]}, {"a": {"epoch": 1}})
    with pytest.raises(UserError, match="holds no model tensors"):
        models.build("resnet18", (1, 8, 8), 5, mode="finetune", weights="run:s/trees")


def test_cli_stops_on_a_missing_run_with_one_line(storage, capsys):
    grid = '{grid: [{name: resnet18, mode: finetune, weights: "run:nosuch/r1"}]}'
    code = search.main(["transfer", "--quick", "--set", f"space.model={grid}",
                        "--storage-path", str(storage)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: weights run:nosuch/r1:") and "not a tune_hw run" in err[0]


def test_finetune_needs_weights_and_rejects_unfit_ones(tmp_path):
    with pytest.raises(UserError, match="needs pretrained weights"):
        models.build("resnet18", (1, 8, 8), 3, mode="finetune")
    path = tmp_path / "mlp.pt"
    torch.save(models.build("mlp", (2,), 3).state_dict(), path)
    with pytest.raises(UserError, match="do not fit this resnet18"):
        models.build("resnet18", (1, 8, 8), 3, mode="finetune", weights=str(path))
    with pytest.raises(UserError, match="does not exist"):
        models.build("resnet18", (1, 8, 8), 3, mode="finetune", weights=str(tmp_path / "x.pt"))


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_file_with_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": _Exploit()}, f)
    with pytest.raises(UserError, match="cannot be loaded safely"):
        models.build("resnet18", (1, 8, 8), 3, mode="finetune", weights=str(path))
    assert "pwned" not in capsys.readouterr().out
