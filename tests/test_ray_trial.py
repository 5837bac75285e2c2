"""A trial's saved states (tune_hw.ray_trial.TrialStates), the Ray-free parts: its latest state and
its best epoch's, by the study's ranking."""

import pytest
import torch
from test_training import collect

from tune_hw import layout, ray_trial, training
from tune_hw.ranking import Ranking


def metrics_row(epoch, val_acc, val_loss, diverged=False):
    return {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "diverged": diverged}


@pytest.mark.parametrize("ranking, best", [(Ranking(), 2), (Ranking("val_loss", "min"), 3)])
def test_trial_states_keep_the_best_epoch_by_the_studys_ranking(tmp_path, ranking, best):
    states = ray_trial.TrialStates(tmp_path, ranking)
    rows = [metrics_row(1, 0.5, 1.0), metrics_row(2, 0.7, 0.9), metrics_row(3, 0.6, 0.85),
            metrics_row(4, 0.7, 0.9),  # ties epoch 2 on both metrics: the earlier one stays
            metrics_row(5, 0.99, 0.01, diverged=True)]  # never the best, whatever it says
    for row in rows:
        states.keep_if_best(row, {"epoch": row["epoch"], "w": torch.tensor(float(row["epoch"]))})
        states.keep_latest(row, {"epoch": row["epoch"]})
    saved = torch.load(tmp_path / layout.BEST_STATE_FILE, weights_only=True)
    assert saved["epoch"] == best and saved["w"].item() == best
    again = ray_trial.TrialStates(tmp_path, ranking)
    assert again.latest() == {"epoch": 5, "row": rows[-1]} and again.best["epoch"] == best  # survives a restart
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_a_resumed_trial_continues_from_its_latest_state_on_the_cpu(tmp_path, tiny_countries):
    states = ray_trial.TrialStates(tmp_path, Ranking())
    full, _ = collect(tiny_countries)
    training.run_trial({**tiny_countries, "train.epochs": 1},
                        lambda m, s: (states.keep_if_best(m, s), states.keep_latest(m, s)))
    state = ray_trial.TrialStates(tmp_path, Ranking()).latest()
    assert state["generator"].device.type == "cpu" and state["epoch"] == 1
    resumed, _ = collect(tiny_countries, state)
    assert [r["epoch"] for r in resumed] == [2, 3]
    assert resumed[-1]["val_loss"] == pytest.approx(full[-1]["val_loss"], rel=1e-6)
