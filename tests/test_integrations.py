"""A run opens in the tools users already have: optuna-dashboard (optuna.db), MLflow,
TensorBoard, DuckDB and polars. One real quick search feeds every check."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import mlflow
import optuna
import pandas as pd
import polars as pl
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tune_hw import layout, results
from tune_hw.distributions import Distribution
from tune_hw.mlflow_store import MlflowStore
from tune_hw.optuna_store import OptunaStore, optuna_params
from tune_hw.ranking import Ranking

STUDY = """\
description: integrations test study
dataset: {name: countries, n_train: 512, n_val: 256, n_test: 256}
model: {name: mlp, width: 16, depth: 2}
train: {epochs: 4, lr: 0.05, momentum: 0.9, batch_size: 64, seed: 0}
space:
  train.lr: {loguniform: [1.0e-3, 0.5]}
  train.batch_size: {choice: [32, 128]}
search: {algorithm: optuna, num_samples: 4, metric: val_acc, mode: max}
scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
"""
STATES = {"completed": "COMPLETE", "early_stopped": "PRUNED", "diverged": "FAIL", "error": "FAIL"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import run_cli
    tmp = tmp_path_factory.mktemp("integr")
    (tmp / "integr.yaml").write_text(STUDY)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    proc = run_cli("tune_hw.search", str(tmp / "integr.yaml"), "--storage-path",
                   str(tmp / "runs"), "--name", "r1", "--mlflow", uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp / "runs" / "integr" / "r1"
    return run_dir, results.load_run(run_dir), uri


def healthy_values(epochs: pd.DataFrame, trial_id: str) -> dict[int, float]:
    rows = epochs[(epochs.trial_id == trial_id) & ~epochs.diverged]
    return {int(e): float(v) for e, v in zip(rows.epoch, rows.val_acc, strict=True) if math.isfinite(v)}


def check_optuna_study(study: optuna.Study, trials: pd.DataFrame, epochs: pd.DataFrame) -> None:
    """One Optuna trial per tune_hw trial with its state, params, values and attributes."""
    assert len(study.trials) == len(trials)
    by_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert set(by_id) == set(trials.trial_id)
    for row in trials.itertuples():
        trial = by_id[row.trial_id]
        assert trial.state.name == STATES[row.status]
        assert trial.intermediate_values == pytest.approx(healthy_values(epochs, row.trial_id))
        config = trials.set_index("trial_id").loc[row.trial_id]
        assert trial.params == {"train.lr": pytest.approx(config["config/train.lr"]),
                                "train.batch_size": config["config/train.batch_size"]}
        assert trial.distributions["train.lr"].log is True
        assert trial.distributions["train.batch_size"].choices == (32, 128)
        assert trial.user_attrs["status"] == row.status
        assert trial.user_attrs["test_acc"] == pytest.approx(row.test_acc_at_best)
        if row.status == "completed":
            assert trial.value == pytest.approx(row.best_val_acc)


def test_optuna_db_holds_one_trial_per_trial_with_states_and_epochs(run):
    run_dir, tables, _ = run
    study = optuna.load_study(study_name="integr/r1",
                              storage=f"sqlite:///{run_dir / layout.OPTUNA_FILE}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert len(tables.trials) == 4 and {"completed", "early_stopped"} <= set(tables.trials.status)
    check_optuna_study(study, tables.trials, tables.epochs)


def test_optuna_sync_mends_a_store_and_is_idempotent(run, tmp_path):
    """The final sync builds optuna.db from the tables alone (what an interrupted driver
    missed), ends a trial it left RUNNING, and changes nothing when run again."""
    _, tables, _ = run
    dists = {"train.lr": Distribution("loguniform", 1.0e-3, 0.5),
             "train.batch_size": Distribution("choice", values=(32, 128))}
    store = OptunaStore(tmp_path, "integr/r1", Ranking("val_acc", "max"), dists)
    store.open()
    interrupted = tables.trials.assign(status=["running", *tables.trials.status[1:]])
    store.sync(interrupted, tables.epochs)
    study = optuna.load_study(study_name="integr/r1", storage=store.url)
    assert study.trials[0].state.name == "RUNNING"
    for _ in range(2):  # the search ends: the same trials, now finished; a second sync is a no-op
        reopened = OptunaStore(tmp_path, "integr/r1", Ranking("val_acc", "max"), dists)
        reopened.open()
        reopened.sync(tables.trials, tables.epochs)
        check_optuna_study(optuna.load_study(study_name="integr/r1", storage=store.url),
                           tables.trials, tables.epochs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_optuna_dashboard_serves_the_run(run):
    run_dir, tables, _ = run
    port, base = free_port(), None
    command = [str(Path(sys.executable).parent / "optuna-dashboard"),
               f"sqlite:///{run_dir / layout.OPTUNA_FILE}", "--host", "127.0.0.1",
               "--port", str(port), "--server", "wsgiref"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):  # it answers within seconds; poll, never assert on time
            try:
                assert "allow_unsafe" in get_json(f"{base}/api/meta")
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        summary = next(s for s in summaries if s["study_name"] == "integr/r1")
        assert summary["directions"] == ["maximize"]
        detail = get_json(f"{base}/api/studies/{summary['study_id']}")
        assert len(detail["trials"]) == len(tables.trials)
        assert detail["has_intermediate_values"] is True
        states = sorted(t["state"] for t in detail["trials"])
        assert states == sorted(STATES[s].capitalize() for s in tables.trials.status)
        assert {"train.lr", "train.batch_size"} == {
            p["name"] for t in detail["trials"] for p in t["params"]}
    finally:
        server.terminate()  # by its PID: it is our child
        server.wait(timeout=30)


def test_mlflow_logs_one_run_per_trial_with_epoch_steps_and_tags(run):
    _, tables, uri = run
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["integr"])
    assert len(runs) == len(tables.trials)
    client = MlflowClient(uri)
    for trial in tables.trials.itertuples():
        found = runs[runs["tags.tune_trial_id"] == trial.trial_id]
        assert len(found) == 1
        found = found.iloc[0]
        assert found["tags.status"] == trial.status and found["status"] == "FINISHED"
        assert found["tags.run_name"] == "r1" and found["tags.study"] == "integr"
        assert float(found["params.train.lr"]) == pytest.approx(tables.trials.set_index(
            "trial_id").loc[trial.trial_id, "config/train.lr"])
        history = client.get_metric_history(found["run_id"], "val_acc")
        assert {m.step: m.value for m in history} == pytest.approx(
            healthy_values(tables.epochs, trial.trial_id))


def test_tensorboard_has_the_epoch_metrics_by_epoch(run):
    run_dir, tables, _ = run
    for trial_id in tables.trials.trial_id:
        events = EventAccumulator(str(run_dir / layout.trial_dir_name(trial_id)))
        events.Reload()
        tags = set(events.Tags()["scalars"])
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
                "test_acc"} <= tags
        assert not any(t.startswith("ray/tune/") for t in tags)  # Ray's logger is replaced
        scalars = {s.step: s.value for s in events.Scalars("val_acc")}
        assert scalars == pytest.approx(healthy_values(tables.epochs, trial_id))


EPOCH_TYPES = {"trial_id": ("VARCHAR", pl.String), "epoch": ("BIGINT", pl.Int64),
               "steps": ("BIGINT", pl.Int64), "val_acc": ("DOUBLE", pl.Float64),
               "lr": ("DOUBLE", pl.Float64), "diverged": ("BOOLEAN", pl.Boolean)}
TRIAL_TYPES = {"trial_id": ("VARCHAR", pl.String), "status": ("VARCHAR", pl.String),
               "config/train.lr": ("DOUBLE", pl.Float64),
               "config/train.batch_size": ("BIGINT", pl.Int64),
               "config/dataset.name": ("VARCHAR", pl.String),
               "best_epoch": ("DOUBLE", pl.Float64), "final_epoch": ("BIGINT", pl.Int64),
               "seed": ("BIGINT", pl.Int64), "num_params": ("BIGINT", pl.Int64),
               "node_id": ("VARCHAR", pl.String), "error": ("VARCHAR", pl.String)}


def column_types(path: Path) -> tuple[dict[str, str], dict[str, object]]:
    described = duckdb.sql(f"DESCRIBE SELECT * FROM '{path}'").fetchall()
    return {name: kind for name, kind, *_ in described}, dict(pl.read_parquet(path).schema)


def check_types(path: Path, expected: dict[str, tuple[str, object]]) -> None:
    in_duckdb, in_polars = column_types(path)
    for column, (duck, polar) in expected.items():
        assert (column, in_duckdb[column], in_polars[column]) == (column, duck, polar)
    assert "NULL" not in in_duckdb.values() and pl.Null not in in_polars.values()
    assert pl.Object not in in_polars.values()


def test_duckdb_and_polars_read_the_documented_types(run):
    run_dir, tables, _ = run
    assert tables.trials.error.isna().all()  # no trial failed: an all-missing text column
    check_types(run_dir / layout.TRIALS_FILE, TRIAL_TYPES)
    check_types(run_dir / layout.EPOCHS_FILE, EPOCH_TYPES)
    best = duckdb.sql(f"SELECT trial_id, max(val_acc) AS best FROM "
                      f"'{run_dir / layout.EPOCHS_FILE}' GROUP BY trial_id "
                      "ORDER BY best DESC LIMIT 1").fetchall()[0]
    assert best[1] == pytest.approx(tables.epochs.val_acc.max())


def test_empty_and_all_missing_tables_keep_their_types(tmp_path):
    """A run with no trial yet, and a trial that reported nothing, still write typed files."""
    for records in ([], [results.TrialRecord("a", {"train.lr": 0.1}, [], ended=False)]):
        run = results.write_run(tmp_path, records, {})
        assert len(run.trials) == len(records)
        check_types(tmp_path / layout.EPOCHS_FILE, EPOCH_TYPES)
        in_duckdb, in_polars = column_types(tmp_path / layout.TRIALS_FILE)
        assert in_duckdb["error"] == "VARCHAR" and in_duckdb["best_val_acc"] == "DOUBLE"
        assert in_duckdb["seed"] == "BIGINT" and in_polars["status"] == pl.String


@pytest.mark.parametrize("args, message", [
    (["--mlflow", "ftp://host/x"], "is not an MLflow tracking URI"),
    (["--mlflow", "sqlite:////no/such/dir/m.db"], "/no/such/dir does not exist"),
    (["--set", "log.mlflow=3"], "log.mlflow must be a tracking URI"),
    (["--mlflow", "http://127.0.0.1:9"], "cannot reach the MLflow tracking server 127.0.0.1:9"),
    (["--set", "log.wandb=x"], "log has unknown key(s) ['wandb']"),
])
def test_bad_tracking_settings_are_one_line_and_exit_2(cli, tmp_path, args, message):
    proc = cli("tune_hw.search", "lr_batch", "--quick", "--storage-path", str(tmp_path), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and not any(tmp_path.iterdir())


def test_mlflow_file_store_takes_a_directory(tmp_path, monkeypatch):
    """A directory is MLflow's file store (MLflow 3 opens it only when asked by name)."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the store sets it; undone after
    store = MlflowStore(str(tmp_path / "mlruns"), "integr", "r1")
    store.open()
    rows = [{"epoch": 1, "val_acc": 0.5, "diverged": False},
            {"epoch": 2, "val_acc": math.nan, "diverged": True}]
    for row in rows:
        store.report("a", {"train.lr": 0.1}, row)
    store.finish("a", {"train.lr": 0.1}, {"status": "diverged"})
    client = MlflowClient(str(tmp_path / "mlruns"))
    (found,) = client.search_runs([client.get_experiment_by_name("integr").experiment_id])
    assert found.data.tags["status"] == "diverged" and found.info.status == "FINISHED"
    assert found.data.params == {"train.lr": "0.1"}
    assert [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, "val_acc")] == [(1, 0.5)]
    assert [m.value for m in client.get_metric_history(found.info.run_id, "diverged")] == [0.0, 1.0]


