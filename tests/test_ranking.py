"""THE ranking (tune_hw.ranking): one tie-break for a trial's epochs and for a run's trials."""

import math

import pandas as pd

from tune_hw.ranking import Ranking


def test_one_tie_break_for_epochs_and_trials():
    ranking = Ranking()
    rows = [{"epoch": 1, "val_acc": 0.7, "val_loss": 0.9},
            {"epoch": 2, "val_acc": 0.7, "val_loss": 0.8},  # same accuracy, lower loss: wins
            {"epoch": 3, "val_acc": 0.7, "val_loss": 0.8}]  # a full tie: the earlier stays
    assert ranking.best_epoch(rows)["epoch"] == 2
    trials = pd.DataFrame({"trial_id": list("abcde"),
                           "best_val_acc": [0.7, 0.7, math.nan, 0.6, 0.7],
                           "val_loss_at_best": [0.9, 0.8, math.nan, 0.8, 0.8]})
    # ties on accuracy go to the lower loss, then to the earlier row; c has no score
    assert ranking.ranked(trials).trial_id.tolist() == ["b", "e", "a", "d"]
    by_loss = Ranking("val_loss", "min")  # ties on loss go to the higher accuracy
    assert by_loss.ranked(trials).trial_id.tolist() == ["b", "e", "d", "a"]
