import math

import pandas as pd
import pytest

from tune_hw import layout, results
from tune_hw.errors import UserError
from tune_hw.ranking import Ranking


def rows(*val_accs, diverged_last=False):
    out = [{"epoch": i + 1, "steps": 10, "train_loss": 1.0, "train_acc": v + 0.1,
            "val_loss": 1 - v, "val_acc": v, "test_loss": 1.0, "test_acc": v - 0.05, "lr": 0.1,
            "epoch_s": 2.0, "samples_per_s": 5.0, "step_loss_std": 0.1, "diverged": False,
            "node_id": "n1", "gpu_ids": "", "seed": 0, "num_params": 7}
           for i, v in enumerate(val_accs)]
    if diverged_last:
        out[-1].update(diverged=True, val_acc=0.0, val_loss=1e9)
    return out


def record(trial_id, val_accs, epochs=3, **kw):
    diverged = kw.pop("diverged_last", False)
    return results.TrialRecord(trial_id, {"train.epochs": epochs, "train.lr": 0.1},
                               rows(*val_accs, diverged_last=diverged), **kw)


def test_statuses_best_epoch_and_final_metrics():
    trials, epochs, _ = results.build_tables([
        record("a", [0.5, 0.7, 0.6]),
        record("b", [0.4]),
        record("c", [0.3, 0.2], diverged_last=True),
        record("d", [0.2], error="RuntimeError: boom"),
        record("e", [0.2], ended=False),
        record("f", [], ended=False),
    ])
    by_id = trials.set_index("trial_id")
    assert by_id.status.to_dict() == {"a": "completed", "b": "early_stopped", "c": "diverged",
                                      "d": "error", "e": "running", "f": "pending"}
    a = by_id.loc["a"]
    assert (a.best_epoch, a.best_val_acc, a.final_epoch, a.final_val_acc) == (2, 0.7, 3, 0.6)
    assert a.test_acc_at_best == pytest.approx(0.65) and a.train_acc_at_best == pytest.approx(0.8)
    assert a.wall_s == 6.0 and a["config/train.lr"] == 0.1
    assert by_id.loc["d"].error == "RuntimeError: boom"
    assert list(epochs.columns) == results.EPOCH_COLUMNS and len(epochs) == 8


def test_a_retried_epoch_keeps_its_latest_report():
    rec = record("a", [0.5, 0.6, 0.7])
    rec.rows.insert(2, {**rec.rows[1], "val_acc": 0.1})  # epoch 2 reported, lost, redone
    rec.rows[1], rec.rows[2] = rec.rows[2], rec.rows[1]
    _, epochs, _ = results.build_tables([rec])
    assert epochs.epoch.tolist() == [1, 2, 3] and epochs.val_acc.tolist() == [0.5, 0.6, 0.7]


def test_wall_s_sums_every_epochs_report_time_across_a_resume():
    rec = record("a", [0.5, 0.6, 0.7])
    # Ray's clock restarts on a resume (here before epoch 3) and a retried epoch 2 is
    # reported twice: its latest report counts, once
    for row, (this, total) in zip(rec.rows, [(3.0, 3.0), (2.0, 5.0), (4.0, 4.0)], strict=True):
        row.update(time_this_iter_s=this, time_total_s=total)
    rec.rows.insert(2, {**rec.rows[1], "time_this_iter_s": 2.5, "time_total_s": 2.5})
    trials, _, _ = results.build_tables([rec])
    assert trials.wall_s.tolist() == [3.0 + 2.5 + 4.0]
    without_ray = record("b", [0.5, 0.6])  # rows Ray never heard: the trial's epoch timer
    assert results.build_tables([without_ray])[0].wall_s.tolist() == [4.0]


def test_grad_rows_index_layers_from_input():
    rec = record("a", [0.5])
    rec.rows[0].update(grad_layers=["stem", "head"], grad_norms=[1e-6, 0.5])
    _, _, grads = results.build_tables([rec])
    assert grads.to_dict("records") == [
        {"trial_id": "a", "group_id": "a", "epoch": 1, "layer": 0, "name": "stem",
         "grad_norm": 1e-6},
        {"trial_id": "a", "group_id": "a", "epoch": 1, "layer": 1, "name": "head",
         "grad_norm": 0.5}]


def test_write_and_load_round_trip(tmp_path):
    results.write_run(tmp_path, [record("a", [0.5, 0.6])], {"name": "s", "space": {}})
    run = results.load_run(tmp_path)
    assert run.trials.trial_id.tolist() == ["a"] and run.study["name"] == "s"
    assert len(run.epochs) == 2 and run.grads.empty


