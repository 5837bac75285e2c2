"""Hard lower limits of hyperparameters: validation refuses values below them, and the report
never suggests searching beyond them (a batch size cannot go under 1)."""

from __future__ import annotations

LOWER_LIMITS: dict[str, int] = {"train.epochs": 1, "train.batch_size": 1}
