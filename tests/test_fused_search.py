"""Fused studies in Ray Tune: member configs cut into groups, a group as one Tune trial, its
results expanded into one row per member (ray_files.member_rows), the same numbers as unfused."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pandas as pd
import pytest
from conftest import run_cli
from optuna.trial import TrialState
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tune_hw import fused_search, grouping, ray_files, results, resumable, tuner
from tune_hw.errors import UserError
from tune_hw.group_searcher import GroupSearcher
from tune_hw.results import REPEAT_KEY
from tune_hw.rungs import RungBoard
from tune_hw.studies import load_study

MLP = {"dataset.name": "countries", "model.name": "mlp", "model.width": 64, "train.epochs": 2,
       "train.seed": 0}


REPEATED = """\
description: fused repeats
dataset: {name: countries, n_train: 300, n_val: 200, n_test: 200}
model: {name: mlp, width: 8, depth: 1}
train: {epochs: 2, lr: 0.01, batch_size: 16, seed: 5}
space:
  train.lr: {loguniform: [1.0e-3, 1.0e-1]}
search: {algorithm: random, num_samples: 3, repeats: 2, fuse: auto}
"""


def config(**train):
    return {**MLP, **{f"train.{k}": v for k, v in train.items()}}


def propose_all(searcher: GroupSearcher) -> list[list[dict]]:
    """Every group a GroupSearcher proposes until FINISHED (Tune trial ids t0, t1, ...,
    continuing after the groups it already has), as member config lists."""
    groups = []
    while (suggested := searcher.suggest(f"t{len(searcher.groups)}")) != Searcher.FINISHED:
        groups.append(suggested["group"]["members"])
    return groups


@pytest.mark.parametrize("value, parsed", [("auto", "auto"), ("off", "off"), (False, "off"),
                                           (16, 16), (1, 1)])
def test_fuse_values(value, parsed):
    assert grouping.parse_fuse(value) == parsed


@pytest.mark.parametrize("value", ["on", 0, -3, 2.5, True, "16"])
def test_bad_fuse_values_are_refused(value):
    with pytest.raises(ValueError, match="use auto, off or a group size"):
        grouping.parse_fuse(value)


def test_the_repeats_of_a_config_are_members_of_one_group(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(REPEATED)
    study = load_study(str(path))
    space = tuner.param_space(study)
    members = fused_search.member_configs(study, space)
    assert len(members) == 6  # 3 samples x 2 repeats, as the unfused generator's trials
    groups = fused_search.group_configs(study, space, slots=2)
    assert len(groups) >= 2 and sum(len(g["members"]) for g in groups) == 6
    for group in groups:
        by_config = {}
        for member in group["members"]:
            by_config.setdefault(results.config_id(member), []).append(member[REPEAT_KEY])
        # every config's repeats in the same group: lr held constant across the repeats
        assert all(sorted(r) == [0, 1] for r in by_config.values())
    lrs = {m["train.lr"] for g in groups for m in g["members"]}
    assert len(lrs) == 3


def test_optuna_proposes_each_config_with_its_repeats_and_tells_their_mean():
    study = load_study("lr_batch", overrides={"search.fuse": 64, "search.num_samples": 6,
                                              "search.repeats": 2})
    searcher = GroupSearcher(study, slots=2)
    groups = propose_all(searcher)
    members = [m for g in groups for m in g]
    assert len(members) == 12 and len(searcher.ot.trials) == 6  # num_samples counts configs
    everywhere = {}
    for members_of_group in groups:
        by_lr = {}
        for member in members_of_group:
            by_lr.setdefault(member["train.lr"], []).append(member[REPEAT_KEY])
            everywhere.setdefault(member["train.lr"], []).append(member[REPEAT_KEY])
        largest = grouping.largest_group(members_of_group[0], study.search["fuse"])
        if largest >= 2:  # a config's repeats train together where fusion pays
            assert all(sorted(r) == [0, 1] for r in by_lr.values())
        else:  # batch 1024: one member per group
            assert len(members_of_group) == 1
    assert all(sorted(r) == [0, 1] for r in everywhere.values())
    first = groups[0]
    values = {f"t0-m{k:02d}": 0.1 + 0.1 * k for k in range(len(first))}
    values["t0-m00"] = 0.9  # it ended first, alone; its config waits for its other repeat
    searcher.on_trial_result("t0", {"members": {"t0-m00": {
        "val_acc": 0.9, "epoch": 2, "member_status": "completed"}}})
    assert not [t for t in searcher.ot.trials if t.state == TrialState.COMPLETE]  # 1 of 2
    searcher.on_trial_complete("t0", {"members": {m: {"val_acc": v, "epoch": 2,
                                                      "member_status": "completed"}
                                                  for m, v in values.items()}})
    told = {t.params["train.lr"]: t.value for t in searcher.ot.trials
            if t.state == TrialState.COMPLETE}
    expected = {}
    for member, value in zip(first, values.values(), strict=True):
        expected.setdefault(member["train.lr"], []).append(value)
    assert told == {lr: pytest.approx(sum(v) / len(v)) for lr, v in expected.items()}
    assert {t.intermediate_values.get(2) for t in searcher.ot.trials
            if t.state == TrialState.COMPLETE} == set(told.values())


def test_groups_share_a_structure_and_respect_the_size():
    configs = [config(lr=0.1 * (i + 1), batch_size=16 if i % 3 else 128) for i in range(9)]
    groups = grouping.make_groups(configs, 2)
    assert sorted(i for g in groups for i in g) == list(range(9))
    for group in groups:
        assert len(group) <= 2
        assert len({configs[i]["train.batch_size"] for i in group}) == 1
    assert sorted(grouping.make_groups(configs, "off")) == [[i] for i in range(9)]
    # auto: what fusion pays; at batch 1024 it does not, resnet18 never fuses
    assert grouping.make_groups([config(lr=0.1, batch_size=16)] * 5, "auto") == [[0, 1, 2, 3, 4]]
    assert grouping.make_groups([config(lr=0.1, batch_size=1024)] * 3, "auto") == [[0], [1], [2]]
    resnet = [{**config(lr=0.1, batch_size=16), "model.name": "resnet18"}] * 2
    assert grouping.make_groups(resnet, 8) == [[0], [1]]


def test_there_are_never_fewer_groups_than_slots():
    configs = [config(lr=0.01 * (i + 1), batch_size=16) for i in range(7)]
    assert grouping.make_groups(configs, "auto", slots=1) == [list(range(7))]
    groups = grouping.make_groups(configs, "auto", slots=3)
    assert len(groups) == 3 and sorted(map(len, groups)) == [2, 2, 3]
    assert len(grouping.make_groups(configs[:2], "auto", slots=4)) == 2  # one member a group


def test_groups_are_cut_for_the_trials_that_run_at_once():
    overrides = {"search.algorithm": "random", "search.num_samples": 12,
                 "space.train.batch_size": {"choice": [16]}}
    study = load_study("lr_batch", overrides=overrides)
    assert fused_search.trial_slots(study) == 1  # Ray is not up here: one slot at least
    limited = load_study("lr_batch", overrides={**overrides, "search.max_concurrent": 3})
    assert fused_search.trial_slots(limited) == 3  # what the user runs at once
    space, _, _ = tuner.search_inputs(limited)
    assert len(space[ray_files.GROUP_KEY]["grid_search"]) == 3  # 12 configs of one structure
    assert len(tuner.search_inputs(study)[0][ray_files.GROUP_KEY]["grid_search"]) == 1


def test_member_rows_expand_a_group_result():
    members = [config(lr=0.1, batch_size=16), config(lr=0.2, batch_size=16)]
    group = {"group": {"members": members}}
    result = {"epoch": 2, "val_acc": 0.9, "time_total_s": 7.0, "config": group,
              "members": {"g1-m01": {"epoch": 2, "val_acc": 0.5, "member_status": "completed"}}}
    [(trial_id, flat, row)] = ray_files.member_rows("g1", group, result)
    assert trial_id == "g1-m01" and flat == members[1]
    assert row == {"epoch": 2, "val_acc": 0.5, "member_status": "completed", "time_total_s": 7.0}
    error = {"val_acc": 0.0, "error": "UserError: bad"}  # no "members": it stands for all
    assert [m for m, _, _ in ray_files.member_rows("g1", group, error)] == ["g1-m00", "g1-m01"]
    plain = {"train": {"lr": 0.1}, "model.name": "mlp"}  # an unfused trial: itself, flattened
    assert ray_files.member_rows("t1", plain, {"epoch": 1}) == [
        ("t1", {"train.lr": 0.1, "model.name": "mlp"}, {"epoch": 1})]


def test_fuse_is_read_from_the_study_and_auto_by_default():
    study = load_study("lr_batch", quick=True, overrides={"search.fuse": 4})
    assert study.search["fuse"] == 4
    assert load_study("width_depth").search["fuse"] == "auto"
    # Optuna searching structure fuses too: its groups form from TPE's free asks
    assert load_study("lr_batch").search["fuse"] == "auto"


@pytest.mark.parametrize("algorithm", ["optuna", "random"])
def test_fuse_off_searches_one_trial_per_config_as_before_fusion(algorithm):
    off = load_study("lr_batch", overrides={"search.fuse": "off", "search.algorithm": algorithm})
    space, samples, search_alg = tuner.search_inputs(off)
    assert space.keys() == tuner.param_space(off).keys()  # the flat space, no group key
    assert {k: type(v) for k, v in space.items()} == \
        {k: type(v) for k, v in tuner.param_space(off).items()}
    assert samples == 40  # one Tune trial per config
    base = resumable._base_searcher(search_alg)
    assert type(base) is (OptunaSearch if algorithm == "optuna" else resumable.GrowingVariants)
    assert isinstance(tuner.make_scheduler(off), ASHAScheduler)  # Ray's ASHA judges trials
    fused_study = load_study("lr_batch", overrides={"search.algorithm": algorithm})
    fused_space, _, fused_alg = tuner.search_inputs(fused_study)
    if algorithm == "optuna":
        assert type(resumable._base_searcher(fused_alg)) is GroupSearcher
    else:
        assert list(fused_space) == [ray_files.GROUP_KEY]
    assert type(tuner.make_scheduler(fused_study)) is FIFOScheduler  # the RungBoard judges


def test_optuna_proposes_groups_that_share_the_structure_and_tells_each_member():
    study = load_study("lr_batch", overrides={"search.fuse": 64, "search.num_samples": 12})
    searcher = GroupSearcher(study, slots=2)
    groups = propose_all(searcher)
    assert sum(map(len, groups)) == 12 and len(groups) >= 2
    assert max(map(len, groups)) <= 6  # 12 members, 2 slots: never fewer groups than slots
    left = 12
    for members in groups:  # at most half of what is left: the tail spreads over both slots
        assert len(members) <= math.ceil(left / 2)
        left -= len(members)
    assert any(len(members) > 1 for members in groups)
    for members in groups:
        assert len({m["train.batch_size"] for m in members}) == 1
        assert len({m["train.lr"] for m in members}) == len(members)
        assert all(m["model.width"] == 64 for m in members)  # the fixed values come along
    first = groups[0]
    values = {f"t0-m{k:02d}": 0.1 + 0.1 * k for k in range(len(first))}
    searcher.on_trial_result("t0", {"members": {m: {"val_acc": 0.05, "epoch": 1,
                                                    "member_status": "running"}
                                                for m in values}})
    searcher.on_trial_complete("t0", {"members": {m: {"val_acc": v, "epoch": 2,
                                                      "member_status": "completed"}
                                                  for m, v in values.items()}})
    told = {t.params["train.lr"]: t.value for t in searcher.ot.trials
            if t.state == TrialState.COMPLETE}
    assert told == {m["train.lr"]: pytest.approx(v) for m, v in zip(first, values.values(), strict=True)}


def test_optuna_asks_every_config_freely_so_fusing_keeps_tpes_sample():
    """The configs a fused Optuna study proposes are the ones TPE draws asked one by one: the
    groups form from the asks, they do not steer them (enqueueing a first ask's batch size for
    a whole group drew 20 of 40 configs at batch 1 in the full lr_batch run)."""
    import optuna

    study = load_study("lr_batch", overrides={"search.fuse": 64, "search.num_samples": 40})
    searcher = GroupSearcher(study, slots=2)
    groups = propose_all(searcher)
    alone = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
        seed=study.train["seed"], constant_liar=True))
    dists = {k: d.to_optuna() for k, d in study.distributions.items()}
    asked = [alone.ask(dists).params for _ in range(40)]
    proposed = [{k: m[k] for k in dists} for g in groups for m in g]
    assert sorted(map(repr, proposed)) == sorted(map(repr, asked))
    assert any(len(g) > 1 for g in groups) and len(groups) < 40  # and they still fuse
    for members in groups:
        assert len({m["train.batch_size"] for m in members}) == 1


def test_a_restored_group_searcher_grows_to_more_configs_never_fewer(tmp_path):
    study = load_study("lr_batch", overrides={"search.num_samples": 4})
    searcher = GroupSearcher(study, slots=2)
    propose_all(searcher)
    searcher.save(str(tmp_path / "s.pkl"))
    restored = GroupSearcher(load_study("lr_batch", overrides={"search.num_samples": 8}), 2)
    restored.restore(str(tmp_path / "s.pkl"))  # what Tune's restore does: 4 configs, 0 left
    restored.grow(3)
    assert restored.suggest("late") == Searcher.FINISHED
    restored.grow(8)
    propose_all(restored)
    assert len(restored.ot.trials) == 8 and restored.total == 8


def test_a_group_searcher_pickled_before_repeats_joined_unpickles_and_grows():
    import pickle

    searcher = GroupSearcher(load_study("lr_batch", overrides={"search.num_samples": 4}), 2)
    propose_all(searcher)
    for name in ("repeats", "slots", "pool", "queue", "chunk", "epochs", "ended", "total"):
        del searcher.__dict__[name]  # the fields an older tuner.pkl does not hold
    old = pickle.loads(pickle.dumps(searcher))
    assert (old.repeats, old.total, old.queue, old.pool) == (1, 4, [], [])
    old.on_trial_complete("t0", {"members": {"t0-m00": {"val_acc": 0.5, "epoch": 2,
                                                        "member_status": "completed"}}})
    old.grow(6)
    assert old.suggest("late") != Searcher.FINISHED


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_rung_board_decides_as_rays_asha(mode):
    """The same results in the same order: the board stops exactly the trials ASHA stops."""
    asha = ASHAScheduler(time_attr="epoch", metric="val_acc", mode=mode, max_t=20,
                         grace_period=2, reduction_factor=3)
    board = RungBoard(max_t=20, grace_period=2, reduction_factor=3, mode=mode)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(40)]
    for trial in trials:
        asha.on_trial_add(None, trial)
    rng, live, stopped_early = random.Random(0), list(trials), 0
    for epoch in range(1, 21):
        for trial in list(live):
            value = rng.random() + (0.02 * epoch if mode == "max" else -0.02 * epoch)
            theirs = asha.on_trial_result(None, trial, {"epoch": epoch, "val_acc": value})
            assert board.on_result(trial.trial_id, epoch, value) == (theirs == "STOP")
            if theirs == "STOP":
                live.remove(trial)
                stopped_early += epoch < 20
    assert 0 < stopped_early < 40 and not live
    replayed = RungBoard(max_t=20, grace_period=2, reduction_factor=3, mode=mode)
    replayed.replay([(key, milestone, value) for milestone, rung in board.rungs
                     for key, value in rung.items()] if mode == "max" else
                    [(key, milestone, -value) for milestone, rung in board.rungs
                     for key, value in rung.items()])
    assert replayed.rungs == board.rungs  # a resumed search's board holds the same rungs


def test_the_rung_board_judges_a_configs_repeats_by_their_mean():
    board = RungBoard(max_t=9, grace_period=1, reduction_factor=3, mode="max")
    assert board.decide([("good", 1, 0.8), ("bad", 1, 0.1)]) == ["bad"]
    # "mixed" has one repeat above "good" (alone it would go on) and one far below: its mean
    # 0.45 is what counts, under the cutoff 0.567 of (0.1, 0.8)
    assert board.decide([("mixed", 1, 0.85), ("mixed", 1, 0.05), ("fine", 1, 0.7)]) == \
        ["mixed"]
    assert board.rungs[-1][1] == {"good": 0.8, "bad": 0.1, "mixed": pytest.approx(0.45),
                                  "fine": 0.7}
    replayed = RungBoard(max_t=9, grace_period=1, reduction_factor=3, mode="max")
    replayed.replay([("good", 1, 0.8), ("bad", 1, 0.1), ("mixed", 1, 0.85),
                     ("mixed", 1, 0.05), ("fine", 1, 0.7)])
    assert replayed.rungs == board.rungs
    assert board.decide([("nan", 1, math.nan), ("nan", 1, math.nan)]) == []  # diverged: leaves
    # mixed's third repeat trains in another group: it stops when it reports, at any epoch
    assert board.decide([("mixed", 1, 0.99), ("fine", 2, 0.7)]) == ["mixed"]


def test_a_bad_fuse_is_one_line_and_exit_2(cli, tmp_path):
    proc = cli("tune_hw.search", "lr_batch", "--fuse", "sometimes", "--storage-path",
               str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "search.fuse is 'sometimes': use auto, off or a group size" in line
    assert not any(tmp_path.iterdir())  # refused before anything was written


# ------------------------------------------------------------------ a fused study end to end
# two trials at once, whatever the machine's CPUs (groups are cut for the trials that run at
# once: fused_search.trial_slots)
TWO_AT_ONCE = ["--set", "search.max_concurrent=2"]
STUDY = ["lr_batch", "--quick", "--set", "search.algorithm=random", "--set",
         "scheduler.name=fifo", "--set", "space.train.batch_size={choice: [16, 128]}",
         "--set", "space.train.lr={loguniform: [0.001, 100.0]}", "--num-samples", "8",
         "--set", "train.track_grads=true", *TWO_AT_ONCE]


@pytest.fixture(scope="module")
def off_and_auto(tmp_path_factory):
    """The same quick random study unfused and fused: (trials, epochs, run dir) of each."""
    storage = tmp_path_factory.mktemp("runs")
    out = {}
    for fuse in ("off", "auto"):
        proc = run_cli("tune_hw.search", *STUDY, "--fuse", fuse, "--storage-path",
                       str(storage), "--name", fuse)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = results.load_run(storage / "lr_batch" / fuse)
        out[fuse] = run.trials, run.epochs, run.path
    return out


def by_config(trials):
    return {(t["config/train.lr"], t["config/train.batch_size"]): t for _, t in trials.iterrows()}


def test_a_fused_study_has_one_row_per_member_in_fewer_groups(off_and_auto):
    trials, epochs, run_dir = off_and_auto["auto"]
    assert len(trials) == 8 and trials.trial_id.is_unique
    assert trials.group_id.nunique() < len(trials)
    assert (trials.trial_id.str.rsplit("-m", n=1).str[0] == trials.group_id).all()
    for _, group in trials.groupby("group_id"):  # one structure per group
        assert group["config/train.batch_size"].nunique() == 1
    assert set(epochs.trial_id) == set(trials.trial_id)
    group_of = trials.set_index("trial_id").group_id
    assert (epochs.group_id == epochs.trial_id.map(group_of)).all()
    grads = results.load_run(run_dir).grads  # each member's own gradient norms, per epoch
    healthy = epochs[~epochs.diverged.astype(bool)]  # a diverged epoch has none
    assert sorted(set(zip(grads.trial_id, grads.epoch, strict=True))) == \
        sorted(set(zip(healthy.trial_id, healthy.epoch, strict=True)))
    assert (grads.group_id == grads.trial_id.map(group_of)).all()
    off_trials, off_epochs, _ = off_and_auto["off"]
    assert (off_trials.group_id == off_trials.trial_id).all()  # unfused: a group of itself


def test_fused_members_train_the_unfused_configs_to_the_same_numbers(off_and_auto):
    (off, off_epochs, _), (auto, auto_epochs, _) = off_and_auto["off"], off_and_auto["auto"]
    off_by, auto_by = by_config(off), by_config(auto)
    assert off_by.keys() == auto_by.keys() and len(off_by) == 8  # Tune's own variants
    for key, unfused in off_by.items():
        member = auto_by[key]
        assert member.status == unfused.status and member.final_epoch == unfused.final_epoch
        mine = auto_epochs[auto_epochs.trial_id == member.trial_id].reset_index()
        theirs = off_epochs[off_epochs.trial_id == unfused.trial_id].reset_index()
        assert mine.epoch.tolist() == theirs.epoch.tolist()
        assert mine.diverged.tolist() == theirs.diverged.tolist()
        first, first_off = mine.train_loss[0], theirs.train_loss[0]
        if not math.isnan(first_off):
            assert first == pytest.approx(first_off, rel=1e-4)
        healthy = ~theirs.diverged
        assert ((mine.val_acc[healthy] - theirs.val_acc[healthy]).abs() <= 0.01).all()


def test_a_diverged_member_leaves_while_its_group_goes_on(off_and_auto):
    trials, epochs, run_dir = off_and_auto["auto"]
    mixed = [g for _, g in trials.groupby("group_id")
             if {"diverged", "completed"} <= set(g.status)]
    assert mixed, trials[["trial_id", "status", "config/train.lr"]]
    group = mixed[0]
    diverged = group[group.status == "diverged"].iloc[0]
    # the diverged member's rows end where it diverged; later group results omit it
    rows = ray_files.read_json_lines(run_dir / f"trial_{diverged.group_id}" / "rows.jsonl")
    present = [diverged.trial_id in row["members"] for row in rows]
    assert present == [e <= diverged.final_epoch for e in range(1, len(rows) + 1)]
    assert rows[diverged.final_epoch - 1]["members"][diverged.trial_id]["member_status"] \
        == "diverged"
    assert pd.isna(diverged.best_val_acc) or diverged.final_epoch < 2


GROWN = """\
description: a fused grid x random study that grows
dataset: {name: countries, n_train: 300, n_val: 200, n_test: 200}
model: {name: mlp, width: 8, depth: 1}
train: {epochs: 2, lr: 0.01, batch_size: 16, seed: 3}
space:
  train.lr: {loguniform: [1.0e-3, 1.0e-1]}
  train.batch_size: {grid: [16, 32]}
