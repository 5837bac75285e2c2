"""Claims → verdicts (tune_hw.analysis.findings, tune_hw.analysis.trial_metrics) on hand-made
tables."""

import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from tune_hw import claims as C
from tune_hw.analysis import config_stats as CS
from tune_hw.analysis import findings as F
from tune_hw.analysis import trial_metrics as TM

SIZES = {"train": 1000, "val": 1000, "test": 1000}
STUDY = {
    "name": "toy", "dataset": {"name": "digits"}, "model": {},
    "train": {"epochs": 10, "lr": 0.01, "batch_size": 32, "seed": 0, "track_grads": True},
    "space": {"model": {"grid": [{"name": "mlp", "width": 64}, {"name": "cnn", "kernel_size": 3}]},
              "train.lr": {"grid": [1.0, 0.1, 1.0e-3]},
              "train.batch_size": {"grid": [16, 128, 1024]}},
    "data_sizes": SIZES,
}
MODEL = {"mlp": {"model.name": "mlp", "model.width": 64},
         "cnn": {"model.name": "cnn", "model.kernel_size": 3}}


def trials(rows):
    """trials.parquet rows: dotted config keys and metric overrides on healthy defaults."""
    out = []
    for i, row in enumerate(rows):
        base = {"trial_id": f"t{i}", "status": "completed", "best_epoch": 5,
                "best_val_acc": 0.8, "val_loss_at_best": 0.5, "train_acc_at_best": 0.85,
                "test_acc_at_best": 0.8, "final_epoch": 10, "final_val_acc": 0.78,
                "final_test_acc": 0.78, "wall_s": 1.0, "seed": 0,
                "config/train.lr": 0.1, "config/train.batch_size": 128,
                **{f"config/{k}": v for k, v in MODEL["mlp"].items()}}
        for key, value in row.items():
            if key == "model":
                base.pop("config/model.width", None)
                base.update({f"config/{k}": v for k, v in MODEL[value].items()})
            else:
                base["config/" + key if "." in key else key] = value
        out.append(base)
    return pd.DataFrame(out)


NO_EPOCHS = pd.DataFrame(columns=["trial_id", "epoch", "steps", "val_acc", "val_loss",
                                  "step_loss_std"])
NO_GRADS = pd.DataFrame(columns=["trial_id", "epoch", "layer", "name", "grad_norm"])


def evaluate(text, t, epochs=NO_EPOCHS, grads=NO_GRADS, study=STUDY, **kw):
    claims = C.parse_claims(yaml.safe_load(text), study, "toy.yaml")
    return F.evaluate(claims, t, epochs, grads, study, **kw)


GAP_CLAIM = "- {name: MLPs overfit more, compare: gap, higher: {model.name: %s}, lower: {model.name: %s}}"


def gap_trials(mlp_gaps, cnn_gaps):
    rows = [{"model": "mlp", "train_acc_at_best": 0.8 + g} for g in mlp_gaps]
    return trials(rows + [{"model": "cnn", "train_acc_at_best": 0.8 + g} for g in cnn_gaps])


# -------------------------------------------------------------------------------- verdicts

def test_compare_is_supported_when_the_interval_excludes_zero_on_the_claimed_side():
    t = gap_trials([0.18, 0.20, 0.22, 0.19], [0.02, 0.03, 0.01, 0.02])
    (f,) = evaluate(GAP_CLAIM % ("mlp", "cnn"), t)
    assert f.verdict == "supported" and f.n == 8 and f.kind == "compare"
    assert f.effect == pytest.approx(0.1975 - 0.02)
    assert 0 < f.ci_low < f.effect < f.ci_high
    assert [g.n for g in f.groups] == [4, 4] and f.groups[0].value == pytest.approx(0.1975)
    assert f.sentence.startswith("Supported: gap of model.name=mlp minus model.name=cnn is 0.177")
    assert "evaluation examples" in f.basis


def test_compare_is_contradicted_when_the_interval_lies_on_the_other_side():
    t = gap_trials([0.18, 0.20, 0.22, 0.19], [0.02, 0.03, 0.01, 0.02])
    (f,) = evaluate(GAP_CLAIM % ("cnn", "mlp"), t)
    assert f.verdict == "contradicted" and f.effect == pytest.approx(-0.1775)
    assert f.ci_high < 0


