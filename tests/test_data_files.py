"""Data as users have it (npz, parquet, image folders) and the built-in MNIST-1D."""

from __future__ import annotations

import pickle
import socket

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tune_hw import data
from tune_hw.data import builtin, images
from tune_hw.errors import UserError


def row_keys(split: data.Split) -> set[bytes]:
    return {row.tobytes() for row in split.x.flatten(1).numpy()}


def assert_disjoint(splits: data.Splits) -> None:
    keys = [row_keys(s) for s in (splits.train, splits.val, splits.test)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


# ------------------------------------------------------------------------------------ npz

def test_npz_carves_disjoint_deterministic_splits_and_maps_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)).astype(np.float32)
    y = np.array(["cat", "dog", "emu", "ant"])[rng.integers(0, 4, 200)]
    name = write_npz(tmp_path / "a.npz", x=x, y=y)
    a, b = data.load(name, seed=1), data.load(name, seed=1)
    assert a.sizes() == {"train": 120, "val": 40, "test": 40}
    assert a.in_shape == (12,) and a.num_classes == 4
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.val.x, data.load(name, seed=2).val.x)
    assert_disjoint(a)
    # labels map to 0..k-1 in sorted order: ant 0, cat 1, dog 2, emu 3
    by_row = {row.tobytes(): label for row, label in zip(x, y, strict=True)}
    classes = ["ant", "cat", "dog", "emu"]
    for split in (a.train, a.val, a.test):
        for row, code in zip(split.x.numpy(), split.y.tolist(), strict=True):
            assert classes[code] == by_row[row.tobytes()]


def test_npz_keeps_official_splits_and_maps_integer_labels(tmp_path):
    rng = np.random.default_rng(1)
    x, x_val, x_test = (rng.normal(size=(n, 3, 20)) for n in (100, 30, 40))
    labels = np.array([3, 7, 11])
    y, y_val, y_test = (labels[rng.integers(0, 3, n)] for n in (100, 30, 40))
    name = write_npz(tmp_path / "b.npz", x=x, y=y, x_val=x_val, y_val=y_val, x_test=x_test,
                     y_test=y_test)
    splits = data.load(name, layout="signal")
    assert splits.in_shape == (3, 20) and splits.num_classes == 3
    assert splits.sizes() == {"train": 100, "val": 30, "test": 40}
    assert torch.allclose(splits.test.x, torch.tensor(x_test, dtype=torch.float32))
    assert torch.equal(splits.val.y, torch.tensor(np.searchsorted(labels, y_val)))
    # only the test split given: validation is carved from train, test is kept
    only_test = data.load(write_npz(tmp_path / "c.npz", x=x, y=y, x_test=x_test, y_test=y_test),
                          layout="signal", val_fraction=0.25)
    assert only_test.sizes() == {"train": 75, "val": 25, "test": 40}
    assert torch.allclose(only_test.test.x, splits.test.x)


@pytest.mark.parametrize("shape, layout, in_shape", [
    ((40,), None, (40,)),             # a vector or a 1-D signal
    ((2, 40), "signal", (2, 40)),     # a signal with channels
    ((8, 8), None, (1, 8, 8)),        # the default for a 3-D x: greyscale images
    ((8, 8), "image", (1, 8, 8)),
    ((3, 8, 8), None, (3, 8, 8)),     # an image with channels
    ((3, 8, 8), "image", (3, 8, 8)),
])
def test_npz_sample_shapes(tmp_path, shape, layout, in_shape):
    x = np.random.default_rng(0).random((50, *shape)).astype(np.float32)
    name = write_npz(tmp_path / "s.npz", x=x, y=np.arange(50) % 2)
    options = {"layout": layout} if layout else {}
    assert data.load(name, **options).in_shape == in_shape


def test_npz_uint8_images_are_scaled_to_unit_range(tmp_path):
    x = np.full((20, 4, 4), 255, dtype=np.uint8)
    x[::2] = 0
    splits = data.load(write_npz(tmp_path / "u.npz", x=x, y=np.arange(20) % 2))
    values = torch.cat([splits.train.x, splits.val.x, splits.test.x]).unique().tolist()
    assert values == [0.0, 1.0]


