"""Repeats (search.repeats): every sampled config trains with N seeds (train.seed + r), and
trials.parquet says which trials are repeats of one config (config_id, repeat)."""

from __future__ import annotations

import os

import pytest
from ray.tune.search.repeater import TRIAL_INDEX

from tune_hw import results, search, studies, training, tuner
from tune_hw.results import REPEAT_KEY

STUDY = """\
description: repeats test
dataset: {name: countries, n_train: 300, n_val: 200, n_test: 200}
model: {name: mlp, width: 8, depth: 1}
train: {epochs: 2, lr: 0.01, batch_size: 64, seed: 5}
space:
  train.lr: {loguniform: [1.0e-3, 1.0e-1]}
  train.batch_size: {choice: [32, 64]}
search: {algorithm: ALGORITHM, num_samples: 2, repeats: 2}
scheduler: {name: fifo}
"""


def test_the_repeat_key_is_rays_repeater_index():
    assert REPEAT_KEY == TRIAL_INDEX


def test_repeat_r_trains_with_seed_plus_r_and_shares_the_config_id(tiny_countries):
    _, _, train = training.split_config({**tiny_countries, "train.seed": 7, REPEAT_KEY: 2})
    assert train["seed"] == 9
    assert training.split_config(tiny_countries)[2]["seed"] == 0
    first = results.config_id({**tiny_countries, REPEAT_KEY: 0})
    assert first == results.config_id({**tiny_countries, REPEAT_KEY: 1}) == \
        results.config_id(tiny_countries)
    assert first != results.config_id({**tiny_countries, "train.lr": 0.5})


@pytest.mark.parametrize("algorithm, samples, grid", [("random", 2, [0, 1]),
                                                      ("optuna", 4, None)])
def test_param_space_and_num_samples_carry_the_repeats(tmp_path, algorithm, samples, grid):
    path = tmp_path / "r.yaml"
    path.write_text(STUDY.replace("ALGORITHM", algorithm))
    study = studies.load_study(str(path))
    space = tuner.param_space(study)
    assert tuner.num_samples(study) == samples
    assert (space[REPEAT_KEY]["grid_search"] if grid else REPEAT_KEY not in space) == \
        (grid if grid else True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One Ray for the four searches (random, Optuna; unfused, fused): each writes 2 configs x
    2 repeats."""
    import ray

    root = tmp_path_factory.mktemp("runs")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    out = {}
    try:
        for algorithm in ("random", "optuna"):
            path = root / f"rep_{algorithm}.yaml"
            path.write_text(STUDY.replace("ALGORITHM", algorithm))
            for fuse in ("off", "4"):  # an int: groups of 4 members, 2 configs' repeats
                code = search.main([str(path), "--storage-path", str(root), "--name", fuse,
                                    "--fuse", fuse])
                assert code == 0
                out[algorithm, fuse] = results.load_run(root / path.stem / fuse)
        # groups of one member (as at batch 1024 under auto, where fusion does not pay):
        # Tune makes more trials (groups) than num_samples (configs)
        path = root / "rep_1024.yaml"
        path.write_text(STUDY.replace("ALGORITHM", "optuna").replace("[32, 64]", "[1024]")
                        .replace("n_train: 300", "n_train: 1100"))
        code = search.main([str(path), "--storage-path", str(root), "--name", "k1",
                            "--fuse", "1"])
        out["optuna", "1024"] = (code, results.load_run(root / path.stem / "k1"))
    finally:
        ray.shutdown()
        os.environ.pop("TUNE_HW_STORAGE", None)
    return out


@pytest.mark.parametrize("fuse", ["off", "4"])
@pytest.mark.parametrize("algorithm", ["random", "optuna"])
def test_each_config_runs_once_per_repeat_with_its_own_seed(runs, algorithm, fuse):
    trials = runs[algorithm, fuse].trials
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    assert f"config/{REPEAT_KEY}" not in trials
    assert trials.config_id.nunique() == 2
    for _, group in trials.groupby("config_id"):
        assert sorted(group.repeat) == [0, 1]
        assert sorted(group.seed) == [5, 6]  # train.seed + repeat
        assert group["config/train.lr"].nunique() == 1  # one config, not two samples
        assert group["config/train.seed"].eq(5).all()
        # different seeds: different initial weights and batch orders, so different curves
        assert group.val_loss_at_best.nunique() == 2
    assert trials.groupby("config_id")["config/train.lr"].first().nunique() == 2


def test_fused_optuna_repeats_in_groups_of_one_all_run(runs):
    code, run = runs["optuna", "1024"]
    trials = run.trials
    assert code == 0 and len(trials) == 4 and set(trials.status) == {"completed"}
    assert trials.group_id.nunique() == 4 and trials.config_id.nunique() == 2
    assert sorted(trials.groupby("config_id").repeat.apply(sorted).tolist()) == [[0, 1]] * 2


def test_fused_repeats_train_as_the_unfused_repeats(runs):
    def by_config_and_repeat(run):
        return run.trials.set_index(["config_id", "repeat"]).sort_index()

    off, auto = (by_config_and_repeat(runs["random", f]) for f in ("off", "4"))
    assert auto.group_id.nunique() < len(auto)  # repeats trained together
    assert list(off.index) == list(auto.index)  # the same configs and repeats
    for column in ("val_loss_at_best", "best_val_acc", "test_acc_at_best"):
        assert auto[column].to_numpy() == pytest.approx(off[column].to_numpy(), abs=1e-4)


def test_rows_carry_split_sizes_and_the_running_train_loss(runs):
    a, b = runs["random", "off"].trials, runs["optuna", "4"].trials
    assert (a.train_eval_size == 300).all() and (a.val_size == 200).all()
    epochs = runs["random", "off"].epochs
    assert epochs.train_loss_running.notna().all()
    first = epochs[epochs.epoch == 1]
    # the running loss is the mean over the epoch's steps, not the end-of-epoch loss
    assert (first.train_loss_running != first.train_loss).all()
    assert set(a.seed) == set(b.seed) == {5, 6}
