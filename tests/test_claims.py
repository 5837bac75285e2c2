"""The claim language (tune_hw.claims): every construct parses, every bad claim is one line."""

import math
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tune_hw import claim_groups, results, studies
from tune_hw import claims as C
from tune_hw.analysis import effects, params
from tune_hw.claims import Compare, Group, Label, Metric, Selection, Selector, Trend
from tune_hw.errors import UserError

STUDY_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

WHERE = "search_spaces/toy.yaml"
GRID = {  # a resolved study with a whole-section model space and two grids
    "name": "toy", "dataset": {"name": "mnist1d"}, "model": {},
    "train": {"epochs": 10, "optimizer": "sgd", "lr": 0.01, "batch_size": 32, "seed": 0,
              "track_grads": True},
    "space": {"model": {"grid": [{"name": "mlp", "width": 64},
                                 {"name": "cnn", "kernel_size": 1, "channels": 8},
                                 {"name": "cnn", "kernel_size": 3, "channels": 8}]},
              "train.lr": {"grid": [1.0, 0.1, 1.0e-3]},
              "dataset.shuffle": {"grid": [False, True]}},
}
RANGE = {  # a resolved study with a continuous lr and a choice of batch sizes
    "name": "lr", "dataset": {"name": "countries"}, "model": {"name": "mlp", "width": 8},
    "train": {"epochs": 4, "lr": 0.01, "batch_size": 32, "seed": 0, "track_grads": False},
    "space": {"train.lr": {"loguniform": [1.0e-5, 1.0]},
              "train.batch_size": {"choice": [1, 16, 128, 1024]}},
}


def parse(text, study=GRID):
    return C.parse_claims(yaml.safe_load(text), study, WHERE)


def one(text, study=GRID):
    (claim,) = parse(text, study)
    return claim


def sel(key, *values, low=-math.inf, high=math.inf):
    return Selector(key, tuple(values), low, high)


MLP = Group((sel("model.name", "mlp"),))


# ----------------------------------------------------------------------------- constructs

def test_higher_lower_parses_into_pairs_with_the_claimed_side_above_zero():
    c = one("""
    - name: MLPs overfit more than CNNs
      compare: gap
      higher: {model.name: mlp}
      lower: {model.name: cnn, model.kernel_size: [3]}
    """)
    assert isinstance(c, Compare) and c.form == "pairs" and c.metric == Metric("gap")
    assert c.groups == (MLP, Group((sel("model.name", "cnn"), sel("model.kernel_size", 3))))
    assert (c.low, c.high) == (0.0, math.inf) and c.where == Group()


def test_lower_list_by_and_where_parse():
    c = one("""
    - name: MLP beats both CNNs by a point on ordered signals
      compare: test_acc_at_best
      higher: {model.name: mlp}
      lower: [{model.kernel_size: 1}, {model.kernel_size: 3}]
      by: 0.01
      where: {dataset.shuffle: false}
    """)
    assert len(c.groups) == 3 and c.low == 0.01
    assert c.where == Group((sel("dataset.shuffle", False),))


def test_contrast_order_same_and_threshold_parse():
    contrast, order, same, above, below = parse("""
    - {name: a, compare: best_val_acc, higher: {model.name: cnn}, lower: {model.name: mlp},
       more_in: {dataset.shuffle: false}, than_in: {dataset.shuffle: true}}
    - {name: b, compare: best_val_acc, order: [{train.lr: 0.1}, {train.lr: 1.0e-3}, {train.lr: 1.0}]}
    - {name: c, compare: best_val_acc, same: [{model.kernel_size: 1, dataset.shuffle: false},
                                               {model.kernel_size: 1, dataset.shuffle: true}],
       within: 0.02}
    - {name: d, compare: grad_ratio, epoch: last, group: all, above: -1}
    - {name: e, compare: val_below_train_running, group: {train.lr: 1.0e-3}, below: 0}
    """)
    assert contrast.form == "contrast" and contrast.contrast == (
        Group((sel("dataset.shuffle", False),)), Group((sel("dataset.shuffle", True),)))
    assert order.form == "order" and [g.selectors[0].values for g in order.groups] == [
        (0.1,), (1e-3,), (1.0,)]
    assert same.form == "same" and (same.low, same.high) == (-0.02, 0.02)
    assert above.form == "threshold" and above.groups == (Group(),) and above.low == -1
    assert above.metric == Metric("grad_ratio", "last")
    assert below.metric == Metric("val_below_train_running", 1)  # default epoch
    assert (below.low, below.high) == (-math.inf, 0.0)


