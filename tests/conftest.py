"""Shared fixtures: tiny data, a CLI runner, and a Ray-free reporter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m <args>` as a user would; output captured as text."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tiny_countries() -> dict:
    """A flat trial config small enough to train in well under a second."""
    return {"dataset.name": "countries", "dataset.n_train": 512, "dataset.n_val": 256,
            "dataset.n_test": 256, "model.name": "mlp", "model.width": 32, "model.depth": 2,
            "train.epochs": 3, "train.lr": 0.05, "train.momentum": 0.9, "train.batch_size": 32,
            "train.seed": 0}
