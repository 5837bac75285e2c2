"""tune_hw.analysis on small hand-made tables whose answers are known."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from tune_hw.analysis import effects, importance, params, selection, specific, trials
from tune_hw.distributions import Distribution
from tune_hw.ranking import Ranking


def table(val, test=None, **columns):
    """A trials.parquet-shaped frame: one row per trial, everything else defaulted."""
    n = len(val)
    test = val if test is None else test
    base = {"trial_id": [f"t{i}" for i in range(n)], "status": ["completed"] * n,
            "best_epoch": [3] * n, "best_val_acc": val, "val_loss_at_best": [1.0] * n,
            "train_acc_at_best": [v + 0.01 if v == v else v for v in val],
            "test_acc_at_best": test, "final_epoch": [3] * n, "final_val_acc": val,
            "wall_s": [1.0] * n}
    base.update({k if k in base else f"config/{k}": v for k, v in columns.items()})
    return pd.DataFrame(base)


LR = params.ParamSpec("train.lr", Distribution("loguniform", 1e-5, 1.0))
BATCH = params.ParamSpec("train.batch_size", Distribution("choice", values=(1, 16, 128, 1024)))


# ----------------------------------------------------------------------- val vs test

def test_perfect_ranking_gives_correlation_one_and_no_regret():
    s = selection.val_test_stats(table([0.5, 0.6, 0.7, 0.8], [0.45, 0.55, 0.65, 0.75]), 1000, 1000)
    assert s["spearman"] == pytest.approx(1) and s["kendall"] == pytest.approx(1)
    assert s["regret"] == 0 and s["optimism"] == pytest.approx(0.05)
    assert s["winner"] == {"trial_id": "t3", "val_acc": 0.8, "test_acc": 0.75, "test_rank": 1}
    assert s["winner_is_test_winner"] and s["p_same_winner"] > 0.99


def test_reversed_ranking_gives_minus_one_and_full_regret():
    s = selection.val_test_stats(table([0.5, 0.6, 0.7, 0.8], [0.75, 0.65, 0.55, 0.45]))
    assert s["spearman"] == pytest.approx(-1) and s["kendall"] == pytest.approx(-1)
    assert s["regret"] == pytest.approx(0.30) and s["optimism"] == pytest.approx(0.35)
    assert s["winner"]["test_rank"] == 4 and s["best_test"]["trial_id"] == "t0"
    assert not s["winner_is_test_winner"]
    assert s["p_same_winner"] is None  # no split sizes: no bootstrap
    assert "ranks 4 of 4 on test" in selection.verdict(s) and "0.300" in selection.verdict(s)


def test_val_ties_go_to_lower_loss_then_earlier_row():
    t = table([0.9, 0.9, 0.9], [0.1, 0.2, 0.3])
    assert selection.val_test_stats(t)["winner"]["trial_id"] == "t0"
    t["val_loss_at_best"] = [0.5, 0.4, 0.4]
    assert selection.val_test_stats(t)["winner"]["trial_id"] == "t1"
    assert selection.top_trials(t, 3) == ["t1", "t2", "t0"]


def test_unscored_trials_are_left_out_and_nan_never_wins():
    t = table([0.5, math.nan, 0.7], [0.5, 0.9, math.nan])
    s = selection.val_test_stats(t)
    assert s["n_trials"] == 1 and s["winner"]["trial_id"] == "t0"


def test_single_trial_has_no_correlation_and_says_so():
    s = selection.val_test_stats(table([0.8], [0.7]), 500, 500)
    assert math.isnan(s["spearman"]) and math.isnan(s["kendall"])
    assert s["regret"] == 0 and s["optimism"] == pytest.approx(0.1)
    assert s["p_same_winner"] is None
    assert selection.verdict(s).startswith("Only one trial")


def test_no_trial_at_all():
    s = selection.val_test_stats(table([]))
    assert s["n_trials"] == 0 and s["winner"] is None and "nothing to compare" in selection.verdict(s)


def test_constant_scores_give_undefined_correlation_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = selection.val_test_stats(table([0.5, 0.5, 0.5], [0.4, 0.5, 0.6]))
    assert math.isnan(s["spearman"]) and "correlation is undefined" in selection.verdict(s)


def test_bootstrap_clear_winner_and_coin_flip():
    assert selection.bootstrap_same_winner([0.9, 0.5], [0.9, 0.5], 1000, 1000) == 1.0
    p = selection.bootstrap_same_winner([0.8, 0.8], [0.8, 0.8], 1000, 1000, n_boot=20000)
    assert p == pytest.approx(0.5, abs=0.02)
    # ties between resampled scores are broken at random, not towards the first trial
    assert selection.bootstrap_same_winner([1.0, 1.0], [1.0, 1.0], 10, 10, 20000) == \
        pytest.approx(0.5, abs=0.02)


def test_bootstrap_matches_the_normal_approximation():
    # P(val picks A) = P(test picks A) = Phi(0.02 / sd of the difference); independent
    # splits, so P(same winner) = q^2 + (1 - q)^2
    q = norm.cdf(0.02 / math.sqrt(0.8 * 0.2 / 1000 + 0.78 * 0.22 / 1000))
    p = selection.bootstrap_same_winner([0.80, 0.78], [0.80, 0.78], 1000, 1000, n_boot=40000)
    assert p == pytest.approx(q ** 2 + (1 - q) ** 2, abs=0.02)


def test_bootstrap_is_reproducible_for_a_seed():
    args = ([0.7, 0.69, 0.68], [0.7, 0.71, 0.6], 300, 300)
    assert selection.bootstrap_same_winner(*args, seed=3) == selection.bootstrap_same_winner(*args, seed=3)


def test_regret_within_noise_uses_the_test_size():
    t = table([0.80, 0.79], [0.78, 0.79])
    assert selection.val_test_stats(t, 10_000, 100)["regret_within_noise"] is True
    assert selection.val_test_stats(t, 10_000, 10**7)["regret_within_noise"] is False
    assert selection.val_test_stats(t, 10_000, 100)["test_se"] == pytest.approx(
        math.sqrt(0.79 * 0.21 / 100))


def test_verdict_sentence_for_an_unreliable_pick():
    s = selection.val_test_stats(table([0.80, 0.799, 0.5], [0.79, 0.80, 0.5]), 200, 200)
    text = selection.verdict(s)
    assert s["p_same_winner"] < selection.CONFIDENT_P
    assert "within evaluation noise" in text and "cost 0.010" in text


# -------------------------------------------------------------------------------- gaps

def test_gap_labels_and_thresholds():
    t = table([0.94, 0.80, 0.69, 0.0, math.nan, 0.45, 0.30])
    t["train_acc_at_best"] = [0.95, 0.99, 0.70, 0.0, math.nan, 0.70, 0.40]
    t["status"] = ["completed", "completed", "early_stopped", "diverged", "error",
                   "completed", "running"]
    g = effects.gap_table(t).set_index("trial_id")
    assert g.label.to_dict() == {"t0": "good", "t1": "overfit", "t2": "underfit",
                                 "t3": "diverged", "t5": "underfit", "t6": "underfit"}
    assert g.gap["t1"] == pytest.approx(0.19)
    # thresholds are parameters: a looser overfit gap relabels t1, a looser margin t2
    loose = effects.gap_table(t, overfit_gap=0.2, underfit_margin=0.3).set_index("trial_id")
    assert loose.label["t1"] == "good" and loose.label["t2"] == "good"
    assert loose.label["t5"] == "overfit"  # 0.99 - 0.3 = 0.69 < 0.70: no longer underfit
    assert g.gap["t5"] == pytest.approx(0.25)


def test_a_diverged_trial_that_peaked_first_is_still_diverged():
    t = table([0.9, 0.8])
    t["status"] = ["diverged", "completed"]
    assert effects.gap_table(t).label.tolist() == ["diverged", "good"]


# ----------------------------------------------------------------------- parameters

def test_varied_params_from_the_space_and_sections():
    trials = table([0.5, 0.6], **{"train.lr": [1e-3, 1e-2], "model.name": ["mlp", "cnn"],
                                  "model.width": [64, 64], "model.depth": [2, 4]})
    study = {"space": {"train.lr": {"loguniform": [1e-5, 1.0]},
                       "model": {"choice": [{"name": "mlp"}, {"name": "cnn", "depth": 4}]}}}
    specs = params.varied_params(study, trials)
    assert [(s.key, s.kind) for s in specs] == [("train.lr", "loguniform"),
                                                ("model.name", "choice"),
                                                ("model.depth", "choice")]
    assert specs[1].values == ["cnn", "mlp"]
    assert specs[0].log and (specs[0].low, specs[0].high) == (1e-5, 1.0)
    assert [s.key for s in params.varied_params({}, trials)] == ["train.lr", "model.name",
                                                            "model.depth"]


@pytest.mark.parametrize("spec, value, side", [
    (LR, 0.9, "high"), (LR, 1e-5, "low"), (LR, 1.5e-5, "low"), (LR, 1e-3, None),
    (params.ParamSpec("x", Distribution("uniform", 0.0, 1.0)), 0.97, "high"),
    (params.ParamSpec("x", Distribution("uniform", 0.0, 1.0)), 0.5, None),
    (params.ParamSpec("x", Distribution("int", 1, 100)), 1, "low"),
    (BATCH, 1, "low"), (BATCH, 1024, "high"), (BATCH, 16, None),
    (params.ParamSpec("x", Distribution("choice", values=(True, False))), True, None),
    (params.ParamSpec("x", Distribution("choice", values=(32, 64))), 64, None),
    (params.ParamSpec("x", Distribution("choice", values=("none", "batch", "layer"))), "none", None),
])
def test_bound_side(spec, value, side):
    assert effects.bound_side(spec, value) == side


def test_param_effect_warns_when_the_best_sits_on_a_bound():
    t = table([0.5, 0.9, 0.7], **{"train.lr": [1e-3, 0.95, 0.1]})
    effect = effects.param_effect(t, LR)
    assert effect["best_value"] == 0.95 and effect["on_bound"] == "high"
    assert "upper search bound" in effect["warning"] and "widen" in effect["warning"]
    t["config/train.lr"] = [1e-3, 0.01, 0.1]
    assert effects.param_effect(t, LR)["warning"] is None


def test_group_table_compares_values_of_a_factor():
    t = table([0.6, 0.8, 0.7, 0.5], [0.55, 0.75, 0.72, 0.5], **{"model.norm": [
        "none", "batch", "batch", "none"]})
    g = effects.group_table(t, "model.norm")
    assert g.value.tolist() == ["batch", "none"]
    assert g.n_trials.tolist() == [2, 2] and g.best_val_acc.tolist() == [0.8, 0.6]
    assert g.test_acc_of_best.tolist() == [0.75, 0.55]
    assert g.median_val_acc.tolist() == pytest.approx([0.75, 0.55])


def test_heatmap_of_two_discrete_params_takes_the_best_per_cell():
    t = table([0.5, 0.6, 0.7, 0.2], **{"model.width": [32, 32, 64, 64],
                                       "model.depth": [2, 2, 2, 8]})
    width = params.ParamSpec("model.width", Distribution("grid", values=(32, 64)))
    depth = params.ParamSpec("model.depth", Distribution("grid", values=(2, 4, 8)))
    h = effects.heatmap_table(t, width, depth)
    assert list(h.index) == [32, 64] and list(h.columns) == [2, 4, 8]
    assert h.loc[32, 2] == 0.6 and h.loc[64, 2] == 0.7 and h.loc[64, 8] == 0.2
    assert math.isnan(h.loc[32, 8]) and math.isnan(h.loc[32, 4])


def test_heatmap_bins_a_log_range_into_log_equal_bins():
    t = table([0.1, 0.9, 0.5], **{"train.lr": [2e-5, 0.5, 0.6], "train.batch_size": [1, 1, 1]})
    h = effects.heatmap_table(t, LR, BATCH, bins=5)  # edges 1e-5, 1e-4, ..., 1
    assert len(h.index) == 5 and h.index[0].startswith("1e-05")
    assert h.iloc[0].loc[1] == 0.1 and h.iloc[4].loc[1] == 0.9
    assert h.iloc[1:4].isna().all().all()


def test_best_so_far_and_status_counts():
    t = table([0.2, math.nan, 0.5, 0.4])
    t["status"] = ["completed", "error", "early_stopped", "completed"]
    b = trials.best_so_far(t)
    assert b.trial_index.tolist() == [1, 2, 3, 4]
    assert b.best_so_far.tolist() == [0.2, 0.2, 0.5, 0.5]
    counts = trials.status_counts(t)
    assert counts["completed"] == 2 and counts["error"] == 1 and counts["diverged"] == 0
    assert sum(counts.values()) == 4


def test_leaderboard_puts_test_rank_beside_validation():
    t = table([0.5, 0.9, 0.7], [0.6, 0.7, 0.8], **{"train.lr": [0.1, 0.2, 0.3]})
    board = selection.leaderboard(t, [LR], k=2)
    assert board.trial_id.tolist() == ["t1", "t2"] and board.test_rank.tolist() == [2, 1]
    assert board["train.lr"].tolist() == [0.2, 0.3]


# --------------------------------------------------------------------------- importance

def test_importance_finds_the_parameter_that_matters():
    rng = np.random.default_rng(0)
    lr = 10 ** rng.uniform(-5, 0, 40)
    batch = rng.choice([1, 16, 128, 1024], 40)
    val = 0.9 - 0.1 * (np.log10(lr) + 2.5) ** 2  # only lr matters
    values, note = importance.param_importance(table(list(val), **{"train.lr": lr,
                                                          "train.batch_size": batch}),
                                      [LR, BATCH])
    assert set(values) == {"train.lr", "train.batch_size"}
    assert values["train.lr"] > 0.8 and sum(values.values()) == pytest.approx(1)
    assert "fANOVA" in note and "40 scored trials" in note


def test_importance_handles_bools_and_strings():
    t = table([0.5, 0.6, 0.7, 0.8, 0.55, 0.65],
              **{"model.residual": [True, False, True, False, True, False],
                 "model.norm": ["none", "none", "batch", "batch", "none", "batch"]})
    specs = [params.ParamSpec("model.residual", Distribution("grid", values=(True, False))),
             params.ParamSpec("model.norm", Distribution("grid", values=("none", "batch")))]
    values, _ = importance.param_importance(t, specs)
    assert set(values) == {"model.residual", "model.norm"}


@pytest.mark.parametrize("val, columns, specs, says", [
    ([0.5, 0.6], {"train.lr": [0.1, 0.2]}, [LR], "only train.lr was varied"),
    ([0.5], {"train.lr": [0.1], "train.batch_size": [1]}, [LR, BATCH], "this run has 1"),
    ([0.5, 0.6], {"train.lr": [0.1, 0.2], "train.batch_size": [1, 1]}, [LR, BATCH],
     "at most one hyperparameter"),
    ([0.5, 0.5], {"train.lr": [0.1, 0.2], "train.batch_size": [1, 16]}, [LR, BATCH],
     "same validation accuracy"),
    ([0.5, 0.6], {}, [], "no hyperparameter was varied"),
])
def test_importance_that_cannot_be_computed_is_a_sentence(val, columns, specs, says):
    values, note = importance.param_importance(table(val, **columns), specs)
    assert values is None and says in note


# ---------------------------------------------------------------- study-specific tables

def test_batch_noise_table():
    t = table([0.5, 0.6, 0.7], **{"train.batch_size": [16, 16, 256]})
    epochs = pd.DataFrame({"trial_id": ["t0", "t0", "t1", "t2", "t2"],
                           "epoch": [1, 2, 1, 1, 2], "steps": [125, 125, 125, 8, 8],
                           "train_loss": [2.0, 1.0, 1.5, 2.0, 1.8],
                           "step_loss_std": [0.4, 0.2, math.nan, 0.05, 0.03]})
    b = specific.batch_noise_table(t, epochs).set_index("batch_size")
    assert b.n_trials.to_dict() == {16: 2, 256: 1}
    assert b.steps_per_epoch.to_dict() == {16: 125, 256: 8}
    assert b.step_loss_std[16] == pytest.approx(0.3) and b.step_loss_std[256] == \
        pytest.approx(0.04)


def test_grad_flow_by_group_at_the_first_epoch():
    t = table([0.5, 0.6, 0.7], **{"model.residual": [True, True, False]})
    grads = pd.DataFrame({
        "trial_id": ["t0"] * 4 + ["t1"] * 2 + ["t2"] * 2, "epoch": [1, 1, 2, 2, 1, 1, 1, 1],
        "layer": [0, 1, 0, 1, 0, 1, 0, 1], "name": ["a", "b"] * 4,
        "grad_norm": [1.0, 2.0, 50.0, 50.0, 3.0, 2.0, 1e-4, 1.0]})
    spec = params.ParamSpec("model.residual", Distribution("grid", values=(True, False)))
    groups = specific.grad_groups(t, [spec])
    assert groups.to_dict() == {"t0": "residual=True", "t1": "residual=True",
                                "t2": "residual=False"}
    flow = specific.grad_flow_table(grads, groups)
    by = flow.set_index(["group", "layer"]).grad_norm
    assert by[("residual=True", 0)] == 2.0 and by[("residual=True", 1)] == 2.0
    assert by[("residual=False", 0)] == 1e-4
    ratios = specific.grad_ratio(flow).set_index("group").input_over_output
    assert ratios["residual=False"] == pytest.approx(1e-4) and ratios["residual=True"] == 1.0


def test_best_vs_last():
    t = table([0.8, 0.7, 0.6])
    t["best_epoch"], t["final_epoch"] = [3, 5, 10], [10, 5, 10]
    t["final_val_acc"] = [0.7, 0.7, 0.6]
    rows, summary = specific.best_vs_last(t)
    assert rows.val_drop.tolist() == pytest.approx([0.1, 0.0, 0.0])
    assert summary == {"n_trials": 3, "n_best_before_last": 1,
                       "median_val_drop": pytest.approx(0.0), "max_val_drop":
                           pytest.approx(0.1)}


def test_mode_key():
    mode = params.ParamSpec("train.mode", Distribution("grid", values=("finetune", "linear_probe", "scratch")))
    assert specific.mode_key({"name": "anything"}, [LR, mode]) == "train.mode"
    other = params.ParamSpec("model.init", Distribution("grid", values=("pretrained", "random")))
    assert specific.mode_key({"name": "transfer"}, [LR, other]) == "model.init"
    assert specific.mode_key({"name": "lr_batch"}, [LR, BATCH]) is None


def test_whole_section_variants_become_one_factor():
    space = {"model": {"grid": [{"residual": False, "norm": "none"},
                                {"residual": True, "norm": "none"},
                                {"name": "cnn", "kernel_size": 3, "channels": 8}]}}
    t = table([0.5, 0.7, 0.6, 0.4], **{"model.name": ["mlp", "mlp", "cnn", "mlp"],
                                       "model.residual": [False, True, False, True],
                                       "model.norm": ["none", "none", "none", "batch"],
                                       "model.kernel_size": [None, None, 3, None],
                                       "model.channels": [None, None, 8, None]})
    t = params.with_variants(t, {"space": space})
    assert t["config/model"].tolist() == ["residual=False, norm=none",
                                          "residual=True, norm=none",
                                          "cnn kernel_size=3, channels=8",
                                          "other"]
    specs = params.varied_params({"space": space}, t)
    assert [(s.key, s.kind) for s in specs] == [("model", "grid")]
    assert specs[0].values[2] == "cnn kernel_size=3, channels=8"
    assert specific.grad_groups(t, specs)["t1"] == "residual=True, norm=none"
    assert effects.group_table(t, "model").value.tolist()[0] == "residual=True, norm=none"


# --------------------------------------------------- each trial's own sizes (defect 6)

def test_bootstrap_and_standard_errors_use_each_trials_own_split_sizes():
    t = table([0.80, 0.78], [0.80, 0.78])
    t["val_size"], t["test_size"] = [1000, 100], [1000, 100]
    s = selection.val_test_stats(t, n_val=10**6, n_test=10**6, n_boot=40000)  # sizes of old runs only
    q = norm.cdf(0.02 / math.sqrt(0.8 * 0.2 / 1000 + 0.78 * 0.22 / 100))
    assert s["p_same_winner"] == pytest.approx(q ** 2 + (1 - q) ** 2, abs=0.02)
    assert s["test_se"] == pytest.approx(math.sqrt(0.8 * 0.2 / 1000))  # the best trial's n
    assert s["val_sizes"] == [100, 1000] and s["n_val"] is None
    same = table([0.80, 0.78], [0.80, 0.78])
    assert selection.val_test_stats(same, 1000, 1000)["val_sizes"] == [1000]  # older runs: the study's


def test_trials_without_a_healthy_epoch_are_counted_apart():
    t = table([0.5, math.nan, 0.7, math.nan], [0.5, math.nan, 0.6, math.nan])
    t["status"] = ["completed", "diverged", "completed", "error"]
    assert trials.left_out(t) == {"diverged": 1, "error": 1}
    assert selection.val_test_stats(t)["n_trials"] == 2
    assert selection.leaderboard(t, []).trial_id.tolist() == ["t2", "t0"]


def test_the_winner_follows_the_studys_ranking():
    t = table([0.9, 0.8, 0.7], [0.5, 0.6, 0.7])
    t["val_loss_at_best"] = [0.9, 0.3, 0.5]
    by_loss = Ranking("val_loss", "min")
    assert selection.val_test_stats(t)["winner"]["trial_id"] == "t0"
    assert selection.val_test_stats(t, ranking=by_loss)["winner"]["trial_id"] == "t1"
    assert selection.top_trials(t, 3, by_loss) == ["t1", "t2", "t0"]


# ------------------------------------------------- bounds, edges and value order (defect 9)

def test_a_choice_has_edges_not_bounds_and_a_hard_limit_has_nothing_beyond():
    t = table([0.9, 0.5, 0.4], **{"train.batch_size": [1, 16, 1024]})
    effect = effects.param_effect(t, BATCH)
    assert effect["on_bound"] == "low" and "widen" not in effect["warning"]
    assert "edge of the choice [1, 16, 128, 1024], the smallest train.batch_size there is" in \
        effect["warning"] and "bound" not in effect["warning"]
    t["config/train.batch_size"] = [1024, 16, 1]
    effect = effects.param_effect(t, BATCH)
    assert "upper edge of the choice" in effect["warning"] and "not tried" in effect["warning"]
    assert "widen" not in effect["warning"]


def test_a_range_at_a_hard_limit_is_not_asked_to_widen():
    spec = params.ParamSpec("train.batch_size", Distribution("int", 1, 64))
    effect = effects.param_effect(table([0.9, 0.5], **{"train.batch_size": [1, 30]}), spec)
    assert "sits on the lower search bound (1), the smallest" in effect["warning"]
    assert "widen" not in effect["warning"]


def test_per_value_tables_list_numbers_in_numeric_order():
    t = table([0.5, 0.9, 0.7, 0.6], **{"train.batch_size": [1, 128, 16, 1024]})
    assert effects.group_table(t, "train.batch_size").value.tolist() == [1, 16, 128, 1024]