def test_trend_levels_sort_ascending_or_follow_values():
    rising, falling = parse("""
    - {name: a, trend: best_val_acc, across: train.lr, direction: rising}
    - {name: b, trend: epochs_to_acc, acc: 0.9, across: train.lr, direction: falling,
       values: [1.0e-3, 0.1]}
    """)
    assert isinstance(rising, Trend) and rising.levels == (1e-3, 0.1, 1.0)
    assert (rising.low, rising.high) == (0.0, math.inf)
    assert falling.levels == (1e-3, 0.1) and falling.metric == Metric("epochs_to_acc", 0.9)
    assert (falling.low, falling.high) == (-math.inf, 0.0)


def test_label_and_selection_parse():
    label, default, selection, exact = parse("""
    - {name: a, label: [diverged, underfit], group: {train.lr: 1.0}, share: 0.9}
    - {name: b, label: underfit, group: {model.kernel_size: 1}}
    - {name: c, selection: test_winner, within: 0.01}
    - {name: d, selection: test_winner}
    """)
    assert isinstance(label, Label) and label.labels == ("diverged", "underfit")
    assert label.low == 0.9 and label.group == Group((sel("train.lr", 1.0),))
    assert default.low == 0.5 and default.labels == ("underfit",)
    assert isinstance(selection, Selection) and selection.low == -0.01
    assert exact.low == 0.0 and math.copysign(1, exact.low) == 1


def test_group_values_any_of_ranges_all_and_section_labels():
    c = one("""
    - name: ranges
      compare: best_val_acc
      higher: {model: "cnn kernel_size=3, channels=8", train.lr: {min: 0.1}}
      lower: all
    """)
    assert c.groups[0] == Group((sel("model", "cnn kernel_size=3, channels=8"),
                                 sel("train.lr", low=0.1)))
    assert c.groups[1] == Group()
    r = one("- {name: r, label: diverged, group: {train.lr: {min: 0.3, max: 1.0}}}", RANGE)
    assert r.group.selectors[0] == sel("train.lr", low=0.3, high=1.0)
    assert one("- {name: v, label: good, group: {train.lr: 1.0e-3}}", RANGE).group.selectors[
        0].values == (1e-3,)


def test_no_claims_is_an_empty_tuple_and_groups_describe_themselves():
    assert C.parse_claims(None, GRID, WHERE) == ()
    g = Group((sel("model.name", "cnn"), sel("model.kernel_size", 3, 5), sel("train.lr", low=0.1)))
    assert g.describe() == "model.name=cnn, model.kernel_size in {3, 5}, train.lr in [0.1, inf]"
    assert Group().describe() == "all trials"


# ------------------------------------------------------------------------------ bad claims