def test_compare_is_inconclusive_at_small_n():
    (one_each,) = evaluate(GAP_CLAIM % ("mlp", "cnn"), gap_trials([0.2], [0.02]))
    assert one_each.verdict == "inconclusive" and math.isnan(one_each.effect)
    assert "model.name=mlp has 1" in one_each.sentence and "search.repeats" in one_each.sentence
    (overlap,) = evaluate(GAP_CLAIM % ("mlp", "cnn"), gap_trials([0.05, 0.25], [0.10, 0.15]))
    assert overlap.verdict == "inconclusive" and overlap.ci_low < 0 < overlap.ci_high


def test_diverged_trials_without_metrics_leave_metric_claims_but_count_for_labels():
    nan = math.nan
    diverged = {"status": "diverged", "best_val_acc": nan, "train_acc_at_best": nan,
                "test_acc_at_best": nan, "val_loss_at_best": nan, "best_epoch": nan}
    t = trials([{"train.lr": 1.0, **diverged}] * 6 + [{"train.lr": 0.1}] * 3)
    compare, label = evaluate("""
    - {name: a, compare: best_val_acc, group: all, above: 0.5}
    - {name: b, label: [diverged, underfit], group: {train.lr: 1.0}}
    """, t)
    assert compare.n == 3 and compare.groups[0].n == 3
    assert label.n == 6 and label.effect == 1.0 and label.verdict == "supported"


def test_label_share_uses_the_exact_binomial_interval():
    def label(n_diverged, n_good):
        t = trials([{"train.lr": 1.0, "status": "diverged"}] * n_diverged
                   + [{"train.lr": 1.0}] * n_good)
        return evaluate("- {name: a, label: diverged, group: {train.lr: 1.0}}", t)[0]
    six, three, none = label(6, 0), label(3, 0), label(0, 6)
    assert six.verdict == "supported" and six.ci_low == pytest.approx(0.025 ** (1 / 6))
    assert three.verdict == "inconclusive" and three.effect == 1.0  # 3 of 3 is not enough
    assert "at least 6 trials, all labelled, are needed" in three.sentence
    assert [F.trials_needed(s) for s in (0.0, 0.5, 0.9)] == [2, 6, 36]
    assert F.clopper_pearson(36, 36)[0] > 0.9 > F.clopper_pearson(35, 35)[0]
    assert none.verdict == "contradicted" and none.ci_high == pytest.approx(1 - 0.025 ** (1 / 6))
    exact = stats.binomtest(4, 9).proportion_ci(0.95, method="exact")
    assert F.clopper_pearson(4, 9) == pytest.approx((exact.low, exact.high))


def test_trend_of_steps_per_epoch_falls_with_batch_size():
    sizes = [16, 128, 1024]
    t = trials([{"train.batch_size": b, "train.lr": lr} for b in sizes for lr in (0.1, 1.0)])
    steps = {16: 63, 128: 8, 1024: 1}
    epochs = pd.DataFrame([{"trial_id": tid, "epoch": e, "steps": steps[b], "val_acc": 0.5,
                            "val_loss": 1.0, "step_loss_std": 0.1}
                           for tid, b in zip(t.trial_id, t["config/train.batch_size"],
                                             strict=True) for e in (1, 2)])
    falling, rising = evaluate("""
    - {name: fewer steps, trend: steps_per_epoch, across: train.batch_size, direction: falling}
    - {name: more steps, trend: steps_per_epoch, across: train.batch_size, direction: rising}
    """, t, epochs)
    assert falling.verdict == "supported" and falling.effect == -7  # the smallest fall: 8 -> 1
    assert (falling.ci_low, falling.ci_high) == (-7, -7)  # steps carry no noise
    assert rising.verdict == "contradicted" and rising.effect == -55  # the "smallest rise"
    assert falling.basis == "bootstrap over trials within each group"


def test_selection_claims_on_config_means_over_repeats():
    def run(winner_test):
        rows = []
        for config, (val, test) in {"a": (0.90, winner_test), "b": (0.85, 0.85),
                                    "c": (0.70, 0.70)}.items():
            rows += [{"config_id": config, "repeat": r, "best_val_acc": val + 0.002 * r,
                      "test_acc_at_best": test + 0.002 * r} for r in range(3)]
        return evaluate("- {name: s, selection: test_winner}", trials(rows))[0]
    clear, wrong, tie = run(0.90), run(0.80), run(0.851)
    assert clear.verdict == "supported" and clear.effect == pytest.approx(0.05)
    assert clear.groups[0].group == "validation winner a" and clear.n == 9
    assert wrong.verdict == "contradicted" and wrong.effect == pytest.approx(-0.05)
    assert tie.verdict == "inconclusive"
    assert clear.basis == "bootstrap over repeats within each config and evaluation examples"