def test_a_searched_section_is_one_categorical_optuna_parameter():
    """model: {grid: [{name: mlp}, {name: cnn}]} is one Optuna choice between the mappings'
    texts, matched from a trial's dotted keys (it raised TypeError: unhashable dict)."""
    dist = Distribution("grid", values=({"name": "mlp"}, {"name": "cnn", "kernel_size": 3}))
    assert dist.to_optuna().choices == ("{'name': 'mlp'}", "{'name': 'cnn', 'kernel_size': 3}")
    config = {"model.name": "cnn", "model.kernel_size": 3, "train.lr": 0.1}
    assert optuna_params({"model": dist}, config) == {"model": "{'name': 'cnn', 'kernel_size': 3}"}
    optuna.distributions.check_distribution_compatibility(dist.to_optuna(), dist.to_optuna())


class RecordingStore:
    """A store that keeps what it was told (the callback's contract: open, report, finish)."""

    def __init__(self):
        self.finished = []

    def open(self):
        pass

    def report(self, member_id, config, epoch):
        pass

    def finish(self, member_id, config, summary):
        self.finished.append(member_id)


def test_a_group_that_ends_finishes_every_member_also_those_that_left(tmp_path):
    # a fused group's last result holds only the members still in it; ASHA stopped m00 before
    from types import SimpleNamespace

    from tune_hw import ray_files
    from tune_hw.ranking import Ranking
    from tune_hw.tracking import StoreCallback

    members = [{"train.lr": 0.1, "train.epochs": 2}, {"train.lr": 0.01, "train.epochs": 2}]
    group = SimpleNamespace(trial_id="g1", config={ray_files.GROUP_KEY: {
        ray_files.MEMBERS_KEY: members}}, last_result={ray_files.MEMBERS_KEY: {
            "g1-m01": {"epoch": 2, "val_acc": 0.5, "diverged": False}}})
    store = RecordingStore()
    StoreCallback(store, tmp_path, Ranking()).on_trial_complete(0, [], group)
    assert sorted(store.finished) == ["g1-m00", "g1-m01"]
