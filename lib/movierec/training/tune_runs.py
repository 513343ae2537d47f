"""Ray Tune trials as MLflow child runs, logged while the search goes on.

Tune calls ``TrialRuns``'s hooks in the driver (one thread) as trials start, report and
end, so a long search can be watched in the MLflow UI trial by trial, and only the driver
writes to the tracking store. Tracking never stops a search: after a failed call it warns
once and logs nothing more live; ``flush`` then logs, from Tune's results, whatever is
missing, and there a failure counts. A search cut short (Ctrl+C: Tune then returns as if
done) is told by the trials Tune never completed. Imports Ray at module level: import it
only to tune.
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
    except (ValidationError, KeyError):  # a sample the base cannot take, or none at all
        return sample


@dataclass
class _Trial:
    """What Tune said of one trial, and what its run has received so far."""

    config: dict[str, Any] | None = None  # Tune's sample (set even if no actor started)
    ended: str | None = None  # "finished" or "failed" once Tune says so; None: cut short
    run_id: str | None = None
    described: bool = False  # its params are logged
    steps: set[int] = field(default_factory=set)
    scored: bool = False
    closed: bool = False


class TrialRuns(Callback):
    """Logs each Tune trial as a child run of ``parent_run_id`` as it goes.

    A trial's run carries the whole config it trained as params, the tags of the search
    plus ``kind=trial`` and ``status`` (running, then finished, no-score, failed, or killed
    for a trial the search's end cut short), and per epoch its loss and validation figures.
    Trials are told apart by their folder (``trial.path``, which is also their
    ``Result.path``). What Tune says of a trial is noted before anything is logged, so a
    tracking outage loses no trial's outcome.
    """

    def __init__(self, parent_run_id: str, trial_base: TrainConfig,
                 tags: dict[str, str]) -> None:
        self.parent_run_id, self.trial_base, self.tags = parent_run_id, trial_base, tags
        self._trials: dict[str, _Trial] = {}
        self._client: Any = None
        self._experiment_id = self._commit = ""
        self._failed = False

    # Tune's hooks, in the driver's Tune loop.
    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        """Open the trial's run."""
        self._live(self._open, self._note(trial))

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        """Log the epoch the trial just reported."""
        self._live(self._log_epoch, self._note(trial), result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        """Close the run of a trial that ended (ASHA's stop included)."""
        self._live(self._close, self._note(trial, ended="finished"))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        """Close the run of a trial that failed (its actor may never have started)."""
        self._live(self._close, self._note(trial, ended="failed"))

    def flush(self, results: Iterable[Any]) -> int:
        """Log what the live hooks did not, from Tune's results; errors propagate here.

        Args:
            results: Tune's results (``path``, ``config``, ``error``, ``metrics_dataframe``).

        Returns:
            How many trials the search's end cut short (Tune never completed them: an
            interrupted search); their runs end as KILLED.
        """
        cut_short = 0
        for result in results:
            trial = self._trials.setdefault(result.path, _Trial())
            if trial.config is None:  # a Result has no config when no actor ever started
                trial.config = result.config or {}
            if result.error is not None:
                trial.ended = "failed"
            cut_short += trial.ended is None
            self._open(trial)
            history = result.metrics_dataframe
            for row in (history.to_dict("records") if history is not None else []):
                self._log_epoch(trial, row)  # the epochs not logged yet
            if result.error is not None:
                self._tracking().set_tag(trial.run_id, "error", one_line(result.error)[:5000])
            if not trial.closed:
                self._close(trial)
        return cut_short

    def abandon(self) -> None:
        """End every run still open as KILLED (the search itself failed); best effort."""
        for trial in self._trials.values():
            if trial.run_id is not None and not trial.closed:
                try:
                    self._tracking().set_tag(trial.run_id, "status", "killed")
                    self._tracking().set_terminated(trial.run_id, "KILLED")
                except Exception:  # the search's own error is what matters
                    return

    def _note(self, tune_trial: Any, ended: str | None = None) -> _Trial:
        """Record what Tune says of a trial (always, even after a tracking failure)."""
        trial = self._trials.setdefault(tune_trial.path, _Trial())
        trial.config = tune_trial.config
        trial.ended = ended or trial.ended
        return trial

    def _live(self, log: Callable[..., None], *args: Any) -> None:
        """Log now; after a failure, leave it to ``flush``.

        Tune waits for its hooks, so the first failed call holds every trial for as long
        as MLflow's client retries (minutes by default; ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``
        and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` shorten it); after it nothing more is tried.
        """
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

    def _open(self, trial: _Trial) -> None:
        from mlflow.entities import Param  # noqa: PLC0415 - MLflow is imported lazily

        if trial.described:  # opened live, or a trial Tune started again
            return
        client = self._tracking()
        if trial.run_id is None:
            tags = {"mlflow.parentRunId": self.parent_run_id, "git_commit": self._commit,
                    **self.tags, "kind": "trial", "status": "running"}
            trial.run_id = client.create_run(self._experiment_id, run_name="trial",
                                             tags=tags).info.run_id
        params = [Param(key, str(value)) for key, value
                  in flatten(trial_params(self.trial_base, trial.config or {})).items()]
        for start in range(0, len(params), BATCH_LIMIT):
            client.log_batch(trial.run_id, params=params[start:start + BATCH_LIMIT])
        trial.described = True

    def _log_epoch(self, trial: _Trial, result: dict[str, Any]) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415

        self._open(trial)
        step, now = int(result["epoch"]), int(time.time() * 1000)
        if step in trial.steps:  # a trial Tune restarted reports its epochs again
            return
        figures = logged_figures(result)
        self._tracking().log_batch(trial.run_id, metrics=[
            Metric(key, value, now, step) for key, value in figures.items()])
        trial.steps.add(step)
        trial.scored = trial.scored or METRIC in figures

    def _close(self, trial: _Trial) -> None:
        self._open(trial)
        if trial.ended == "failed":
            status, state = "failed", "FAILED"
        elif trial.ended is None:
            status, state = "killed", "KILLED"
        else:
            status, state = ("finished" if trial.scored else "no-score"), "FINISHED"
        self._tracking().set_tag(trial.run_id, "status", status)
        self._tracking().set_terminated(trial.run_id, state)
        trial.closed = True