# ----------------------------------------------------------------- the interval, directly

def nested_variance(x, n_examples):
    """Variance of a bootstrap group mean: trials drawn again, then Binomial-redrawn.

    mean* = sum_j c_j Y_j / n with c ~ Multinomial(n, 1/n) and Y_j = Bin(N, x_j) / N:
    Var = var(x) / n + E[c_j^2] mean(x(1-x)/N) / n with E[c_j^2] = 2 - 1/n.
    """
    n = len(x)
    return x.var() / n + (2 - 1 / n) * (x * (1 - x) / n_examples).mean() / n


def test_one_trial_interval_is_the_exact_binomial_quantiles():
    """A single trial is only redrawn: its interval is that of Binomial(1000, 0.8) / 1000."""
    t = trials([{"best_val_acc": 0.8, "config_id": "a"}])
    (f,) = evaluate("- {name: a, selection: test_winner}", t)  # one config: undecided
    assert f.verdict == "inconclusive" and "selection needs 2" in f.sentence
    table = CS.config_table(t, STUDY, n_boot=8000)
    low, high = stats.binom.ppf([0.025, 0.975], SIZES["val"], 0.8) / SIZES["val"]
    assert table.val_low[0] == pytest.approx(low, abs=0.002)
    assert table.val_high[0] == pytest.approx(high, abs=0.002)


def test_identical_trials_interval_matches_the_nested_variance():
    t = trials([{"best_val_acc": 0.8}] * 10)
    (f,) = evaluate("- {name: a, compare: best_val_acc, group: all, above: 0.5}", t,
                    n_boot=8000)
    half = 1.96 * math.sqrt(nested_variance(np.full(10, 0.8), SIZES["val"]))
    assert (f.ci_high - f.ci_low) / 2 == pytest.approx(half, rel=0.06)
    assert f.effect == pytest.approx(0.8) and f.verdict == "supported"


def test_seed_interval_of_two_trials_spans_them_exactly():
    """Without evaluation noise the mean of 2 resampled values is a, (a+b)/2 or b with
    probabilities 1/4, 1/2, 1/4: its 2.5% and 97.5% quantiles are a and b."""
    t = trials([{"val_loss_at_best": 0.4}, {"val_loss_at_best": 0.6}])
    (f,) = evaluate("- {name: a, compare: val_loss_at_best, group: all, below: 1.0}", t)
    assert (f.ci_low, f.ci_high) == (pytest.approx(0.4), pytest.approx(0.6))
    assert f.effect == pytest.approx(0.5) and f.verdict == "supported"


def test_difference_interval_matches_the_normal_approximation_of_both_noises():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.80, 0.02, 60), rng.normal(0.77, 0.02, 60)
    t = trials([{"model": "mlp", "best_val_acc": v} for v in a]
               + [{"model": "cnn", "best_val_acc": v} for v in b])
    (f,) = evaluate("- {name: a, compare: best_val_acc, higher: {model.name: mlp}, "
                    "lower: {model.name: cnn}}", t, n_boot=6000)
    half = 1.96 * math.sqrt(sum(nested_variance(x, SIZES["val"]) for x in (a, b)))
    assert f.effect == pytest.approx(a.mean() - b.mean())
    assert (f.ci_high - f.ci_low) / 2 == pytest.approx(half, rel=0.08)
    assert (f.ci_low + f.ci_high) / 2 == pytest.approx(f.effect, abs=0.1 * half)


def test_repeats_are_resampled_within_their_config():
    configs = np.array(["a", "a", "a", "b", "b", "c"])
    idx, by_config = TM.resample_positions(np.arange(6), configs, np.random.default_rng(0), 500)
    assert by_config and idx.shape == (500, 6)
    assert np.isin(idx[:, :3], [0, 1, 2]).all() and np.isin(idx[:, 3:5], [3, 4]).all()
    assert (idx[:, 5] == 5).all()
    flat, by_config = TM.resample_positions(np.arange(3), np.array(["x", "y", "z"]),
                                            np.random.default_rng(0), 500)
    assert not by_config and set(np.unique(flat)) == {0, 1, 2}