@pytest.mark.parametrize("arrays, options, message", [
    ({"x": np.zeros((10, 3))}, {}, "has no array 'y'"),
    ({"x": np.zeros((10, 3)), "y": np.zeros(10), "x_val": np.zeros((4, 3))}, {},
     "has no array 'y_val'"),
    ({"x": np.zeros((10, 3)), "y": np.arange(9) % 2}, {}, "x has 10 rows but y has 9"),
    ({"x": np.array([[0.0, np.nan]] * 10), "y": np.arange(10) % 2}, {},
     "non-finite values (NaN or inf) in 10 rows, the first is row 0"),
    ({"x": np.zeros((10, 3)), "y": np.full(10, 4)}, {}, "a single class (4)"),
    ({"x": np.zeros((10, 3)), "y": np.linspace(0, 1, 10)}, {}, "non-integer numbers"),
    ({"x": np.zeros((10, 3)), "y": np.zeros((10, 2))}, {}, "give one label per row"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2}, {"layout": "image"},
     "layout image needs x of shape N x H x W or N x C x H x W, got (10, 3)"),
    ({"x": np.zeros((10, 3, 4, 4)), "y": np.arange(10) % 2}, {"layout": "signal"},
     "layout signal needs x of shape N x L or N x C x L"),
    ({"x": np.zeros((10, 2, 3)), "y": np.arange(10) % 2}, {"layout": "spectrum"},
     "dataset.layout is 'spectrum'"),
    ({"x": np.zeros((10, 8, 8, 3)), "y": np.arange(10) % 2}, {}, "looks channels-last"),
    ({"x": np.zeros((10, 3)), "y": np.arange(10) % 2, "x_test": np.zeros((5, 4)),
      "y_test": np.arange(5) % 2}, {}, "x_test has samples of shape (4,) but x has (3,)"),
])
def test_bad_npz_arrays_are_one_clear_error(tmp_path, arrays, options, message):
    name = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match="npz file .*bad.npz") as caught:
        data.load(name, **options)
    assert message in str(caught.value)


def test_npz_that_is_not_an_archive_or_holds_pickles_is_refused(tmp_path, capsys):
    text = tmp_path / "text.npz"
    text.write_text("x,y\n1,2\n")
    with pytest.raises(UserError, match="is not an .npz archive"):
        data.load(f"npz:{text}")
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros((3, 2)))
    with pytest.raises(UserError, match="is a single .npy array"):
        data.load(f"npz:{single}")
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.zeros((4, 2)), y=np.array([_Exploit()] * 4, dtype=object))
    with pytest.raises(UserError, match="holds pickled Python objects, which are never loaded"):
        data.load(f"npz:{objects}")
    assert "pwned" not in capsys.readouterr().out
    with pytest.raises(UserError, match="npz file .*missing.npz' does not exist"):
        data.load(f"npz:{tmp_path / 'missing.npz'}")


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


# -------------------------------------------------------------------------------- parquet

def test_parquet_table_like_csv(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=150), "b": rng.normal(size=150),
                          "note": ["text"] * 150})
    frame["label"] = np.where(frame.a > 0, "high", "low")
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_csv(tmp_path / "t.csv", index=False)
    pq, csv = data.load(f"parquet:{tmp_path / 't.parquet'}"), data.load(f"csv:{tmp_path / 't.csv'}")
    assert pq.in_shape == (2,) and pq.num_classes == 2  # the text column is not a feature
    assert pq.sizes() == {"train": 90, "val": 30, "test": 30}
    assert_disjoint(pq)
    # the same table reads the same from either format: one mechanism after the reader
    for part in ("train", "val", "test"):
        assert torch.allclose(getattr(pq, part).x, getattr(csv, part).x)
        assert torch.equal(getattr(pq, part).y, getattr(csv, part).y)
    assert ((pq.train.x[:, 0] > 0) == (pq.train.y == 0)).all()  # "high" sorts before "low"


