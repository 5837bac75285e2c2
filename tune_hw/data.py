"""Dataset registry: every loader returns `Splits(train, val, test)` of in-memory tensors.

Embedded data needs no network: `countries` (a generated 2-D map of 10 irregular regions)
and `digits` (scikit-learn's bundled 8x8 digits). torchvision datasets load from a data root,
downloading once under a file lock; `csv:PATH` reads a user's own table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tune_hw.errors import UserError


@dataclass
class Split:
    """Inputs `x` (float32, N x *in_shape) and integer labels `y` (N)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: str | torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Splits:
    """Train / validation / test tensors of one dataset; test never feeds any choice."""

    train: Split
    val: Split
    test: Split
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def to(self, device: str | torch.device) -> Splits:
        return Splits(self.train.to(device), self.val.to(device), self.test.to(device),
                      self.num_classes)


# ---------------------------------------------------------------------------- countries

COUNTRIES = 10


def _warp(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bend the plane with a few random sine waves so nearest-centre regions get ragged borders."""
    warped = points.copy()
    for _ in range(4):
        freq, phase = rng.uniform(2.0, 7.0, size=2), rng.uniform(0, 2 * np.pi, size=2)
        amp = rng.uniform(0.04, 0.10)
        warped[:, 0] += amp * np.sin(freq[0] * points[:, 1] + phase[0])
        warped[:, 1] += amp * np.sin(freq[1] * points[:, 0] + phase[1])
    return warped


def countries_labels(points: np.ndarray, map_seed: int = 0) -> np.ndarray:
    """Label 2-D points in [-1, 1]^2 by which of the 10 countries of map `map_seed` they fall in."""
    rng = np.random.default_rng(map_seed)
    centres = rng.uniform(-0.85, 0.85, size=(COUNTRIES, 2))
    warped = _warp(points, rng)
    distances = ((warped[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def load_countries(n_train: int = 100_000, n_val: int = 10_000, n_test: int = 10_000,
                   seed: int = 0, map_seed: int = 0) -> Splits:
    """Points drawn uniformly on the map; the three splits are independent draws."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1.0, 1.0, size=(n_train + n_val + n_test, 2))
    labels = countries_labels(points, map_seed)
    x, y = torch.tensor(points, dtype=torch.float32), torch.tensor(labels, dtype=torch.long)
    cut = [n_train, n_train + n_val]
    return Splits(Split(x[:cut[0]], y[:cut[0]]), Split(x[cut[0]:cut[1]], y[cut[0]:cut[1]]),
                  Split(x[cut[1]:], y[cut[1]:]), COUNTRIES)


# ------------------------------------------------------------------------------- digits

def load_digits(size: int = 8, classes: list[int] | None = None, n_train: int | None = None,
                val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """scikit-learn's 1,797 8x8 digits as 1 x size x size images in [0, 1].

    `classes` keeps a subset and relabels it 0..k-1 (source/target tasks for transfer);
    `n_train` caps the training rows (few-label regimes) without touching val/test.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(bunch.target, dtype=torch.long)
    if classes is not None:
        keep = torch.isin(y, torch.tensor(classes))
        remap = {c: i for i, c in enumerate(classes)}
        x, y = x[keep], torch.tensor([remap[int(v)] for v in y[keep]], dtype=torch.long)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    splits = _random_splits(x, y, val_fraction, test_fraction, seed)
    if n_train is not None:
        splits.train = Split(splits.train.x[:n_train], splits.train.y[:n_train])
    splits.num_classes = len(classes) if classes is not None else 10
    return splits


def _random_splits(x: torch.Tensor, y: torch.Tensor, val_fraction: float,
                   test_fraction: float, seed: int) -> Splits:
    """A seeded permutation cut into train / val / test."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val, n_test = int(len(y) * val_fraction), int(len(y) * test_fraction)
    parts = order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]
    train, val, test = (Split(x[idx], y[idx]) for idx in parts)
    return Splits(train, val, test, int(y.max()) + 1)


# -------------------------------------------------------------------------- torchvision

TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10",
               "svhn": "SVHN"}


