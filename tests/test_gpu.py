"""The trainable's GPU path: the device follows Ray's GPU assignment, the data stays on it.

Runs where CUDA is available; elsewhere it is skipped (the CPU side of the same choice, a trial
given a logical GPU that torch cannot see, runs in test_cluster.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO
from test_reliability import (  # noqa: F401 (ray_tmp is a fixture)
    LONG_EPOCHS,
    SLOW_TRIALS,
    last_rows,
    ray_tmp,
    reported_epochs,
    start_search,
    wait_for,
)

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the trainable's GPU path (device from Ray's GPU assignment, "
           "dataset kept on the GPU) needs one")


@pytest.fixture
def ray_env() -> Iterator[dict[str, str]]:
    """Ray's temp dir and token for this test alone (nothing shared, nothing in ~/.ray)."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths live here
    yield {"RAY_TMPDIR": temp, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    shutil.rmtree(temp, ignore_errors=True)


# Runs in its own process: Ray reads RAY_AUTH_MODE when it is first imported, so an in-process
# Ray would depend on what earlier tests imported.
PROBE = """
import json, sys
import ray
from tune_hw import ray_trial, training

@ray.remote(num_gpus=0.5)
def trial(config):
    device, context = ray_trial.ray_context()
    dataset = {k.removeprefix("dataset."): v for k, v in config.items() if k.startswith("dataset.")}
    rows = []
    training.run_trial(config, lambda metrics, state: rows.append(
        {**metrics, "model_devices": sorted({t.device.type for t in state["model"].values()})}),
        device=device, context=context)
    splits = training.load_splits(dataset, device)
    return {"device": device, "context": context, "last": rows[-1],
            "data": sorted({s.x.device.type for s in (splits.train, splits.val, splits.test)}),
            "cached": splits is training.load_splits(dataset, device)}

ray.init(num_cpus=2, num_gpus=1, include_dashboard=False)
print(json.dumps(ray.get(trial.remote(json.loads(sys.argv[1])))))
"""


def test_trial_given_a_gpu_trains_on_cuda_with_its_data_there(ray_env, tiny_countries):
    env = {**os.environ, "PYTHONPATH": str(REPO), **ray_env}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(tiny_countries)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["device"] == "cuda" and result["context"]["gpu_ids"] == "0"
    assert result["data"] == ["cuda"] and result["cached"]  # loaded once, kept on the GPU
    last = result["last"]
    assert last["model_devices"] == ["cuda"] and last["epoch"] == tiny_countries["train.epochs"]
    assert last["gpu_ids"] == "0" and last["node_id"] and 0.0 <= last["val_acc"] <= 1.0


def test_cli_run_with_a_fractional_gpu_records_it(cli, ray_env, tmp_path):
    proc = cli("tune_hw.search", "lr_batch", "--quick", "--gpus-per-trial", "0.5",
               "--set", "train.batch_size=64", "--storage-path", str(tmp_path), "--name", "g",
               env=ray_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(Path(tmp_path, "lr_batch", "g", "trials.parquet"))
    assert trials.gpu_ids.str.fullmatch(r"\d+").all()  # each trial: one GPU id, shared
    assert trials.node_id.notna().all() and set(trials.status) <= {"completed", "early_stopped"}


def test_a_fused_study_trains_its_groups_on_the_gpu(cli, ray_env, tmp_path):
    proc = cli("tune_hw.search", "lr_batch", "--quick", "--gpus-per-trial", "0.5", "--set",
               "search.algorithm=random", "--set", "space.train.batch_size={choice: [16]}",
               "--num-samples", "6", "--fuse", "auto", "--storage-path", str(tmp_path),
               "--name", "fg", env=ray_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pd.read_parquet(Path(tmp_path, "lr_batch", "fg", "trials.parquet"))
    assert len(trials) == 6 and trials.group_id.nunique() < 6
    assert trials.gpu_ids.str.fullmatch(r"\d+").all()  # every member trained on its GPU


def test_a_gpu_trial_whose_worker_dies_continues_on_the_gpu(tmp_path, ray_tmp, ray_env):  # noqa: F811
    """The retry restores the saved state on the CPU first: the batch-order generator only
    takes a CPU state, and loading it onto CUDA made every GPU retry and --resume fail."""
    args = ["lr_batch", *SLOW_TRIALS, "--set", "space.train.batch_size={grid: [8]}",
            "--set", f"train.epochs={LONG_EPOCHS}", "--set", "search.num_samples=1",
            "--gpus-per-trial", "1",
            "--max-failures", "2", "--storage-path", str(tmp_path), "--name", "g1"]
    run_dir = tmp_path / "lr_batch" / "g1"
    proc = start_search(args, ray_tmp, **{k: v for k, v in ray_env.items() if k != "RAY_TMPDIR"})
    row = wait_for(lambda: next((r for r in last_rows(run_dir).values()
                                 if 2 <= r["epoch"] < LONG_EPOCHS), None), 240, "epoch 2", proc)
    os.kill(row["pid"], signal.SIGKILL)  # the trial's worker, mid-training on the GPU
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert trials.status.tolist() == ["completed"]
    assert trials.final_epoch.tolist() == [LONG_EPOCHS]
    assert trials.gpu_ids.tolist() == ["0"]
    seen = next(iter(reported_epochs(run_dir).values()))
    assert seen.count(1) == 1 and seen[-1] == LONG_EPOCHS  # continued, not from epoch 1
