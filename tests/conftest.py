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


S3_SECRET = "tune-hw-test-secret"  # moto takes any keys; this one is looked for in the run
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": S3_SECRET,
          "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
          "AWS_EC2_METADATA_DISABLED": "true"}  # a missing credential never waits on IMDS


def start_moto(**env: str) -> tuple[subprocess.Popen, str]:
    """moto's standalone S3 server on a free 127.0.0.1 port, started and ready; (process, URL).
    State lives in its memory and ends with it."""
    import shutil
    import socket
    import time
    import urllib.request

    server = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if server is None:
        pytest.skip("moto_server is not installed: pip install -e '.[test]'")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=0.5)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto_server exited at start") from None
            time.sleep(0.05)
    stop_moto(proc)
    raise RuntimeError("moto_server did not answer")


def stop_moto(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's) on 127.0.0.1 for the session; its URL."""
    proc, url = start_moto()
    try:
        yield url
    finally:
        stop_moto(proc)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request) -> str:
    """A fresh bucket on the session's S3 server, reached through the environment (credentials
    and AWS_ENDPOINT_URL, as a user sets them); its s3:// URI."""
    import uuid

    import pyarrow.fs as pafs

    for name, value in {**S3_ENV, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_server, allow_bucket_creation=True,
                      access_key="testing", secret_key=S3_SECRET,
                      region="us-east-1").create_dir(bucket)
    return f"s3://{bucket}"