def default_data_root() -> Path:
    return Path(os.environ.get("TUNE_HW_DATA", Path.home() / ".cache" / "tune_hw" / "data"))


def load_torchvision(name: str, root: str | None = None, download: bool = True,
                     n_train: int | None = None, val_fraction: float = 0.1,
                     seed: int = 0) -> Splits:
    """A torchvision dataset from `root`; validation is carved from the official train set."""
    import torchvision
    from filelock import FileLock

    root_path = Path(root).expanduser() if root else default_data_root()
    if root and not root_path.is_dir():
        raise UserError(f"data root {root_path} does not exist: create it, or drop "
                        "dataset.root to use the default cache")
    root_path.mkdir(parents=True, exist_ok=True)
    cls = getattr(torchvision.datasets, TORCHVISION[name])
    with FileLock(str(root_path / f".{name}.lock")):  # one download even with many workers
        try:
            train_set, test_set = (_tv_split(cls, root_path, name, train, download)
                                   for train in (True, False))
        except RuntimeError as exc:  # torchvision says "Dataset not found" when offline
            raise UserError(f"{name} is not in {root_path} and could not be downloaded "
                            f"({exc}); put the files there or allow network access") from None
    x, y = _tv_tensors(train_set)
    splits = _random_splits(x, y, val_fraction, 0.0, seed)
    splits.test = Split(*_tv_tensors(test_set))
    if n_train is not None:
        splits.train = Split(splits.train.x[:n_train], splits.train.y[:n_train])
    splits.num_classes = 10
    return splits


def _tv_split(cls: Any, root: Path, name: str, train: bool, download: bool) -> Any:
    if name == "svhn":
        return cls(str(root), split="train" if train else "test", download=download)
    return cls(str(root), train=train, download=download)


def _tv_tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole dataset as one N x C x H x W float tensor in [0, 1] (no per-sample loader)."""
    data = torch.as_tensor(np.asarray(dataset.data))
    if data.ndim == 3:  # MNIST-like: N x H x W
        data = data.unsqueeze(1)
    elif data.shape[-1] == 3:  # CIFAR: N x H x W x C
        data = data.permute(0, 3, 1, 2)
    labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = dataset.labels
    return data.float() / 255.0, torch.as_tensor(np.asarray(labels), dtype=torch.long)


# ---------------------------------------------------------------------------------- csv

def load_csv(path: str, label: str = "label", val_fraction: float = 0.2,
             test_fraction: float = 0.2, seed: int = 0) -> Splits:
    """A table of numeric feature columns plus one label column (any values, mapped to 0..k-1)."""
    import pandas as pd

    if not Path(path).is_file():
        raise UserError(f"csv file {path} does not exist: give an existing path as csv:PATH")
    frame = pd.read_csv(path)
    if label not in frame.columns:
        raise UserError(f"csv file {path} has no column {label!r}: set dataset.label to one "
                        f"of {list(frame.columns)}")
    codes, _ = pd.factorize(frame[label], sort=True)
    features = frame.drop(columns=[label]).select_dtypes("number")
    x = torch.tensor(features.to_numpy(dtype=np.float32))
    return _random_splits(x, torch.tensor(codes, dtype=torch.long), val_fraction,
                          test_fraction, seed)


# ----------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., Splits]] = {
    "countries": load_countries,
    "digits": load_digits,
    **{name: (lambda n: lambda **o: load_torchvision(n, **o))(name) for name in TORCHVISION},
}


def dataset_loader(name: str) -> Callable[..., Splits]:
    """The loader behind a dataset name; `csv:PATH` names a user's file."""
    if name.startswith("csv:"):
        return lambda **options: load_csv(name[4:], **options)
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: use one of {sorted(DATASETS)} or csv:PATH")
    return DATASETS[name]


def load(name: str, **options: Any) -> Splits:
    """Load dataset `name` with its options; unknown names and options are `UserError`s."""
    loader = dataset_loader(name)
    try:
        return loader(**options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise UserError(f"dataset {name!r} does not take option(s) {sorted(options)}: "
                            f"{exc}") from None
        raise
