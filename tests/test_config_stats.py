"""Per-config statistics over repeats (tune_hw.analysis.config_stats) on hand-made tables."""

import math

import numpy as np
import pandas as pd
import pytest

from tune_hw.analysis import config_stats as CS

STUDY = {"data_sizes": {"train": 1000, "val": 1000, "test": 1000}}


def repeats(configs, n_repeats=3, spread=0.002, **extra):
    """trials.parquet rows: `configs` maps config_id -> (val, test), each with `n_repeats`."""
    rows = []
    for config, (val, test) in configs.items():
        for r in range(n_repeats):
            shift = spread * (r - (n_repeats - 1) / 2)
            rows.append({"trial_id": f"{config}-{r}", "status": "completed",
                         "config_id": config, "repeat": r, "config/train.lr": float(len(rows)),
                         "config/model.width": 64, "best_val_acc": val + shift,
                         "val_loss_at_best": 1 - val, "test_acc_at_best": test + shift,
                         "best_epoch": 5, "final_epoch": 10, **extra})
    return pd.DataFrame(rows)


def test_config_table_means_and_intervals_per_config_best_first():
    t = repeats({"b": (0.80, 0.79), "a": (0.90, 0.88)})
    table = CS.config_table(t, STUDY)
    assert table.config_id.tolist() == ["a", "b"] and table.n_repeats.tolist() == [3, 3]
    assert table.val_mean.tolist() == pytest.approx([0.90, 0.80])
    assert table.test_mean.tolist() == pytest.approx([0.88, 0.79])
    assert (table.val_low < table.val_mean).all() and (table.val_mean < table.val_high).all()
    assert "train.lr" in table and "model.width" not in table  # only what varies


def test_winner_is_distinguishable_only_when_its_lead_beats_both_noises():
    far = CS.winner_vs_runner_up(repeats({"a": (0.90, 0.9), "b": (0.80, 0.8)}), STUDY)
    near = CS.winner_vs_runner_up(repeats({"a": (0.801, 0.8), "b": (0.800, 0.8)}), STUDY)
    assert far["winner"] == "a" and far["runner_up"] == "b" and far["distinguishable"]
    assert far["val_diff"] == pytest.approx(0.1) and far["ci_low"] > 0
    assert not near["distinguishable"] and near["ci_low"] < 0 < near["ci_high"]
    assert "seed variance and evaluation noise" in far["sentence"]
    single = CS.winner_vs_runner_up(repeats({"a": (0.9, 0.9), "b": (0.8, 0.8)}, 1), STUDY)
    assert "seed variance is not counted" in single["sentence"]
    assert CS.winner_vs_runner_up(repeats({"a": (0.9, 0.9)}), STUDY)["winner"] is None


def test_rank_agreement_among_the_top_configs_is_reported_beside_all():
    # 20 configs: broken ones rank alike on both splits, the top 5 in reverse on test
    val = np.linspace(0.3, 0.9, 20)
    test = val.copy()
    test[-5:] = test[-5:][::-1]
    t = repeats({f"c{i}": (v, w) for i, (v, w) in enumerate(zip(val, test, strict=True))}, 1)
    r = CS.rank_agreement(t)
    assert r["all"]["n_configs"] == 20 and r["all"]["spearman"] > 0.9
    assert r["top"]["n_configs"] == 5 and r["top"]["spearman"] == pytest.approx(-1)
    forty = repeats({f"c{i}": (v, v) for i, v in enumerate(np.linspace(0.3, 0.9, 40))}, 1)
    assert CS.rank_agreement(forty)["top"]["n_configs"] == 10


def test_early_stopping_note_says_the_stopped_trials_were_compared_earlier():
    t = pd.concat([repeats({"a": (0.9, 0.9)}, 2),
                   repeats({"b": (0.5, 0.5), "c": (0.4, 0.4)}, 1, status="early_stopped",
                           final_epoch=2)], ignore_index=True)
    note = CS.early_stopping_note(t)
    assert note["n_early_stopped"] == 2 and note["median_final_epoch_early"] == 2
    assert note["median_final_epoch_completed"] == 10
    assert "2 of 4 scored trials were stopped early" in note["sentence"]
    assert CS.early_stopping_note(repeats({"a": (0.9, 0.9)}))["sentence"] is None


def test_without_config_ids_every_trial_is_its_own_config():
    t = repeats({"a": (0.9, 0.9), "b": (0.8, 0.8)}).drop(columns=["config_id"])
    table = CS.config_table(t, STUDY)
    assert len(table) == 6 and (table.n_repeats == 1).all()
    assert not math.isnan(table.val_low[0])