def test_verdicts_are_deterministic_for_a_seed():
    t = gap_trials([0.05, 0.25, 0.1], [0.10, 0.15, 0.12])
    first, again = (evaluate(GAP_CLAIM % ("mlp", "cnn"), t, seed=3)[0] for _ in range(2))
    other = evaluate(GAP_CLAIM % ("mlp", "cnn"), t, seed=4)[0]
    assert first == again and (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_verdict_rule_at_the_edges():
    assert F.verdict(0, math.inf, 0.01, 0.2) == "supported"
    assert F.verdict(0, math.inf, 0.0, 0.2) == "inconclusive"  # touching the side is not inside
    assert F.verdict(0, math.inf, -0.2, 0.0) == "contradicted"
    assert F.verdict(-0.02, 0.02, -0.01, 0.01) == "supported"
    assert F.verdict(-0.02, 0.02, 0.03, 0.05) == "contradicted"
    assert F.verdict(-0.02, 0.02, 0.01, 0.05) == "inconclusive"
    assert F.verdict(0, math.inf, math.nan, math.nan) == "inconclusive"


# ------------------------------------------------------------------ forms, groups, metrics

def test_order_contrast_same_and_where():
    rows = []
    for shuffle, (cnn, mlp) in {False: (0.95, 0.70), True: (0.52, 0.70)}.items():
        rows += [{"model": "cnn", "dataset.shuffle": shuffle, "best_val_acc": cnn + d}
                 for d in (0, 0.01, -0.01)]
        rows += [{"model": "mlp", "dataset.shuffle": shuffle, "best_val_acc": mlp + d}
                 for d in (0, 0.01, -0.01)]
    study = {**STUDY, "space": {**STUDY["space"], "dataset.shuffle": {"grid": [False, True]}}}
    ordered, contrast, same, flipped = evaluate("""
    - {name: a, compare: best_val_acc, higher: {model.name: cnn}, lower: {model.name: mlp},
       where: {dataset.shuffle: false}}
    - {name: b, compare: best_val_acc, higher: {model.name: cnn}, lower: {model.name: mlp},
       more_in: {dataset.shuffle: false}, than_in: {dataset.shuffle: true}}
    - {name: c, compare: best_val_acc, same: [{model.name: mlp, dataset.shuffle: false},
                                               {model.name: mlp, dataset.shuffle: true}],
       within: 0.05}
    - {name: d, compare: best_val_acc, order: [{model.name: mlp}, {model.name: cnn}],
       where: {dataset.shuffle: true}}
    """, trials(rows), study=study)
    assert ordered.verdict == "supported" and ordered.effect == pytest.approx(0.25)
    assert ordered.n == 6
    assert contrast.verdict == "supported" and contrast.effect == pytest.approx(0.25 + 0.18)
    assert same.verdict == "supported" and abs(same.effect) < 1e-9
    assert flipped.verdict == "supported" and flipped.effect == pytest.approx(0.18)


def test_a_whole_section_variant_label_selects_its_trials():
    t = gap_trials([0.18, 0.20], [0.02, 0.03])
    (f,) = evaluate("- {name: a, compare: gap, higher: {model: mlp width=64}, "
                    "lower: {model: cnn kernel_size=3}}", t)
    assert f.verdict == "supported" and [g.n for g in f.groups] == [2, 2]


def curve_epochs(curves, steps=10, running=None):
    rows = []
    for tid, vals in curves.items():
        for e, v in enumerate(vals, 1):
            rows.append({"trial_id": tid, "epoch": e, "steps": steps, "val_acc": v,
                         "val_loss": 1.0 - v, "step_loss_std": 0.1 * e, "diverged": False,
                         "train_loss_running": (running or {}).get(tid, 1.0)})
    return pd.DataFrame(rows)


def test_an_accuracy_no_trial_reaches_is_inconclusive_not_a_tie():
    """All curves below acc: every value is the stand-in, an interval [0, 0], not evidence."""
    t = gap_trials([0.1, 0.1], [0.1, 0.1])
    low = {tid: [0.2, 0.3] for tid in t.trial_id}
    claim = ("- {name: a, compare: epochs_to_acc, acc: 0.9, higher: {model.name: mlp}, "
             "lower: {model.name: cnn}}")
    (f,) = evaluate(claim, t, curve_epochs(low))
    assert f.verdict == "inconclusive" and "no trial reaches" in f.sentence
    reached = {**low, t.trial_id[2]: [0.95, 0.96], t.trial_id[3]: [0.5, 0.95]}
    (g,) = evaluate(claim, t, curve_epochs(reached))  # the CNNs reach it: 3 − 1.5 epochs
    assert g.verdict == "supported" and g.effect == pytest.approx(1.5)


def test_epochs_and_steps_to_an_accuracy_with_never_reached_counted_one_past():
    t = trials([{}, {}, {}])
    epochs = curve_epochs({"t0": [0.5, 0.97, 0.98], "t1": [0.95, 0.96, 0.97],
                           "t2": [0.1, 0.2, 0.3]})
    sizes = {k: np.full(3, math.nan) for k in ("train", "val", "test")}  # no redraw
    e = TM.trial_values(C.Metric("epochs_to_acc", 0.9), t, epochs, NO_GRADS, sizes)
    s = TM.trial_values(C.Metric("steps_to_acc", 0.9), t, epochs, NO_GRADS, sizes)
    assert e.point.tolist() == [2, 1, 4] and s.point.tolist() == [20, 10, 40]
    noisy = TM.trial_values(C.Metric("epochs_to_acc", 0.9), t, epochs, NO_GRADS,
                            TM.split_sizes(t, STUDY))
    draws = noisy.draw(np.random.default_rng(0), 400)
    assert set(np.unique(draws[:, 0])) == {2.0}  # 0.5 and 0.95 are far from 0.9 at n=1000
    assert noisy.noisy and draws.shape == (400, 3)


def test_gradient_ratio_noise_running_loss_and_best_before_final():
    t = trials([{"best_epoch": 3, "final_epoch": 10}, {"best_epoch": 10, "final_epoch": 10}])
    grads = pd.DataFrame([{"trial_id": tid, "epoch": ep, "layer": layer, "name": f"l{layer}",
                           "grad_norm": norm}
                          for tid, norms in {"t0": [1e-5, 1e-2, 1.0], "t1": [0.0, 0.5, 2.0]}.items()
                          for ep in (1, 2) for layer, norm in enumerate(norms)])
    epochs = curve_epochs({"t0": [0.5, 0.6, 0.7], "t1": [0.5, 0.6]}, running={"t0": 0.7, "t1": 0.4})
    sizes = TM.split_sizes(t, STUDY)

    def point(name, param=None):
        return TM.trial_values(C.Metric(name, param), t, epochs, grads, sizes).point.tolist()
    assert point("grad_ratio", "first") == pytest.approx([-5, math.log10(TM.FLOAT32_TINY / 2)])
    assert point("step_loss_noise") == pytest.approx([0.25, 0.2])  # epoch 1 left out
    assert point("val_below_train_running", 1) == pytest.approx([0.7 - 0.5, 0.4 - 0.5])
    assert point("best_epoch_before_final") == [7, 0]
    assert point("steps_per_epoch") == [10, 10]


def test_every_metric_of_the_language_has_values_for_every_trial():
    t = trials([{}, {}])
    epochs = curve_epochs({"t0": [0.5, 0.9], "t1": [0.4, 0.8]})
    grads = pd.DataFrame([{"trial_id": tid, "epoch": 1, "layer": k, "name": "l",
                           "grad_norm": 1.0} for tid in ("t0", "t1") for k in (0, 1)])
    for name, (_, default) in C.METRICS.items():
        values = TM.trial_values(C.Metric(name, default or 0.5), t, epochs, grads,
                                 TM.split_sizes(t, STUDY))
        assert values.point.shape == (2,) and np.isfinite(values.point).all(), name
        assert values.draw(np.random.default_rng(0), 3).shape == (3, 2), name


def test_metrics_a_run_did_not_record_make_claims_inconclusive():
    t = trials([{}, {}])
    (f,) = evaluate("- {name: a, compare: grad_ratio, group: all, below: -2}", t)
    assert f.verdict == "inconclusive" and "has 0" in f.sentence


def test_split_sizes_prefer_trial_columns_then_study_data_sizes():
    t = trials([{"val_size": 500, "train_eval_size": 300}, {}])
    sizes = TM.split_sizes(t, STUDY)
    assert sizes["val"].tolist() == [500, 1000] and sizes["test"].tolist() == [1000, 1000]
    assert sizes["train"][0] == 300  # the rows the train accuracy was measured on
    assert np.isnan(TM.split_sizes(t, {})["test"]).all()
    draws = TM.redraw(np.array([0.8, 0.8]), np.array([math.nan, 10]), np.random.default_rng(0), 50)
    assert (draws[:, 0] == 0.8).all() and set(np.unique(draws[:, 1] * 10)) <= set(range(11))


def test_summary_is_the_summary_json_entry_with_nan_as_none():
    (f,) = evaluate(GAP_CLAIM % ("mlp", "cnn"), gap_trials([0.2], [0.02]))
    assert f.summary() == {"name": "MLPs overfit more", "verdict": "inconclusive",
                           "effect": None, "ci_low": None, "ci_high": None, "n": 2}
    d = f.as_dict()
    assert d["groups"][0] == {"group": "model.name=mlp", "n": 1, "value": pytest.approx(0.2)}