search: {algorithm: random, num_samples: 2, repeats: 2, fuse: auto}
scheduler: {name: fifo}
"""


def test_a_fused_random_run_grows_on_resume_to_the_configs_a_new_run_draws(tmp_path, cli):
    path = tmp_path / "grown.yaml"
    path.write_text(GROWN)
    run_dir = tmp_path / "runs" / "grown" / "g"
    args = [str(path), "--storage-path", str(tmp_path / "runs"), "--name", "g"]
    made = cli("tune_hw.search", *args)
    assert made.returncode == 0, made.stderr[-3000:]
    old = results.load_run(run_dir)
    assert len(old.trials) == 8  # 2 samples x 2 batch sizes x 2 repeats

    grown = cli("tune_hw.search", *args, "--num-samples", "3", "--resume")
    assert grown.returncode == 0, grown.stderr[-3000:]
    run = results.load_run(run_dir)
    assert len(run.trials) == 12 and run.trials.trial_id.is_unique
    assert set(run.trials.status) == {"completed"}
    kept = run.trials.set_index("trial_id").loc[old.trials.trial_id].reset_index()
    pd.testing.assert_frame_equal(kept[old.trials.columns], old.trials)  # nothing retrained
    new = run.trials[~run.trials.trial_id.isin(old.trials.trial_id)]
    assert not set(new.group_id) & set(old.trials.group_id)  # new groups, of new members
    for _, group in new.groupby("group_id"):
        assert group["config/train.batch_size"].nunique() == 1
    # the 12 members are the ones a new run of 3 samples trains: its generator's first draws
    # are the held run's, so the 4 added are its third sample (both batch sizes, both repeats)
    study = load_study(str(path), overrides={"search.num_samples": 3})
    expected = fused_search.member_configs(study, tuner.param_space(study))
    def drawn(frame):
        return sorted(zip(frame["config/train.lr"], frame["config/train.batch_size"],
                          frame.repeat, strict=True))

    def configs(members):
        return sorted((c["train.lr"], c["train.batch_size"], c[REPEAT_KEY]) for c in members)

    assert drawn(run.trials) == configs(expected)
    assert drawn(new) == configs(expected[8:])

    # a run whose members are not the grown study's first draws (another seed here, as if
    # another version had drawn them) is refused before Ray starts; this one grows
    other = load_study(str(path), overrides={"search.num_samples": 4, "train.seed": 4})
    with pytest.raises(UserError, match="holds configs this version does not draw"):
        fused_search.check_growth(other, tuner.param_space(other), run_dir, 3)
    study = load_study(str(path), overrides={"search.num_samples": 4})
    fused_search.check_growth(study, tuner.param_space(study), run_dir, 3)
    again = cli("tune_hw.search", *args, "--num-samples", "4", "--resume")  # a second growth
    assert again.returncode == 0, again.stderr[-3000:]
    trials = results.load_run(run_dir).trials
    assert drawn(trials) == configs(fused_search.member_configs(study, tuner.param_space(study)))
    assert trials.trial_id.is_unique and set(run.trials.trial_id) < set(trials.trial_id)


def test_asha_stops_a_member_while_its_group_goes_on(tmp_path, cli):
    proc = cli("tune_hw.search", "lr_batch", "--quick", "--set", "search.algorithm=random",
               "--set", "space.train.batch_size={choice: [16]}", "--set", "train.epochs=4",
               "--set", "space.train.lr={loguniform: [0.0001, 0.3]}", "--set",
               "scheduler.grace_period=1", "--set", "scheduler.reduction_factor=2",
               "--num-samples", "6", "--fuse", "auto", *TWO_AT_ONCE, "--storage-path",
               str(tmp_path), "--name", "asha")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "lr_batch" / "asha"
    trials = results.load_run(run_dir).trials
    assert len(trials) == 6 and trials.group_id.nunique() == 2  # two trials at once
    stopped = trials[trials.status == "early_stopped"]
    assert len(stopped) and (trials.status == "completed").any()
    inside = [m for _, m in stopped.iterrows()
              if (trials[trials.group_id == m.group_id].final_epoch > m.final_epoch).any()]
    assert inside, trials[["trial_id", "status", "final_epoch"]]
    member = inside[0]
    rows = ray_files.read_json_lines(run_dir / f"trial_{member.group_id}" / "rows.jsonl")
    assert rows[member.final_epoch - 1]["members"][member.trial_id]["member_status"] \
        == "early_stopped"
    assert all(member.trial_id not in row["members"] for row in rows[member.final_epoch:])
    # a resumed search's board stops what this one stopped: a config's member that still
    # trains elsewhere (its repeats in another group, a grown grid's copy) stops, even at its
    # best value, and the rungs hold every stored result
    values, stopped = fused_search.stored_rungs(run_dir, "val_acc")
    assert sorted(stopped) == sorted(trials[trials.status == "early_stopped"].config_id)
    assert len(values) == trials.final_epoch.sum()
    board = RungBoard(max_t=4, grace_period=1, reduction_factor=2, mode="max")
    board.replay(values, stopped)
    assert board.decide([(member.config_id, 1, 1.0)]) == [member.config_id]
    kept = trials[trials.status == "completed"].iloc[0]
    assert board.decide([(kept.config_id, 2, 1.0)]) == []


def test_an_optuna_asha_study_fuses_its_members(tmp_path, cli):
    proc = cli("tune_hw.search", "lr_batch", "--quick", "--set",
               "space.train.batch_size={choice: [16, 128]}", "--num-samples", "6", "--fuse",
               "16", *TWO_AT_ONCE, "--storage-path", str(tmp_path), "--name", "tpe")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = results.load_run(tmp_path / "lr_batch" / "tpe").trials
    assert len(trials) == 6 and trials.trial_id.is_unique
    assert trials.group_id.nunique() < len(trials)
    assert set(trials.status) <= {"completed", "early_stopped", "diverged"}
    for _, group in trials.groupby("group_id"):
        assert group["config/train.batch_size"].nunique() == 1
