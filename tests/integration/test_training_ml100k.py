"""Real training on MovieLens 100K and on Ray Train (slow, but part of make test)."""

from pathlib import Path

import pytest

from movierec.data.dataset import load_sequences
from movierec.training.config import TrainConfig
from movierec.training.loop import fit
from movierec.training.ray_runner import fit_on_ray
from movierec.training.soup import soup_plan

pytestmark = pytest.mark.slow


def test_short_training_beats_popularity_on_full_ranking(ml100k_prepared: Path) -> None:
    data = load_sequences(ml100k_prepared)
    pop = fit(TrainConfig(baseline="pop"), data, progress=False)
    config = TrainConfig.model_validate({
        "epochs": 8, "lr": 0.003, "batch_size": 128, "threads": 2,
        "model": {"max_len": 50, "loss": "ce", "d_item": 32, "d_user": 16, "n_blocks": 1}})
    model = fit(config, data, progress=False)
    assert model.valid["full"]["ndcg@10"] > pop.valid["full"]["ndcg@10"]
    assert model.test["full"]["ndcg@10"] > pop.test["full"]["ndcg@10"]


def test_ray_train_two_workers_resumes_after_a_failure(
        small_prepared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    config = TrainConfig.model_validate({
        "epochs": 3, "batch_size": 16, "threads": 1,
        "model": {"max_len": 20, "d_item": 16, "d_user": 8, "n_blocks": 1}})
    heard: list[dict] = []
    try:
        result = fit_on_ray(config, small_prepared, workers=2, crash_once_at_epoch=1,
                            progress=True, on_epoch=heard.append)
    finally:
        ray.shutdown()
    # The driver heard every epoch as it finished, the refit's too, in order, and its
    # progress bars show both phases.
    assert heard == result.history + result.refit_history
    bars = capsys.readouterr().err
    assert "train sse-pt on 2 Ray workers" in bars and "refit sse-pt on 2 Ray workers" in bars
    # The group was restarted from the epoch-1 checkpoint (not from scratch, which would
    # record no resume) and finished all three epochs.
    assert result.resumes == [{"phase": "select", "epoch": 1, "branch": 0}]
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert 1 <= result.best_epoch <= 3
    # The weights that came back are the best validation epoch's, across the restart.
    best = max(h["epoch_valid_ndcg_10"] for h in result.history)
    assert result.valid["full"]["ndcg@10"] == pytest.approx(best)
    # The refit ran on the workers too, for the selected number of epochs, with its soup's
    # branches after the fork.
    assert [h["epoch"] for h in result.refit_history if "refit_loss" in h] == list(
        range(1, result.best_epoch + 1))
    fork, branches = soup_plan(config, result.best_epoch)
    assert result.refit_epochs == fork + branches * (result.best_epoch - fork)
    assert result.soup_branches == branches
    crashed = list((Path(__import__("os").environ["MOVIEREC_HOME"]) / "ray_results")
                   .glob("*.crashed"))
    assert len(crashed) == 1


def test_tune_saves_a_trainable_best_config_and_logs_trials(small_prepared: Path,
                                                            tmp_path: Path) -> None:
    import json

    import mlflow
    import ray

    from movierec.cli.main import main

    base = tmp_path / "base.json"
    base.write_text(json.dumps({"batch_size": 16, "threads": 1, "epochs": 50,
                                "model": {"max_len": 20}}))
    out = tmp_path / "best.json"
    try:
        assert main(["tune", "--data", str(small_prepared), "--samples", "2",
                     "--max-epochs", "2", "--grace-epochs", "1", "--concurrent", "2",
                     "--config", str(base), "--out", str(out)]) == 0
    finally:
        ray.shutdown()
    best = TrainConfig.from_file(out)
    # The base's own settings survive; trials ran 2 epochs without refit, the final run won't.
    assert best.epochs == 50 and best.refit and best.model.max_len == 20
    assert best.model.d_item in (32, 50, 64) and best.model.d_item == best.model.d_user
    scores = json.loads((tmp_path / "best.trials.json").read_text())
    assert len(scores["trials"]) == 2 and scores["epoch_valid_ndcg_10"] == max(
        t["epoch_valid_ndcg_10"] for t in scores["trials"])
    parent = mlflow.search_runs(filter_string="tags.kind = 'tune'", output_format="list")[0]
    trials = mlflow.search_runs(filter_string="tags.kind = 'trial' and "
                                f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                output_format="list")
    assert len(trials) == 2 and scores["failed_trials"] == 0
    for trial in trials:
        # The whole config each trial trained, tagged like a train run.
        params, tags = trial.data.params, trial.data.tags
        assert (params["model.max_len"], params["epochs"], params["refit"]) == ("20", "2", "False")
        assert (tags["status"], trial.info.status) == ("finished", "FINISHED")
        assert tags["git_commit"] and tags["data_version"] == parent.data.tags["data_version"]
        steps = mlflow.MlflowClient().get_metric_history(trial.info.run_id,
                                                         "epoch_valid_ndcg_10")
        assert 1 <= len(steps) <= 2