def test_tables_that_are_not_their_format_or_hold_nan_are_refused(tmp_path):
    (tmp_path / "t.parquet").write_text("a,label\n1,2\n")
    with pytest.raises(UserError, match="cannot be read as parquet"):
        data.load(f"parquet:{tmp_path / 't.parquet'}")
    (tmp_path / "nan.csv").write_text("a,label\n1,x\n,y\n3,x\n")
    with pytest.raises(UserError, match="non-finite values .* the first is row 1"):
        data.load(f"csv:{tmp_path / 'nan.csv'}")
    (tmp_path / "unlabelled.csv").write_text("a,label\n1,x\n2,\n3,y\n")
    with pytest.raises(UserError, match="column 'label' has 1 missing labels"):
        data.load(f"csv:{tmp_path / 'unlabelled.csv'}")
    with pytest.raises(UserError, match="parquet file .*nope.parquet' does not exist"):
        data.load(f"parquet:{tmp_path / 'nope.parquet'}")


# ---------------------------------------------------------------------------- imagefolder

def write_images(folder, classes: dict[str, int], size=(6, 5), mode="L", seed=0):
    """`classes[name]` PNGs of `size` (W, H) per class, pixel values telling them apart."""
    rng = np.random.default_rng(seed)
    for index, (name, count) in enumerate(classes.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = rng.integers(0, 60, shape) + 60 * index
            Image.fromarray(pixels.astype(np.uint8), mode).save(folder / name / f"{i}.png")


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TUNE_HW_DATA", str(root))
    return root


def test_imagefolder_reads_classes_by_folder_and_carves_splits(tmp_path, data_root):
    write_images(tmp_path / "pics", {"b_cat": 10, "a_ant": 10, "c_cow": 10})
    splits = data.load(f"imagefolder:{tmp_path / 'pics'}", val_fraction=0.2, test_fraction=0.2)
    assert splits.in_shape == (1, 5, 6) and splits.num_classes == 3
    assert splits.sizes() == {"train": 18, "val": 6, "test": 6}
    assert_disjoint(splits)
    # pixels in [0, 1]; b_cat's images are the darkest, then a_ant's, then c_cow's, and the
    # classes are the sorted folder names: a_ant 0, b_cat 1, c_cow 2
    for split in (splits.train, splits.val, splits.test):
        brightness = (split.x.mean((1, 2, 3)) * 255 // 60).long()
        assert (torch.tensor([1, 0, 2])[brightness] == split.y).all()
    again = data.load(f"imagefolder:{tmp_path / 'pics'}", val_fraction=0.2, test_fraction=0.2)
    assert torch.equal(again.val.x, splits.val.x)


def test_imagefolder_split_layout_keeps_official_splits_and_resizes_rgb(tmp_path, data_root):
    root = tmp_path / "set"
    write_images(root / "train", {"x": 8, "y": 8}, mode="RGB", size=(10, 10))
    write_images(root / "test", {"x": 3, "y": 2}, mode="RGB", size=(12, 9), seed=1)
    splits = data.load(f"imagefolder:{root}", size=[4, 6], val_fraction=0.25)
    assert splits.in_shape == (3, 4, 6)
    assert splits.sizes() == {"train": 12, "val": 4, "test": 5}
    assert splits.test.y.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(UserError, match="images differ in size .* set dataset.size"):
        data.load(f"imagefolder:{root}")  # train 10x10, test 9x12: the shapes do not match


def test_imagefolder_decodes_once_and_the_cache_follows_the_contents(tmp_path, data_root,
                                                                     monkeypatch):
    write_images(tmp_path / "pics", {"a": 5, "b": 5})
    first = data.load(f"imagefolder:{tmp_path / 'pics'}")
    [cache] = (data_root / "imagefolder").glob("*.pt")
    torch.load(cache, weights_only=True)  # a plain tensor file

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "_decode_one", no_decoding)
    cached = data.load(f"imagefolder:{tmp_path / 'pics'}")
    assert torch.equal(cached.train.x, first.train.x) and torch.equal(cached.test.y, first.test.y)
    monkeypatch.undo()
    monkeypatch.setenv("TUNE_HW_DATA", str(data_root))
    write_images(tmp_path / "pics", {"c": 5}, seed=3)  # new contents: a new cache entry
    assert data.load(f"imagefolder:{tmp_path / 'pics'}").num_classes == 3
    assert len(list((data_root / "imagefolder").glob("*.pt"))) == 2


def test_imagefolder_cache_that_would_run_code_is_ignored_and_rebuilt(tmp_path, data_root,
                                                                      capsys):
    write_images(tmp_path / "pics", {"a": 5, "b": 5})
    expected = data.load(f"imagefolder:{tmp_path / 'pics'}")
    [cache] = (data_root / "imagefolder").glob("*.pt")
    with open(cache, "wb") as f:
        pickle.dump({"classes": _Exploit()}, f)
    splits = data.load(f"imagefolder:{tmp_path / 'pics'}")
    assert "pwned" not in capsys.readouterr().out
    assert torch.equal(splits.train.x, expected.train.x)
    assert isinstance(torch.load(cache, weights_only=True), dict)  # rewritten as tensors


@pytest.mark.parametrize("make, message", [
    (lambda d: d.mkdir(), "has no class folders"),
    (lambda d: (d / "cls").mkdir(parents=True), "holds no images"),
    (lambda d: (write_images(d, {"a": 2, "b": 2}), (d / "b" / "1.png").write_bytes(b"junk")),
     "cannot be decoded"),
    (lambda d: (write_images(d, {"a": 2}), write_images(d, {"b": 2}, mode="RGB")),
     "images differ in channels"),
    (lambda d: (write_images(d, {"a": 2}), write_images(d, {"b": 2}, size=(7, 7))),
     "images differ in size"),
    (lambda d: write_images(d, {"only": 4}), "a single class ('only')"),
])
def test_bad_image_folders_are_one_clear_error(tmp_path, data_root, make, message):
    make(tmp_path / "pics")
    with pytest.raises(UserError) as caught:
        data.load(f"imagefolder:{tmp_path / 'pics'}")
    assert message in str(caught.value)
    with pytest.raises(UserError, match="does not exist"):
        data.load(f"imagefolder:{tmp_path / 'absent'}")


# -------------------------------------------------------------------------------- mnist1d

def test_mnist1d_generates_offline_with_the_package_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_HW_DATA", str(tmp_path))

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    splits = data.load("mnist1d")
    assert (np.random.get_state()[1] == before).all()  # the package's reseeding is undone
    assert splits.sizes() == {"train": 3200, "val": 800, "test": 1000}
    assert splits.in_shape == (40,) and splits.num_classes == 10
    assert_disjoint(splits)
    with np.load(builtin.mnist1d_cache(), allow_pickle=False) as cached:  # never a pickle
        assert cached["x"].shape == (4000, 40) and cached["x_test"].shape == (1000, 40)
        assert torch.allclose(splits.test.x, torch.tensor(cached["x_test"]))
        # validation is carved from the package's training signals, never its test signals
        train_rows = {r.tobytes() for r in cached["x"]}
    assert row_keys(splits.val) <= train_rows and row_keys(splits.train) <= train_rows
    assert torch.bincount(splits.test.y, minlength=10).min() > 50


def test_mnist1d_shuffle_is_one_fixed_permutation_of_the_positions():
    ordered, shuffled = data.load("mnist1d"), data.load("mnist1d", shuffle=True)
    order = np.random.default_rng(builtin.MNIST1D_SHUFFLE_SEED).permutation(40)
    assert not (order == np.arange(40)).all()
    for part in ("train", "val", "test"):  # the same rows, each with the same positions moved
        assert torch.equal(getattr(shuffled, part).x, getattr(ordered, part).x[:, order])
        assert torch.equal(getattr(shuffled, part).y, getattr(ordered, part).y)
    small = data.load("mnist1d", n_train=500, seed=3)
    assert small.sizes() == {"train": 500, "val": 800, "test": 1000}
    assert not torch.equal(small.val.x, ordered.val.x)  # seed picks the validation rows
    assert torch.equal(small.test.x, ordered.test.x)  # the official test split stays