BAD = [  # (claims YAML, study, key named, fragment of the problem)
    ("- {name: a, compare: accuracy, group: all, above: 0}", GRID, "compare", "unknown metric 'accuracy'"),
    ("- {name: a, compare: gap, higher: {model.kernel: 3}, lower: all}", GRID, "model.kernel", "not a key of this study"),
    ("- {name: a, compare: gap, higher: {model.name: vit}, lower: all}", GRID, "model.name", "'vit' is not a value of this study"),
    ("- {name: a, compare: gap, higher: {model.kernel_size: true}, lower: all}", GRID, "model.kernel_size", "True is not a value"),
    ("- {name: a, compare: gap, higher: {train.lr: 1e-3}, lower: all}", GRID, "train.lr", "YAML reads it as text"),
    ("- {name: a, compare: gap, higher: {train.lr: 5.0}, lower: all}", RANGE, "train.lr", "outside the searched range"),
    ("- {name: a, compare: gap, higher: {train.lr: {min: 2.0}}, lower: all}", RANGE, "train.lr", "holds none of the study's values"),
    ("- {name: a, compare: gap, higher: {train.lr: {low: 2.0}}, lower: all}", RANGE, "train.lr", "a range takes min and/or max"),
    ("- {name: a, compare: gap, higher: {model.name: []}, lower: all}", GRID, "model.name", "an empty list matches nothing"),
    ("- {name: a, compare: gap, higher: mlp, lower: all}", GRID, "higher", "a group must be a mapping or 'all'"),
    ("- {name: a, compare: gap, higher: {model.name: mlp}}", GRID, "lower", "higher needs lower"),
    ("- {name: a, compare: gap, higher: all, lower: all, within: 0.1}", GRID, "within", "does not go with higher"),
    ("- {name: a, compare: gap, higher: all, lower: all, more_in: all}", GRID, "more_in", "more_in and than_in go together"),
    ("- {name: a, compare: gap, higher: all, lower: [all, all], more_in: all, than_in: all}", GRID, "lower", "one lower group"),
    ("- {name: a, compare: gap, order: [all]}", GRID, "order", "needs a list of 2+ groups"),
    ("- {name: a, compare: gap, same: [all, all]}", GRID, "within", "a same claim needs a margin"),
    ("- {name: a, compare: gap, same: [all, all], within: 0}", GRID, "within", "must be > 0"),
    ("- {name: a, compare: gap, group: all}", GRID, "group", "exactly one of above or below"),
    ("- {name: a, compare: gap, group: all, above: 0, below: 1}", GRID, "group", "exactly one of above or below"),
    ("- {name: a, compare: gap, group: all, above: high}", GRID, "above", "must be a number"),
    ("- {name: a, compare: gap}", GRID, "compare", "exactly one of higher/lower, order, same or group"),
    ("- {name: a, compare: epochs_to_acc, group: all, above: 0}", GRID, "acc", "epochs_to_acc needs acc"),
    ("- {name: a, compare: epochs_to_acc, acc: 90, group: all, above: 0}", GRID, "acc", "must be in (0, 1]"),
    ("- {name: a, compare: gap, acc: 0.9, group: all, above: 0}", GRID, "acc", "gap takes no acc"),
    ("- {name: a, compare: grad_ratio, epoch: 3, group: all, above: 0}", GRID, "epoch", "use first or last"),
    ("- {name: a, compare: val_below_train_running, epoch: 0, group: all, above: 0}", GRID, "epoch", "epoch number >= 1"),
    ("- {name: a, compare: grad_ratio, group: all, above: 0}", RANGE, "compare", "train.track_grads is false"),
    ("- {name: a, trend: gap, across: train.lr, direction: rising}", RANGE, "across", "not searched over listed values"),
    ("- {name: a, trend: gap, across: model.depth, direction: rising}", GRID, "across", "not a key of this study"),
    ("- {name: a, trend: gap, across: train.lr, direction: up}", GRID, "direction", "got 'up'"),
    ("- {name: a, trend: gap, across: model.name, direction: rising}", GRID, "across", "have no order"),
    ("- {name: a, trend: gap, across: train.lr, direction: rising, values: [0.1, 0.5]}", GRID, "train.lr", "0.5 is not a value"),
    ("- {name: a, label: stalled, group: all}", GRID, "label", "unknown label(s) ['stalled']"),
    ("- {name: a, label: diverged}", GRID, "group", "needs the group it is expected for"),
    ("- {name: a, label: diverged, group: all, share: 1.0}", GRID, "share", "must be in [0, 1)"),
    ("- {name: a, selection: val_winner}", GRID, "selection", "got 'val_winner'"),
    ("- {name: a, selection: test_winner, within: -0.1}", GRID, "within", "must be >= 0"),
    ("- {name: a, selection: test_winner, colour: red}", GRID, "colour", "not a key of a selection claim"),
    ("- {name: a, group: all}", GRID, "kind", "give exactly one of"),
    ("- {name: a, label: good, selection: test_winner, group: all}", GRID, "kind", "give exactly one of"),
    ("- {compare: gap, group: all, above: 0}", GRID, "name", "every claim needs a name"),
    ("- just a sentence", GRID, "claim", "a claim must be a mapping"),
    ("- {name: a, label: good, group: all}\n- {name: a, label: good, group: all}", GRID, "name", "used by an earlier claim"),
]


