"""MLflow tracking of a run (`--mlflow URI`, `log: {mlflow: URI}`): one MLflow run per tune_hw
trial under an experiment named after the study, its parameters, every epoch's metrics with
`step = epoch`, and tags `tune_trial_id`, `run_name`, `study` and `status`.

Written by the driver (tracking.StoreCallback), never by trial workers. Ray's own
MLflowLoggerCallback does not fit: it steps by training_iteration (which restarts after a
restore), keeps the status only as FINISHED/FAILED and logs one run per Tune trial.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tune_hw.errors import UserError
from tune_hw.ranking import finite, is_true
from tune_hw.results import FINAL_STATUSES, METRIC_COLUMNS

SCHEMES = ("sqlite", "http", "https", "file", "databricks")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value


def check_uri(uri: str, where: str) -> str:
    """A tracking URI tune_hw can log to, checked before any work starts."""
    scheme = urlparse(uri).scheme if "://" in uri or uri.startswith("file:") else ""
    if scheme not in SCHEMES and not (scheme == "" and uri):
        raise UserError(f"{where}: {uri!r} is not an MLflow tracking URI: use sqlite:///PATH, "
                        "http(s)://HOST:PORT (a tracking server) or a directory (file store)")
    if scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")).expanduser()
        if not path.parent.is_dir():
            raise UserError(f"{where}: {uri}: the directory {path.parent} does not exist; "
                            "create it or give another sqlite:///PATH")
    if scheme in ("http", "https"):
        _check_reachable(urlparse(uri), where)
    try:
        import mlflow  # noqa: F401  (lazy: an optional extra that takes seconds to import)
    except ImportError:
        raise UserError(f"{where}: MLflow is not installed: pip install 'tune_hw[mlflow]' "
                        "(mlflow-skinny), or drop the MLflow URI") from None
    return uri


def _check_reachable(url: Any, where: str) -> None:
    """A tracking server answers on its port (MLflow's client would retry for minutes)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as exc:
        raise UserError(f"{where}: cannot reach the MLflow tracking server {url.hostname}:"
                        f"{port} ({exc.strerror or exc}): start it (mlflow server --host "
                        "127.0.0.1 --port PORT) or check the URI") from None


class MlflowStore:
    """The MLflow runs of one tune_hw run; the client is opened lazily (it is pickled with the
    Tuner's callbacks: only settings travel)."""

    def __init__(self, uri: str, experiment: str, run_name: str):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self._client: Any = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # tune_hw trial id -> MLflow run id

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_runs": {}}

    def open(self) -> None:
        """Open the store and the study's experiment; runs of this tune_hw run that it already
        holds (a resumed run) are found again by their tags."""
        if self.uri.startswith("file:") or "://" not in self.uri:
            # MLflow 3 keeps file stores in maintenance mode: they work when asked for by name
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.uri)
        found = self._client.get_experiment_by_name(self.experiment)
        self._experiment_id = found.experiment_id if found else \
            self._client.create_experiment(self.experiment)
        runs = self._client.search_runs([self._experiment_id],
                                        f"tags.run_name = '{self.run_name}'", max_results=50000)
        self._runs = {r.data.tags["tune_trial_id"]: r.info.run_id for r in runs
                      if "tune_trial_id" in r.data.tags}

    def start(self, trial_id: str, config: dict[str, Any]) -> str:
        """The MLflow run of a tune_hw trial, created with its parameters when new."""
        run_id = self._runs.get(trial_id)
        if run_id is None:
            from mlflow.entities import Param

            run = self._client.create_run(self._experiment_id, run_name=trial_id, tags={
                "tune_trial_id": trial_id, "run_name": self.run_name,
                "study": self.experiment, "status": "running"})
            run_id = self._runs[trial_id] = run.info.run_id
            params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(config.items())]
            self._client.log_batch(run_id, params=params)
        return run_id

    def report(self, trial_id: str, config: dict[str, Any], row: dict[str, Any]) -> None:
        """One epoch row (as in epochs.parquet) as metrics at step = epoch; `diverged` as 0/1,
        missing measurements (a diverged epoch has none) left out."""
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(row["epoch"])
        metrics = [Metric(k, float(row[k]), now, step) for k in METRIC_COLUMNS
                   if k != "diverged" and finite(row.get(k))]
        metrics.append(Metric("diverged", float(is_true(row.get("diverged"))), now, step))
        self._client.log_batch(self.start(trial_id, config), metrics=metrics)

    def finish(self, trial_id: str, config: dict[str, Any], summary: dict[str, Any]) -> None:
        """The trial's status (its trials.parquet row, `summary`) as a tag; an ended trial's
        run is terminated (FAILED for an error)."""
        run_id = self.start(trial_id, config)
        status = summary["status"]
        self._client.set_tag(run_id, "status", status)
        if status in FINAL_STATUSES:
            self._client.set_terminated(run_id, "FAILED" if status == "error" else "FINISHED")