def test_a_run_written_before_the_later_columns_still_loads(tmp_path):
    tracked = record("a", [0.5, 0.6])
    tracked.rows[0].update(grad_layers=["stem"], grad_norms=[0.5])
    results.write_run(tmp_path, [tracked, record("b", [0.4])], {"name": "s", "space": {}})
    for name, dropped in ((layout.TRIALS_FILE, ["group_id", "config_id", "repeat",
                                                "train_eval_size"]),
                          (layout.EPOCHS_FILE, ["group_id", "train_loss_running"]),
                          (layout.GRADS_FILE, ["group_id"])):
        frame = pd.read_parquet(tmp_path / name)
        frame.drop(columns=dropped).to_parquet(tmp_path / name)
    run = results.load_run(tmp_path)
    trials, epochs = run.trials, run.epochs
    assert trials.group_id.tolist() == trials.config_id.tolist() == ["a", "b"]
    assert trials.repeat.tolist() == [0, 0] and trials.train_eval_size.isna().all()
    assert epochs.group_id.tolist() == epochs.trial_id.tolist()
    assert epochs.train_loss_running.isna().all()
    assert run.grads.group_id.tolist() == run.grads.trial_id.tolist() == ["a"]


def test_a_failed_write_leaves_the_previous_file_readable(tmp_path):
    results.write_run(tmp_path, [record("a", [0.5])], {"name": "s"})

    def crash(path):
        open(path, "wb").write(b"half a parquet")
        raise OSError("disk full")

    with pytest.raises(OSError):
        results.atomic_write(tmp_path / layout.TRIALS_FILE, crash)
    assert pd.read_parquet(tmp_path / layout.TRIALS_FILE).trial_id.tolist() == ["a"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_load_run_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="is not a tune_hw run"):
        results.load_run(tmp_path)


def test_nan_val_epochs_never_win():
    rec = record("a", [0.5, 0.6])
    rec.rows[1]["val_acc"] = math.nan
    trials, _, _ = results.build_tables([rec])
    assert trials.best_epoch.iloc[0] == 1


# ------------------------------------------------------------------ the ranking (defect 5)

def test_best_epoch_follows_the_studys_metric_and_mode():
    rec = record("a", [0.5, 0.7, 0.6])
    for row, loss in zip(rec.rows, [0.9, 0.8, 0.4], strict=True):
        row["val_loss"] = loss  # lowest loss at epoch 3, highest accuracy at epoch 2
    by_acc, _, _ = results.build_tables([rec])
    by_loss, _, _ = results.build_tables([rec], Ranking("val_loss", "min"))
    assert (by_acc.best_epoch.iloc[0], by_loss.best_epoch.iloc[0]) == (2, 3)
    assert by_loss.val_loss_at_best.iloc[0] == 0.4 and by_loss.best_val_acc.iloc[0] == 0.6


def test_write_run_ranks_by_the_resolved_studys_search(tmp_path):
    rec = record("a", [0.5, 0.7, 0.6])
    for row, loss in zip(rec.rows, [0.9, 0.8, 0.4], strict=True):
        row["val_loss"] = loss
    study = {"name": "s", "search": {"metric": "val_loss", "mode": "min"}}
    assert results.write_run(tmp_path, [rec], study).trials.best_epoch.iloc[0] == 3


# --------------------------------------------------------------- divergence (defect 2)

def test_a_trial_diverging_in_its_first_epoch_has_no_best_metrics():
    trials, epochs, _ = results.build_tables([record("a", [0.3], diverged_last=True),
                                              record("b", [0.3, 0.2], diverged_last=True)])
    a, b = trials.set_index("trial_id").loc["a"], trials.set_index("trial_id").loc["b"]
    assert a.status == "diverged" and math.isnan(a.best_epoch)
    assert all(math.isnan(a[c]) for c in ("best_val_acc", "val_loss_at_best",
                                          "train_acc_at_best", "test_acc_at_best"))
    assert b.best_epoch == 1 and b.best_val_acc == 0.3  # its healthy epoch, not the sentinel
    assert epochs.diverged.tolist() == [True, False, True] and epochs.diverged.dtype == bool
    sentinel = epochs[epochs.diverged]
    assert sentinel[["val_acc", "val_loss", "train_acc", "test_acc"]].isna().all().all()
    assert math.isnan(b.final_val_acc)  # its last epoch measured nothing


def test_a_diverged_epoch_never_wins_whatever_it_reported():
    rec = record("a", [0.3, 0.2])
    rec.rows[1].update(diverged=True, val_acc=0.99, val_loss=0.0)  # not a sentinel value
    trials, _, _ = results.build_tables([rec])
    assert trials.best_epoch.iloc[0] == 1


# ---------------------------------------------------------- split sizes (defect 6)

def test_each_trial_records_its_own_split_sizes():
    small, large = record("a", [0.5]), record("b", [0.6])
    for rec, n in ((small, 100), (large, 900)):
        for row in rec.rows:
            row.update(train_size=n, val_size=n // 10, test_size=n // 5)
    large.rows.append({"error": "UserError: later"})  # a last row without sizes
    trials, _, _ = results.build_tables([small, large])
    assert trials[["train_size", "val_size", "test_size"]].values.tolist() == [
        [100, 10, 20], [900, 90, 180]]
