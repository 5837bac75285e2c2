import numpy as np
import pandas as pd
import pytest
import torch

from tune_hw import data
from tune_hw.errors import UserError


def test_countries_is_deterministic_for_a_seed_and_changes_with_it():
    a, b = data.load("countries", n_train=500, n_val=100, n_test=100, seed=3), \
        data.load("countries", n_train=500, n_val=100, n_test=100, seed=3)
    c = data.load("countries", n_train=500, n_val=100, n_test=100, seed=4)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_countries_has_ten_irregular_regions_in_every_split():
    splits = data.load("countries", n_train=20_000, n_val=5_000, n_test=5_000)
    assert splits.in_shape == (2,) and splits.num_classes == 10
    assert splits.sizes() == {"train": 20_000, "val": 5_000, "test": 5_000}
    for split in (splits.train, splits.val, splits.test):
        share = torch.bincount(split.y, minlength=10).float() / len(split)
        assert share.min() > 0.02  # every country is present, none dominates
        assert share.max() < 0.4
    # irregular borders: a linear classifier cannot separate the map
    from sklearn.linear_model import LogisticRegression
    clf = LogisticRegression(max_iter=500).fit(splits.train.x[:5000], splits.train.y[:5000])
    assert clf.score(splits.val.x, splits.val.y) < 0.9


def test_countries_splits_are_disjoint():
    splits = data.load("countries", n_train=2000, n_val=500, n_test=500)
    rows = [set(map(tuple, s.x.numpy().round(7).tolist())) for s in
            (splits.train, splits.val, splits.test)]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_digits_splits_are_disjoint_deterministic_and_cover_all_images():
    a, b = data.load("digits", seed=1), data.load("digits", seed=1)
    assert torch.equal(a.val.x, b.val.x)
    assert sum(a.sizes().values()) == 1797 and a.in_shape == (1, 8, 8)
    flat = [s.x.flatten(1).numpy() for s in (a.train, a.val, a.test)]
    keys = [{r.tobytes() for r in f} for f in flat]
    # sklearn's digits hold a few exact duplicate images; the split is by index, so at most
    # those can appear on both sides
    assert len(keys[0] & keys[2]) <= 5 and len(keys[1] & keys[2]) <= 5
    assert float(a.train.x.max()) == 1.0 and float(a.train.x.min()) == 0.0


def test_digits_classes_relabel_and_cap_training_rows_and_resize():
    splits = data.load("digits", classes=[5, 6, 7, 8, 9], n_train=40, size=16)
    assert splits.num_classes == 5 and splits.in_shape == (1, 16, 16)
    assert len(splits.train) == 40
    assert set(torch.cat([splits.val.y, splits.test.y]).tolist()) == {0, 1, 2, 3, 4}


def test_csv_dataset(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=100), "b": rng.normal(size=100)})
    frame["kind"] = np.where(frame.a > 0, "pos", "neg")
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    splits = data.load(f"csv:{path}", label="kind")
    assert splits.in_shape == (2,) and splits.num_classes == 2
    assert sum(splits.sizes().values()) == 100
    with pytest.raises(UserError, match="no column 'label'"):
        data.load(f"csv:{path}")


@pytest.mark.parametrize("name, options, message", [
    ("nope", {}, "unknown dataset 'nope': use one of"),
    ("countries", {"colour": 1}, "does not take option"),
    ("mnist", {"root": "/no/such/dir", "download": False}, "data root /no/such/dir does not exist"),
    ("csv:/no/such.csv", {}, "does not exist"),
])
def test_bad_datasets_are_user_errors(name, options, message):
    with pytest.raises(UserError, match=message):
        data.load(name, **options)


def test_missing_torchvision_files_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="mnist is not in .* could not be downloaded"):
        data.load("mnist", root=str(tmp_path), download=False)
