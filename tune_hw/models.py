"""Build any model of a study by name: `build(name, in_shape, num_classes, **hp)`.

Every architecture module registers its builders (`model_registry`); this module imports each
of them, so every built-in name is known wherever models are built or checked.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from tune_hw import nets, trees  # noqa: F401 - importing them registers their models
from tune_hw.errors import UserError
from tune_hw.model_registry import MODELS, Builder


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(MODELS)


def model_builder(name: str) -> Builder:
    """The builder of model `name`; an unknown name is a `UserError` listing the valid ones."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}: use one of {names()}")
    return MODELS[name]


def hyperparameters(name: str) -> dict[str, Any]:
    """The hyperparameters model `name` takes, with their defaults."""
    params = inspect.signature(model_builder(name)).parameters
    return {k: p.default for k, p in params.items() if k not in ("in_shape", "num_classes")}


def build(name: str, in_shape: tuple[int, ...], num_classes: int, **hp: Any
          ) -> nn.Module | trees.TreeBaseline:
    """Build model `name`; unknown names or hyperparameters are `UserError`s listing valid ones."""
    unknown = set(hp) - set(hyperparameters(name))
    if unknown:
        raise UserError(f"model {name!r} has no hyperparameter(s) {sorted(unknown)}: it takes "
                        f"{sorted(hyperparameters(name))}")
    return model_builder(name)(tuple(in_shape), num_classes, **hp)
