"""The tree baseline (tune_hw.trees) as an ordinary trial: same metrics, epochs as boosting
rounds."""

import math

import pytest

from tune_hw import models, training
from tune_hw.errors import UserError
from tune_hw.results import ASSIGNED_COLUMNS, EPOCH_COLUMNS

TREES = {"dataset.name": "digits", "dataset.classes": [5, 6, 7, 8, 9], "dataset.n_train": 100,
         "model.name": "hist_gradient_boosting", "model.max_iter": 30,
         "model.min_samples_leaf": 5, "train.epochs": 3, "train.seed": 0}


def collect(config, state=None):
    rows, states = [], []
    training.run_trial(config, lambda m, s: (rows.append(m), states.append(dict(s))), state)
    return rows, states


def test_trees_report_every_epoch_column_and_learn():
    rows, states = collect(TREES)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["steps"] for r in rows] == [10, 10, 10]  # boosting rounds added per epoch
    for row in rows:
        assert set(EPOCH_COLUMNS) - set(ASSIGNED_COLUMNS) <= set(row)
        assert not row["diverged"] and row["lr"] == 0.1 and math.isnan(row["step_loss_std"])
        assert 0 <= row["val_acc"] <= 1 and row["val_loss"] > 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["num_params"] > rows[0]["num_params"] > 0  # the ensemble grows
    assert rows[-1]["val_acc"] > 0.6  # chance is 0.2 on five digits
    assert states[-1] == {"epoch": 3}


def test_a_restored_tree_trial_continues_exactly():
    full, states = collect(TREES)
    resumed, _ = collect(TREES, states[0])
    assert [r["epoch"] for r in resumed] == [2, 3]
    for a, b in zip(full[1:], resumed, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"]) and a["steps"] == b["steps"]


def test_bad_tree_hyperparameters_name_the_rule():
    with pytest.raises(UserError, match="max_iter >= 1"):
        models.build("hist_gradient_boosting", (1, 8, 8), 5, max_iter=0)
