"""Tracking bookkeeping: Ray Tune's trials and best config, run states and tags."""

from types import SimpleNamespace
from typing import Any

import mlflow
import pandas as pd
import pytest

from movierec.training.config import TrainConfig
from movierec.training.tracking import tracked_run
from movierec.training.tuning import METRIC, TuneConfig, choose_best

SAMPLE = {"d": 32, "n_blocks": 1, "dropout": 0.2, "lr": 1e-3, "sse_prob_user": 0.1,
          "sse_prob_item": 0.1, "loss": "ce"}


def curve(*scores: float) -> pd.DataFrame:
    """A trial's reported epochs as Tune's metrics dataframe has them."""
    return pd.DataFrame({"epoch": range(1, len(scores) + 1), METRIC: scores,
                         "loss": [1.0] * len(scores), "time_this_iter_s": [0.5] * len(scores)})


def test_tune_config_refuses_a_grace_period_asha_cannot_use() -> None:
    assert TuneConfig(max_epochs=2, grace_epochs=1).grace_epochs == 1
    with pytest.raises(ValueError, match="ASHA could stop no trial early"):
        TuneConfig(max_epochs=5)  # the default grace period is 5 epochs


def test_tuning_never_chooses_a_failed_trial() -> None:
    base = TrainConfig.model_validate({"epochs": 40})
    results = [  # a crash after its best epoch; a finished trial; no score; a bad sample
        SimpleNamespace(config={**SAMPLE, "d": 64}, metrics_dataframe=curve(0.9),
                        error=RuntimeError("worker died\ntraceback ...")),
        SimpleNamespace(config=SAMPLE, metrics_dataframe=curve(0.1, 0.2), error=None),
        SimpleNamespace(config={**SAMPLE, "d": 50}, metrics_dataframe=None, error=None),
        SimpleNamespace(config={**SAMPLE, "dropout": 1.5}, metrics_dataframe=None,
                        error=ValueError("dropout")),
    ]
    summary = choose_best(results, base)
    # The crashed trial's 0.9 does not choose the config; the finished trial's 0.2 does.
    assert summary["best_trial"] == SAMPLE and summary[METRIC] == 0.2
    assert summary["best_config"]["epochs"] == 40 and summary["failed_trials"] == 3
    assert summary["trials"][0]["error"] == "RuntimeError: worker died"
    with pytest.raises(RuntimeError, match="every one of the 2 trials failed; the first: "
                                           "RuntimeError: worker died"):
        choose_best(results[2:3] + results[:1], base)


def _child_runs() -> dict[str, Any]:
    """The trial runs by their ``model.d_item`` param (``dropout`` for the invalid sample)."""
    runs = mlflow.search_runs(filter_string="tags.kind = 'trial'", output_format="list")
    return {run.data.params.get("model.d_item", run.data.params.get("dropout")): run
            for run in runs}


def _steps(run: Any) -> list[int]:
    return [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, METRIC)]


def test_trials_are_logged_live_and_what_tracking_missed_at_the_end() -> None:
    from movierec.training.tune_runs import TrialRuns

    trial_base = TrainConfig.model_validate({"epochs": 3, "refit": False})
    first, second, unborn = (SimpleNamespace(path=f"/ray/trial_{i}", config=config)
                             for i, config in enumerate(
                                 ({**SAMPLE, "d": 32}, {**SAMPLE, "d": 64},
                                  {**SAMPLE, "dropout": 1.5})))
    with tracked_run("tune", {"samples": 3}, {"kind": "tune"}) as tracking:
        parent = tracking.active_run().info.run_id
        runs = TrialRuns(parent, trial_base, {"data_version": "v"})
        runs.on_trial_start(0, [], first)
        runs.on_trial_result(0, [], first, {"epoch": 1, METRIC: 0.1, "loss": 1.0,
                                            "time_this_iter_s": 0.5})
        # Live: the run exists, is running, holds the epoch and the whole trained config.
        live = _child_runs()["32"]
        assert (live.info.status, live.data.tags["status"]) == ("RUNNING", "running")
        assert live.data.tags["mlflow.parentRunId"] == parent
        assert live.data.tags["data_version"] == "v" and live.data.params["epochs"] == "3"
        assert _steps(live) == [1] and "time_this_iter_s" not in live.data.metrics

        client = runs._tracking()
        client.log_batch = _unreachable  # the tracking server goes away
        with pytest.warns(RuntimeWarning, match="logged at the end") as warned:
            runs.on_trial_result(0, [], first, {"epoch": 2, METRIC: 0.2, "loss": 0.9})
            runs.on_trial_start(0, [], second)  # no second warning, nothing tried
            runs.on_trial_complete(0, [], first)
            runs.on_trial_error(0, [], second)
            runs.on_trial_error(0, [], unborn)  # its actor never started: no start hook
        assert len(warned) == 1 and _child_runs().keys() == {"32"}
        del client.log_batch  # back again: flush logs what is missing, once

        cut_short = runs.flush([  # as Tune returns them
            SimpleNamespace(path=first.path, config=first.config, error=None,
                            metrics_dataframe=curve(0.1, 0.2)),
            SimpleNamespace(path=second.path, config=second.config, metrics_dataframe=curve(0.3),
                            error=RuntimeError("worker died\ntraceback")),
            SimpleNamespace(path=unborn.path, config=None, metrics_dataframe=pd.DataFrame(),
                            error=ValueError("dropout")),
        ])
    assert cut_short == 0
    children = _child_runs()  # the unborn trial's params come from Tune's Trial.config
    assert _steps(children["32"]) == [1, 2]  # epoch 1 was not logged twice
    outcome = {key: (run.info.status, run.data.tags["status"]) for key, run in children.items()}
    assert outcome == {"32": ("FINISHED", "finished"), "64": ("FAILED", "failed"),
                       "1.5": ("FAILED", "failed")}
    assert children["64"].data.tags["error"] == "RuntimeError: worker died"