@pytest.mark.parametrize("text, study, key, fragment", BAD, ids=[b[3][:40] for b in BAD])
def test_each_bad_claim_is_one_line_naming_file_claim_key_and_fix(text, study, key, fragment):
    with pytest.raises(UserError) as err:
        parse(text, study)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{WHERE}: claims[")
    assert f": {key}: " in message and fragment in message
    assert "; " in message.split(f": {key}: ", 1)[1]  # the problem, then the fix


def test_claims_that_are_not_a_list_are_refused():
    with pytest.raises(UserError, match="claims must be a list of mappings"):
        C.parse_claims({"name": "a"}, GRID, WHERE)


def test_the_claim_is_named_in_errors_after_the_first():
    with pytest.raises(UserError, match=r"claims\[1\] \('second'\): model.name"):
        parse("""
        - {name: first, label: good, group: all}
        - {name: second, label: good, group: {model.name: vit}}
        """)


# ------------------------------------------------------------------- agreement with others

def test_labels_are_the_gap_labels_and_the_ended_statuses():
    ended = set(results.STATUSES) - {"running", "pending"}
    assert set(C.LABELS) == set(effects.GAP_LABELS) | ended


def test_variant_labels_match_the_reports_labels():
    variants = [{"name": "cnn", "kernel_size": 3, "channels": 32}, {"residual": True,
                                                                     "norm": "batch"},
                {"name": "resnet18", "mode": "finetune", "weights": "run:pretrain/full"}]
    study = {"model": {}, "space": {"model": {"grid": variants}}}
    keys = sorted({k for v in variants for k in v})
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"],
                           **{f"config/model.{k}": [v.get(k) for v in variants] for k in keys}})
    labelled = params.with_variants(trials, study)["config/model"].tolist()  # the report's
    assert list(claim_groups.study_domains(study)["model"].values) == labelled
    assert labelled == ["cnn kernel_size=3, channels=32", "residual=True, norm=batch",
                        "resnet18 mode=finetune, weights=run:pretrain/full"]


def test_study_domains_cover_fixed_keys_space_and_section_variants():
    d = claim_groups.study_domains(GRID)
    assert d["model.name"].values == ("mlp", "cnn") and d["model.kernel_size"].values == (1, 3)
    assert d["train.epochs"].values == (10,) and not d["train.epochs"].varied
    assert d["model"].values == ("mlp width=64", "cnn kernel_size=1, channels=8",
                                 "cnn kernel_size=3, channels=8")
    r = claim_groups.study_domains(RANGE)["train.lr"]
    assert (r.values, r.low, r.high) == ((), 1e-5, 1.0) and r.varied


def test_every_metric_has_a_described_parameter():
    for name, (param, default) in C.METRICS.items():
        assert param in (None, "acc", "epoch"), name
        assert Metric(name, default).describe().startswith(name)


# ------------------------------------------------------------ the shipped study claims

ISSUE_STUDIES = {"architectures", "architectures_1d", "lr_batch", "lr_extremes", "epochs",
                 "normalization", "width_depth", "deep", "batch_size", "transfer"}


@pytest.mark.parametrize("name", sorted(p.stem for p in STUDY_DIR.glob("*.yaml")))
def test_each_shipped_study_states_claims_that_validate_full_and_quick(name):
    raw = yaml.safe_load((STUDY_DIR / f"{name}.yaml").read_text())
    for quick in (False, True):
        study = studies.load_study(name, quick=quick)
        assert len(study.claims) == len(raw["claims"]) >= 1
        assert [c.name for c in study.claims] == [c["name"] for c in raw["claims"]]
        assert study.resolved()["claims"] == raw["claims"]  # study.yaml keeps them
    assert raw["search"]["repeats"] >= 1


def test_every_study_of_the_issue_is_shipped_with_repeats_its_claims_need():
    shipped = {p.stem: studies.load_study(p.stem) for p in STUDY_DIR.glob("*.yaml")}
    assert ISSUE_STUDIES <= set(shipped)
    assert shipped["architectures"].search["repeats"] == 6  # 6 of 6 underfit shows > 0.5
    assert "train.seed" not in shipped["transfer"].space  # its seeds are repeats now


def test_a_set_that_narrows_the_space_keeps_the_files_claims_and_runs():
    # lr_batch claims "above lr 0.3 training diverges or stalls"; a narrower --set range is
    # a run in which that claim is inconclusive, not a study to refuse
    narrowed = {"space.train.lr": {"loguniform": [0.001, 0.01]}}
    study = studies.load_study("lr_batch", quick=True, overrides=narrowed)
    assert [c.name for c in study.claims] == \
        [c.name for c in studies.load_study("lr_batch", quick=True).claims]
    assert study.distributions["train.lr"].high == 0.01  # the run searches what --set says


def test_a_file_whole_only_with_its_set_values_still_loads(tmp_path):
    raw = yaml.safe_load((STUDY_DIR / "lr_batch.yaml").read_text())
    raw["search"].update(fuse="on", repeats=2)  # refused alone; --fuse off mends it
    path = tmp_path / "lr_batch.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="use auto, off or a group size"):
        studies.load_study(str(path))
    study = studies.load_study(str(path), overrides={"search.fuse": "off"})
    assert study.search["repeats"] == 2 and len(study.claims) == len(raw["claims"])
