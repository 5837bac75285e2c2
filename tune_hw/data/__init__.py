"""Dataset registry: every loader returns `Splits(train, val, test)` of in-memory tensors.

    data.load("mnist1d", shuffle=True)              # embedded: countries, digits, mnist1d
    data.load("cifar10", root="~/data")             # torchvision: mnist, fashion_mnist, ...
    data.load("npz:signals.npz", layout="signal")   # a user's file: csv: parquet: imagefolder:

`DATASETS` is the one registry: plain names, and `PREFIX:PATH` forms whose loader takes the
path first. `dataset_loader` is the one factory; its error lists every valid name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from tune_hw.data import builtin, files, images
from tune_hw.data.builtin import default_data_root
from tune_hw.data.splits import Split, Splits
from tune_hw.errors import UserError

__all__ = ["DATASETS", "Split", "Splits", "dataset_loader", "dataset_options",
           "default_data_root", "load"]

DATASETS: dict[str, Callable[..., Splits]] = {
    "countries": builtin.load_countries,
    "digits": builtin.load_digits,
    "mnist1d": builtin.load_mnist1d,
    **{name: functools.partial(builtin.load_torchvision, name) for name in builtin.TORCHVISION},
    "csv:PATH": files.load_csv,
    "parquet:PATH": files.load_parquet,
    "npz:PATH": files.load_npz,
    "imagefolder:DIR": images.load_imagefolder,
}


def dataset_loader(name: str) -> Callable[..., Splits]:
    """The loader behind a dataset name; `PREFIX:PATH` binds the path of a user's file."""
    prefix, sep, path = name.partition(":")
    if sep:
        forms = {key.partition(":")[0]: key for key in DATASETS if ":" in key}
        if prefix in forms:
            if not path:
                raise UserError(f"dataset {name!r} names no path: write {forms[prefix]}")
            return functools.partial(DATASETS[forms[prefix]], path)
    elif name in DATASETS:
        return DATASETS[name]
    raise UserError(f"unknown dataset {name!r}: use one of {sorted(DATASETS)}")


def dataset_options(name: str) -> dict[str, Any]:
    """The options dataset `name` takes, with their defaults."""
    params = inspect.signature(dataset_loader(name)).parameters
    return {key: p.default for key, p in params.items()}


def load(name: str, **options: Any) -> Splits:
    """Load dataset `name` with its options; unknown names and options are `UserError`s."""
    unknown = set(options) - set(dataset_options(name))
    if unknown:
        raise UserError(f"dataset {name!r} does not take option(s) {sorted(unknown)}: it takes "
                        f"{sorted(dataset_options(name))}")
    return dataset_loader(name)(**options)