def test_a_trial_run_ends_as_tune_reports_it_and_an_interrupted_search_kills_the_rest() -> None:
    from movierec.training.tune_runs import TrialRuns

    trials = [SimpleNamespace(path=f"/ray/trial_{d}", config={**SAMPLE, "d": d})
              for d in (32, 50, 64)]
    with tracked_run("tune", {"samples": 3}, {"kind": "tune"}) as tracking:
        runs = TrialRuns(tracking.active_run().info.run_id, TrainConfig(), {})
        for trial in trials[:2]:
            runs.on_trial_start(0, [], trial)
            runs.on_trial_result(0, [], trial, {"epoch": 1, METRIC: 0.1, "loss": 1.0})
        runs.on_trial_error(0, [], trials[0])
        assert _child_runs()["32"].info.status == "FAILED"  # at once, not at the end
        # Ctrl+C: Tune stops the running trial and returns; the third never started.
        cut_short = runs.flush([SimpleNamespace(path=trial.path, config=trial.config,
                                                error=None, metrics_dataframe=curve(0.1))
                                for trial in trials])
    assert cut_short == 2
    outcome = {key: (run.info.status, run.data.tags["status"])
               for key, run in _child_runs().items()}
    assert outcome == {"32": ("FAILED", "failed"), "50": ("KILLED", "killed"),
                       "64": ("KILLED", "killed")}


def test_a_failed_search_ends_its_open_trials_as_killed() -> None:
    from movierec.training.tune_runs import TrialRuns

    with tracked_run("tune", {"samples": 1}, {"kind": "tune"}) as tracking:
        runs = TrialRuns(tracking.active_run().info.run_id, TrainConfig(), {})
        runs.on_trial_start(0, [], SimpleNamespace(path="/ray/trial_0", config=SAMPLE))
        runs.abandon()
    (run,) = _child_runs().values()
    assert (run.info.status, run.data.tags["status"]) == ("KILLED", "killed")


def test_an_interrupted_run_ends_killed_and_a_failed_one_failed() -> None:
    for error, status in ((KeyboardInterrupt(), "KILLED"), (RuntimeError("bug"), "FAILED")):
        with pytest.raises(type(error)), tracked_run("x", {}, {"kind": "check"}) as tracking:
            run_id = tracking.active_run().info.run_id
            raise error
        assert mlflow.get_run(run_id).info.status == status
    assert mlflow.active_run() is None


def _unreachable(*args: Any, **kwargs: Any) -> None:
    raise ConnectionError("tracking server unreachable")


def test_runs_name_the_commit_from_the_environment_in_images(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.training.tracking import ENV_GIT_COMMIT, git_commit

    checkout = git_commit()
    assert len(checkout) == 40 or checkout == "unknown"  # this checkout's, read by git
    monkeypatch.setenv(ENV_GIT_COMMIT, "0123abcd")  # an image has no .git: the build sets it
    with tracked_run("x", {}, {"kind": "check"}) as tracking:
        run_id = tracking.active_run().info.run_id
    assert mlflow.get_run(run_id).data.tags["git_commit"] == "0123abcd"
