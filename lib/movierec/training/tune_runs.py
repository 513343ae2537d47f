"""Ray Tune trials as MLflow child runs, logged while the search goes on.

Tune calls ``TrialRuns``'s hooks in the driver (one thread) as trials start, report and
end, so a long search can be watched in the MLflow UI trial by trial, and only the driver
writes to the tracking store. Tracking never stops a search: after a failed call it warns
once and logs nothing more live; ``flush`` then logs, from Tune's results, whatever is
missing, and there a failure counts. Imports Ray at module level: import it only to tune.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from ray.tune import Callback

from movierec.training.config import TrainConfig
from movierec.training.tracking import EXPERIMENT, configure, flatten, git_commit
from movierec.training.tuning import METRIC, apply_sample, one_line

BATCH_LIMIT = 100  # MLflow's most params or tags per log_batch call


def logged_figures(result: dict[str, Any]) -> dict[str, float]:
    """The epoch's own figures in a Tune result (Ray adds its timers and counters)."""
    return {key: float(value) for key, value in result.items()
            if (key == "loss" or key.startswith("epoch_valid_")) and value == value}


def trial_params(trial_base: TrainConfig, sample: dict[str, Any]) -> dict[str, Any]:
    """The whole config a trial trains, as a train run logs it; the raw sample if invalid."""
    try:
        return apply_sample(trial_base, sample).model_dump()
    except ValidationError:  # a sample the base cannot take: the trial fails on it too
        return sample


@dataclass
class _Trial:
    """What one trial's run has received so far."""

    run_id: str | None = None
    described: bool = False  # its params are logged
    steps: set[int] = field(default_factory=set)
    scored: bool = False
    closed: bool = False


class TrialRuns(Callback):
    """Logs each Tune trial as a child run of ``parent_run_id`` as it goes.

    A trial's run carries the whole config it trained as params, the tags of the search
    plus ``kind=trial`` and ``status`` (running, then finished, no-score or failed), and
    per epoch its loss and validation figures. Trials are told apart by their folder
    (``trial.path``, which is also their ``Result.path``).
    """

    def __init__(self, parent_run_id: str, trial_base: TrainConfig,
                 tags: dict[str, str]) -> None:
        self.parent_run_id, self.trial_base, self.tags = parent_run_id, trial_base, tags
        self._trials: dict[str, _Trial] = {}
        self._client: Any = None
        self._experiment_id = self._commit = ""
        self._failed = False

    # Tune's hooks: each is one guarded call, so tracking never breaks the search.
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        """Open the trial's run."""
        self._live(self._open, trial.path, trial.config)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        """Log the epoch the trial just reported."""
        self._live(self._log_epoch, trial.path, result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        """Close the run of a trial that ended (ASHA's stop included)."""
        self._live(self._close, trial.path, None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        """Close the run of a trial that failed."""
        self._live(self._close, trial.path, "failed")

    def flush(self, results: Iterable[Any]) -> None:
        """Log what the live hooks did not, from Tune's results; errors propagate here.

        Args:
            results: Tune's results (``path``, ``config``, ``error``, ``metrics_dataframe``).
        """
        for result in results:
            self._open(result.path, result.config)
            history = result.metrics_dataframe
            for row in (history.to_dict("records") if history is not None else []):
                if int(row["epoch"]) not in self._trials[result.path].steps:
                    self._log_epoch(result.path, row)
            if result.error is not None:
                self._tracking().set_tag(self._trials[result.path].run_id, "error",
                                         one_line(result.error)[:5000])
            if not self._trials[result.path].closed:
                self._close(result.path, "failed" if result.error is not None else None)

    def abandon(self) -> None:
        """End every run still open as KILLED (the search itself failed); best effort."""
        for trial in self._trials.values():
            if trial.run_id is not None and not trial.closed:
                try:
                    self._tracking().set_tag(trial.run_id, "status", "killed")
                    self._tracking().set_terminated(trial.run_id, "KILLED")
                except Exception:  # the search's own error is what matters
                    return

    def _live(self, log: Callable[..., None], *args: Any) -> None:
        if self._failed:
            return
        try:
            log(*args)
        except Exception as error:  # any tracking failure is made up for by ``flush``
            self._failed = True
            warnings.warn(f"MLflow did not take a trial's update ({type(error).__name__}: "
                          f"{error}); tuning goes on and its trials are logged at the end",
                          RuntimeWarning, stacklevel=2)

    def _tracking(self) -> Any:
        if self._client is None:  # created in the driver, on first use
            mlflow = configure()
            self._client = mlflow.MlflowClient()
            self._experiment_id = mlflow.get_experiment_by_name(EXPERIMENT).experiment_id
            self._commit = git_commit()
        return self._client

    def _open(self, path: str, sample: dict[str, Any]) -> None:
        from mlflow.entities import Param  # noqa: PLC0415 - MLflow is imported lazily

        trial = self._trials.setdefault(path, _Trial())
        if trial.described:  # opened live, or a trial Tune started again
            return
        client = self._tracking()
        if trial.run_id is None:
            tags = {"mlflow.parentRunId": self.parent_run_id, "git_commit": self._commit,
                    **self.tags, "kind": "trial", "status": "running"}
            trial.run_id = client.create_run(self._experiment_id, run_name="trial",
                                             tags=tags).info.run_id
        params = [Param(key, str(value))
                  for key, value in flatten(trial_params(self.trial_base, sample)).items()]
        for start in range(0, len(params), BATCH_LIMIT):
            client.log_batch(trial.run_id, params=params[start:start + BATCH_LIMIT])
        trial.described = True

    def _log_epoch(self, path: str, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415

        trial = self._trials[path]
        figures, step, now = logged_figures(result), int(result["epoch"]), int(time.time() * 1000)
        self._tracking().log_batch(trial.run_id, metrics=[
            Metric(key, value, now, step) for key, value in figures.items()])
        trial.steps.add(step)
        trial.scored = trial.scored or METRIC in figures

    def _close(self, path: str, status: str | None) -> None:
        trial = self._trials[path]
        status = status or ("finished" if trial.scored else "no-score")
        self._tracking().set_tag(trial.run_id, "status", status)
        self._tracking().set_terminated(trial.run_id,
                                        "FAILED" if status == "failed" else "FINISHED")
        trial.closed = True

