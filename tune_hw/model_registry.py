"""The model registry: each architecture module registers its builders by name, as timm's
`@register_model` does, and `models.build` builds any of them by that name.

A builder takes `(in_shape, num_classes, **hyperparameters)`; its keyword defaults are the
hyperparameters a study may set (`models.hyperparameters`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Builder = Callable[..., Any]
MODELS: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Register the decorated builder as model `name` (a study's `model.name`)."""
    def register(builder: Builder) -> Builder:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice: by {MODELS[name].__module__}"
                             f" and by {builder.__module__}")
        MODELS[name] = builder
        return builder
    return register
