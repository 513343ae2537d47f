"""MLflow adapter: the only module of training that talks to MLflow.

Tracking URI: ``MLFLOW_TRACKING_URI`` when set (any server), else SQLite under
``MOVIEREC_HOME`` with artifacts beside it, which works offline.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from movierec.config import get_settings

EXPERIMENT = "movierec"


ENV_GIT_COMMIT = "MOVIEREC_GIT_COMMIT"  # set in the images, which hold no .git


def git_commit() -> str:
    """The current git commit, for run tags: ``$MOVIEREC_GIT_COMMIT``, else the checkout's.

    ``unknown`` outside a checkout when the variable is not set.
    """
    if os.environ.get(ENV_GIT_COMMIT):
        return os.environ[ENV_GIT_COMMIT]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, newest first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def tracking_unreachable(error: BaseException) -> bool:
    """Whether ``error`` comes from a tracking server that cannot be reached.

    MLflow's REST client turns a refused or failed connection into a plain
    ``MlflowException`` raised while handling the ``requests`` error, so the connection
    error is found in the exception's chain (its cause or context), not in its type. Only
    ``requests``' own error counts: a refused connection to another service (a stage,
    through httpx) is not the tracking server's.
    """
    return any(isinstance(e, requests.exceptions.ConnectionError) for e in error_chain(error))


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict to dotted keys, as MLflow params are flat."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_items(metrics: dict[str, dict[str, float]], prefix: str) -> dict[str, float]:
    """``{"sampled": {"ndcg@10": x}}`` to ``{"<prefix>_sampled_ndcg_10": x}`` (MLflow-safe)."""
    return {f"{prefix}_{proto}_{name.replace('@', '_')}": value
            for proto, values in metrics.items() for name, value in values.items()}


def configure() -> Any:
    """Import MLflow lazily, point it at our store and experiment, and return the module."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow  # noqa: PLC0415 - heavy import, only when tracking

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        artifacts = None
        if settings.tracking_uri.startswith("sqlite:"):
            artifacts = (settings.home / "mlartifacts").as_uri()
        mlflow.create_experiment(EXPERIMENT, artifact_location=artifacts)
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


@contextmanager
def tracked_run(run_name: str, params: dict[str, Any], tags: dict[str, str],
                nested: bool = False) -> Iterator[Any]:
    """Start an MLflow run with flattened params and tags; yields the mlflow module.

    The run ends FINISHED, FAILED on an error, or KILLED when interrupted (Ctrl+C).
    """
    mlflow = configure()
    with mlflow.start_run(run_name=run_name, nested=nested):
        mlflow.log_params(flatten(params))
        mlflow.set_tags({"git_commit": git_commit(), **tags})
        try:
            yield mlflow
        except KeyboardInterrupt:
            # start_run's exit then finds no run to end. A tracking server that is down
            # must not turn the interruption into another error.
            with contextlib.suppress(Exception):
                mlflow.end_run("KILLED")
            raise


def _record_key(record: dict[str, Any]) -> tuple[int, tuple[str, ...]]:
    """What tells epoch records apart: the epoch and which figures it has (phase, branch)."""
    return int(record["epoch"]), tuple(sorted(record))


class EpochLogger:
    """Logs each epoch's record to one MLflow run while training goes on.

    Called from any thread (Ray's records arrive on a thread of the driver), so it names
    its run instead of relying on MLflow's active run, which is per thread. Tracking must
    not stop or stall a training run: after a failed call (MLflow's client retries for
    minutes first) it warns once and logs nothing more live; ``flush`` then logs every
    record not logged yet, a resumed run's earlier epochs too, and there a failure counts.
    """

    def __init__(self, run_id: str) -> None:
        mlflow = configure()
        self._client, self.run_id = mlflow.MlflowClient(), run_id
        self._logged: set[tuple[int, tuple[str, ...]]] = set()
        self._failed = False

    def __call__(self, record: dict[str, Any]) -> None:
        """Log one epoch's figures now; after a failure, leave them to ``flush``."""
        if self._failed:
            return
        try:
            self._log(record)
        except Exception as error:  # any tracking failure is retried at the end
            self._failed = True
            warnings.warn(f"MLflow did not take epoch {record.get('epoch')}'s metrics "
                          f"({type(error).__name__}: {error}); training goes on and the "
                          "epochs are logged at the end", RuntimeWarning, stacklevel=2)

    def flush(self, history: Iterable[dict[str, Any]]) -> None:
        """Log every record of ``history`` not logged yet (errors propagate here)."""
        for record in history:
            if _record_key(record) not in self._logged:
                self._log(record)

    def _log(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415 - MLflow is imported lazily

        step, now = int(record["epoch"]), int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[
            Metric(key, float(value), now, step) for key, value in record.items()
            if key != "epoch"])
        self._logged.add(_record_key(record))


def log_json_artifact(mlflow: Any, name: str, payload: Any) -> None:
    """Write ``payload`` as JSON and attach it to the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=2, default=str))
        mlflow.log_artifact(str(path))


def load_run(run_id: str) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """A run's metrics and tags, and a local folder with its artifacts (downloaded)."""
    mlflow = configure()
    run = mlflow.get_run(run_id)
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id))
    return dict(run.data.metrics), {**run.data.tags, "run_name": run.info.run_name}, folder


def search_runs(max_results: int = 50) -> list[str]:
    """Ids of the latest finished top-level training runs of the experiment, newest first.

    Training runs are those tagged with their ``model`` (``train_and_track``); the parent
    run of ``movierec tune`` has no model of its own and is left out.
    """
    mlflow = configure()
    # A LIKE on a tag matches only the runs that have the tag.
    frame = mlflow.search_runs(experiment_names=[EXPERIMENT], max_results=max_results,
                               filter_string="attributes.status = 'FINISHED' "
                                             "and tags.model LIKE '%'",
                               order_by=["attributes.start_time DESC"])
    if frame.empty:
        return []
    if "tags.mlflow.parentRunId" in frame:
        frame = frame[frame["tags.mlflow.parentRunId"].isna()]
    return frame["run_id"].tolist()
