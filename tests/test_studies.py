"""Study files (tune_hw.studies): every shipped study validates, and every broken rule is one
error naming the file, the key and the fix."""

import textwrap

import pytest

from tune_hw import studies, tuner
from tune_hw.errors import StudyError
from tune_hw.layout import STUDY_DIR

GOOD = """
description: test study
dataset: {name: countries, n_train: 500}
model: {name: mlp, width: 16, depth: 2}
train: {epochs: 3, lr: 0.01, batch_size: 32}
space:
  train.lr: {loguniform: [1.0e-4, 1.0]}
  train.batch_size: {choice: [8, 32]}
search: {algorithm: optuna, num_samples: 4}
quick: {num_samples: 2, train.epochs: 1}
"""


def write(tmp_path, text, name="study.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("study", sorted(p.stem for p in STUDY_DIR.glob("*.yaml")))
def test_every_shipped_study_and_its_quick_profile_validate(study):
    full, quick = studies.load_study(study), studies.load_study(study, quick=True)
    assert full.description and quick.search["num_samples"] <= full.search["num_samples"]
    assert tuner.param_space(quick)


def test_quick_profile_and_overrides_apply_in_order(tmp_path):
    path = write(tmp_path, GOOD)
    study = studies.load_study(str(path), quick=True, overrides={"train.epochs": 2})
    assert study.search["num_samples"] == 2 and study.train["epochs"] == 2
    assert study.train["momentum"] == 0.0  # defaults filled
    fixed = studies.load_study(str(path), overrides={"train.lr": 0.5})
    assert "train.lr" not in fixed.space and fixed.train["lr"] == 0.5


def test_param_space_is_flat_and_dotted(tmp_path):
    space = tuner.param_space(studies.load_study(str(write(tmp_path, GOOD))))
    assert space["model.width"] == 16 and space["dataset.name"] == "countries"
    assert space["train.lr"].lower == 1e-4 and space["train.lr"].upper == 1.0


BAD = [  # (replace this, with that, message fragment)
    ("description: test study", "description: [unclosed", "invalid YAML at line"),
    ("description: test study", "colour: red", "unknown key(s) ['colour']"),
    ("{name: mlp, width: 16, depth: 2}", "{name: vit}", "unknown model 'vit'"),
    ("{name: mlp, width: 16, depth: 2}", "{name: mlp, colour: 2}", "no hyperparameter(s) ['colour']"),
    ("{name: countries, n_train: 500}", "{name: imagenet}", "unknown dataset 'imagenet'"),
    ("{name: countries, n_train: 500}", "{name: countries, size: 3}", "no option(s) ['size']"),
    ("lr: 0.01, batch_size: 32}", "lr: 0.01, batch_size: 32, optimizer: lion}", "train.optimizer is 'lion'"),
    ("[1.0e-4, 1.0]", "[1.0, 1.0e-4]", "low must be < high"),
    ("{loguniform: [1.0e-4, 1.0]}", "{loguniform: [0, 1.0]}", "a log range must be > 0"),
    ("[1.0e-4, 1.0]", "[1e-4, 1.0]", "'1e-4' is a string"),
    ("lr: 0.01, batch_size", "lr: 1e-2, batch_size", "train.lr must be float, got '1e-2' (YAML reads"),
    ("{algorithm: optuna, num_samples: 4}", "{algorithm: optuna, num_samples: 0}", "num_samples must be >= 1"),
    ("{epochs: 3,", "{epochs: -1,", "train.epochs must be >= 1"),
    ("{algorithm: optuna, num_samples: 4}", "{algorithm: hyperband}", "search.algorithm is 'hyperband'"),
    ("{algorithm: optuna, num_samples: 4}", "{metric: test_acc}", "search.metric is 'test_acc'"),
    ("{choice: [8, 32]}", "{grid: [8, 32]}", "grid is not supported by optuna"),
    ("{choice: [8, 32]}", "{normal: [8, 32]}", "must be one distribution of"),
    ("space:\n  train.lr: {loguniform: [1.0e-4, 1.0]}\n  train.batch_size: {choice: [8, 32]}",
     "space: {}", "space is empty"),
    ("train.batch_size:", "optim.batch_size:", "must start with one of"),
    ("description: test study", "description: !!python/object/apply:os.system [echo hi]", "invalid YAML"),
    ("{algorithm: optuna, num_samples: 4}", "{algorithm: optuna, repeats: 0}",
     "search.repeats must be >= 1"),
    ("{algorithm: optuna, num_samples: 4}", "{algorithm: optuna, repeats: 2.0}",
     "search.repeats must be int, got 2.0"),
    ("quick:", "claims: {name: x}\nquick:", "claims must be a list of mappings"),
    ("quick:", "claims:\n  - {name: x, compare: gapp, group: all, above: 0}\nquick:",
     "claims[0] ('x'): compare: unknown metric 'gapp'"),
    ("quick:", "claims:\n  - {name: x, label: diverged, group: {train.batch_size: 64}}\nquick:",
     "claims[0] ('x'): train.batch_size: 64 is not a value of this study"),
]


@pytest.mark.parametrize("old, new, message", BAD)
def test_bad_study_files_name_file_key_and_fix(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(StudyError) as info:
        studies.load_study(str(path))
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_study_name_lists_the_shipped_ones():
    with pytest.raises(studies.UserError, match=r"unknown study 'nope': use one of \[.*'lr_batch'"):
        studies.load_study("nope")


def test_grid_defaults_to_one_pass_and_section_variants(tmp_path):
    text = GOOD.replace("search: {algorithm: optuna, num_samples: 4}", "search: {algorithm: grid}")
    text = text.replace("{loguniform: [1.0e-4, 1.0]}", "{grid: [0.1, 0.01]}")
    text = text.replace("{choice: [8, 32]}", "{grid: [8, 32]}")
    study = studies.load_study(str(write(tmp_path, text)))
    assert study.search["num_samples"] == 1
    assert len(studies.section_variants(study, "train")) == 4


def test_a_searched_section_and_keys_inside_it_are_refused(tmp_path):
    text = GOOD.replace("  train.batch_size: {choice: [8, 32]}",
                        "  train.batch_size: {choice: [8, 32]}\n"
                        "  model: {choice: [{name: mlp, width: 8}, {name: mlp, width: 16}]}\n"
                        "  model.depth: {choice: [1, 2]}")
    text = text.replace("{algorithm: optuna, num_samples: 4}", "{algorithm: random, num_samples: 4}")
    with pytest.raises(StudyError, match="searches the whole section and space also searches"):
        studies.load_study(str(write(tmp_path, text)))


@pytest.mark.parametrize("dataset, message", [
    ("{name: 'npz:/data/x.npz', label: y}",
     "dataset 'npz:/data/x.npz' has no option(s) ['label']: it takes ['layout', 'seed', "
     "'test_fraction', 'val_fraction']"),
    ("{name: 'imagefolder:/pics', colour: true}", "has no option(s) ['colour']"),
    ("{name: mnist1d, val_fraction: lots}", "dataset.val_fraction must be float, got 'lots'"),
    ("{name: mnist1d, shuffle: 1}", "dataset.shuffle must be bool, got 1"),
    ("{name: 'npz:'}", "dataset 'npz:' names no path: write npz:PATH"),
    ("{name: 'hdf5:/x.h5'}", "unknown dataset 'hdf5:/x.h5': use one of ['cifar10', 'countries', "
     "'csv:PATH', 'digits', 'fashion_mnist', 'imagefolder:DIR', 'mnist', 'mnist1d', 'npz:PATH', "
     "'parquet:PATH', 'svhn']"),
])
def test_dataset_options_are_checked_for_every_loader(tmp_path, dataset, message):
    path = write(tmp_path, GOOD.replace("{name: countries, n_train: 500}", dataset))
    with pytest.raises(StudyError) as caught:
        studies.load_study(str(path))
    assert str(path) in str(caught.value) and message in str(caught.value)


# Searched values obey the rules of fixed values: every choice/grid value and both bounds of a
# range pass the same check as a fixed key, before anything runs.
SEARCHED_BAD = [  # (space entries added to GOOD's, message fragments)
    ("train.lrr: {loguniform: [1.0e-4, 1.0e-1]}", ["space.train.lrr", "unknown key(s) ['lrr']"]),
    ("train.optimizer: {choice: [sgd, adamx]}",
     ["space.train.optimizer = 'adamx'", "train.optimizer is 'adamx': use one of"]),
    ("train.lr: {uniform: [-1, 0.1]}", ["space.train.lr = -1.0", "train.lr must be > 0"]),
    ("train.batch_size: {choice: [0, 16]}", ["space.train.batch_size = 0",
                                            "train.batch_size must be >= 1, got 0"]),
    ("train.epochs: {choice: [0, 2]}", ["train.epochs must be >= 1, got 0"]),
    ("train.batch_size: {uniform: [1, 64]}", ["train.batch_size must be int, got 1.0",
                                             "a searched int key takes int:"]),
    ("train.momentum: {grid: [0.9, -0.5]}", ["train.momentum must be >= 0, got -0.5"]),
    ("train: {choice: [{optimizer: sgd}, {optimizer: lion}]}",
     ["space.train = {'optimizer': 'lion'}", "train.optimizer is 'lion'"]),
    ("model.width: {choice: [16, 32.5]}", ["model.width must be int, got 32.5"]),
    ("dataset.n_train: {uniform: [100.0, 400.0]}", ["dataset.n_train must be int, got 100.0"]),
]


@pytest.mark.parametrize("entry, messages", SEARCHED_BAD)
def test_searched_values_obey_the_rules_of_fixed_values(tmp_path, entry, messages):
    key = entry.split(":")[0]  # an entry for a key GOOD searches replaces it (no duplicate keys)
    base = "".join(line for line in GOOD.splitlines(keepends=True)
                   if not line.startswith(f"  {key}:"))
    text = base.replace("space:\n", f"space:\n  {entry}\n")
    if entry.startswith("train:"):  # a whole searched section: no dotted train keys beside it
        text = text.replace("  train.lr: {loguniform: [1.0e-4, 1.0]}\n", "").replace(
            "  train.batch_size: {choice: [8, 32]}\n", "")
    if "{choice: [{" in entry or "{grid:" in entry:
        text = text.replace("{algorithm: optuna, num_samples: 4}",
                            "{algorithm: random, num_samples: 4}")
    path = write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        studies.load_study(str(path))
    assert str(path) in str(info.value)
    for message in messages:
        assert message in str(info.value)


@pytest.mark.parametrize("old, new, message", [
    ("batch_size: 32}", "batch_size: 32.0}", "train.batch_size must be int, got 32.0"),
    ("lr: 0.01,", "lr: .nan,", "train.lr must be a finite number, got nan"),
    ("width: 16,", "width: 16.0,", "model.width must be int, got 16.0"),
])
def test_fixed_values_must_have_their_type_and_be_finite(tmp_path, old, new, message):
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(StudyError, match=None) as info:
        studies.load_study(str(path))
    assert message in str(info.value)


def test_cpus_per_trial_nan_is_refused():
    with pytest.raises(StudyError, match="resources.cpu must be a finite number, got nan"):
        studies.load_study("lr_batch", overrides={"resources.cpu": float("nan")})


def test_ranges_are_checked_at_both_bounds(tmp_path):
    text = GOOD.replace("{loguniform: [1.0e-4, 1.0]}", "{int: [1, 64]}").replace(
        "  train.lr:", "  train.epochs:")
    study = studies.load_study(str(write(tmp_path, text)))
    epochs = sorted({v["epochs"] for v in studies.section_variants(study, "train")})
    assert epochs == [1, 64] and all(isinstance(e, int) for e in epochs)


def test_claims_are_checked_against_the_quick_profile_too(tmp_path):
    """A claim on a value the quick profile no longer searches is refused under --quick."""
    text = GOOD.replace("quick: {num_samples: 2, train.epochs: 1}",
                        "quick: {num_samples: 2, space.train.batch_size: {choice: [8]}}\n"
                        "claims:\n  - {name: big batches, label: good, group: "
                        "{train.batch_size: 32}}")
    path = write(tmp_path, text)
    assert studies.load_study(str(path)).claims[0].name == "big batches"
    with pytest.raises(StudyError, match=r"claims\[0\].*32 is not a value of this study"):
        studies.load_study(str(path), quick=True)


def test_repeats_default_to_one_and_quick_or_set_override_them(tmp_path):
    path = write(tmp_path, GOOD.replace("quick: {", "quick: {search.repeats: 1, ")
                 .replace("num_samples: 4}", "num_samples: 4, repeats: 3}"))
    assert studies.load_study(str(write(tmp_path, GOOD, "plain.yaml"))).search["repeats"] == 1
    assert studies.load_study(str(path)).search["repeats"] == 3
    assert studies.load_study(str(path), quick=True).search["repeats"] == 1
    assert studies.load_study(str(path), overrides={"search.repeats": 5}).search["repeats"] == 5
