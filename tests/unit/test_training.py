import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from movierec.cli.main import main
from movierec.data.dataset import load_sequences
from movierec.evaluation.metrics import hit_at_k, ndcg_at_k, reciprocal_rank
from movierec.evaluation.protocols import rank_users
from movierec.training.config import TrainConfig
from movierec.training.hooks import LocalHooks
from movierec.training.loop import _progress_fields, fit, make_scorer, training_sequences
from movierec.training.tracking import tracked_run

SMALL = {"epochs": 6, "batch_size": 32, "lr": 0.005, "threads": 1,
         "model": {"max_len": 20, "d_item": 16, "d_user": 8, "n_blocks": 1}}


def test_config_rejects_unknown_keys_at_every_level() -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.model_validate({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="hidden_units"):
        TrainConfig.model_validate({"model": {"hidden_units": 50}})


def test_train_flags_override_the_config_file_and_only_when_given(tmp_path: Path) -> None:
    import argparse

    from movierec.cli.train import config_from_args

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"baseline": "pop", "model": {"kind": "sasrec", "loss": "bce"}}))
    flags = {"config": config, "model": None, "loss": None, "epochs": None, "seed": None,
             "refit": None}
    kept = config_from_args(argparse.Namespace(**flags))
    assert (kept.baseline, kept.model.kind, kept.model.loss) == ("pop", "sasrec", "bce")
    chosen = config_from_args(argparse.Namespace(**{**flags, "model": "sse-pt", "loss": "ce"}))
    assert (chosen.baseline, chosen.model.kind, chosen.model.loss) == ("none", "sse-pt", "ce")
    default = config_from_args(argparse.Namespace(**{**flags, "config": None}))
    assert (default.baseline, default.model.kind) == ("none", "sse-pt")


def test_two_runs_with_the_same_seed_are_identical(small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({**SMALL, "epochs": 3})
    a, b = fit(config, data, progress=False), fit(config, data, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.test == b.test
    other = fit(config.model_copy(update={"seed": 1}), data, progress=False)
    assert [h["loss"] for h in other.history] != [h["loss"] for h in a.history]


def test_a_run_without_final_test_never_ranks_the_test_items(
        small_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.training import loop

    ranked_splits: list[str] = []
    rank_split = loop.rank_split

    def recording(*args: object) -> object:
        ranked_splits.append(str(args[-1]))
        return rank_split(*args)

    monkeypatch.setattr(loop, "rank_split", recording)
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({**SMALL, "epochs": 1})
    trial = fit(config, data, progress=False, final_test=False)
    assert trial.test == {} and trial.test_ranks is None
    assert trial.valid["full"]["ndcg@10"] > 0 and ranked_splits == ["valid"]
    tested = fit(config, data, progress=False)
    assert ranked_splits == ["valid", "valid", "test"] and tested.test["full"]["ndcg@10"] > 0
    popularity = fit(TrainConfig(baseline="pop"), data, progress=False, final_test=False)
    assert popularity.test == {} and popularity.test_ranks is None
    assert ranked_splits[3:] == ["valid"]


def test_early_stopping_restores_the_best_validation_epoch(small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({**SMALL, "epochs": 12, "patience": 2, "lr": 0.02,
                                         "refit": False})
    result = fit(config, data, progress=False)
    scores = [h["epoch_valid_ndcg_10"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores)) + 1
    assert len(scores) <= 12
    if len(scores) < 12:  # stopped early: exactly `patience` evaluations without a gain
        assert len(scores) - result.best_epoch == config.patience
    ranked = rank_users(make_scorer(result.model, __import__("torch").device("cpu")), data,
                        "valid", config.model.max_len, sampled=False)
    assert ndcg_at_k(ranked.full_ranks, 10).mean() == pytest.approx(max(scores))
    assert result.valid["full"]["ndcg@10"] == pytest.approx(max(scores))
    # The same epoch's hit rate and MRR come from the same ranks.
    best = result.history[result.best_epoch - 1]
    assert best["epoch_valid_hr_10"] == pytest.approx(hit_at_k(ranked.full_ranks, 10).mean())
    assert best["epoch_valid_mrr"] == pytest.approx(reciprocal_rank(ranked.full_ranks).mean())


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(
        small_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scripted validation curve: the best epoch is neither the first nor the last."""
    import torch

    from movierec.training import loop

    curve = iter([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])  # best at epoch 2, then 2 without a gain
    weights: list[dict[str, torch.Tensor]] = []  # the weights each validation scored

    def scripted(scorer: object, data: object, split: str, max_len: int,
                 batch_size: int) -> dict[str, np.ndarray]:
        weights.append({k: v.clone() for k, v in scored_model.state_dict().items()})
        value = next(curve)
        return {"ndcg@10": np.full(3, value), "hr@10": np.full(3, value),
                "mrr": np.full(3, value)}

    real_scorer = loop.make_scorer

    def capture(model: torch.nn.Module, device: torch.device) -> object:
        nonlocal scored_model
        scored_model = model
        return real_scorer(model, device)

    scored_model: torch.nn.Module | None = None
    monkeypatch.setattr(loop, "full_ranking_per_user", scripted)
    monkeypatch.setattr(loop, "make_scorer", capture)
    config = TrainConfig.model_validate({**SMALL, "epochs": 6, "patience": 2, "refit": False})
    result = fit(config, load_sequences(small_prepared), progress=False, final_test=False)
    scores = [h["epoch_valid_ndcg_10"] for h in result.history]
    assert scores == pytest.approx([0.1, 0.3, 0.2, 0.25])
    assert result.best_epoch == 2  # stopped after epoch 4: two evaluations without a gain
    restored = result.model.state_dict()
    assert all(torch.equal(restored[k], weights[1][k]) for k in restored)  # epoch 2's
    assert not all(torch.equal(restored[k], weights[3][k]) for k in restored)  # not the last


def test_in_process_resume_continues_from_the_checkpoint(small_prepared: Path,
                                                         tmp_path: Path) -> None:
    data = load_sequences(small_prepared)
    # Without refit: a finished 2-epoch selection is extended to 4 epochs.
    small = {**SMALL, "refit": False}
    full = fit(TrainConfig.model_validate({**small, "epochs": 4}), data, progress=False)
    fit(TrainConfig.model_validate({**small, "epochs": 2}), data,
        LocalHooks(tmp_path, resume=False), progress=False)
    import torch

    before = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["loop"]["seconds"]
    resumed = fit(TrainConfig.model_validate({**small, "epochs": 4}), data,
                  LocalHooks(tmp_path, resume=True), progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    # Its times go on from the crashed run's: they cover all four epochs.
    assert 0 < before < resumed.seconds and resumed.seconds_to_best <= resumed.seconds
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in full.history])
    assert resumed.resumes == [{"phase": "select", "epoch": 2, "branch": 0}]
    assert full.resumes == []
    # Other settings than epochs, threads, device or eval_batch_size are not the same run.
    other = TrainConfig.model_validate({**small, "epochs": 4, "patience": 3,
                                        "model": {**small.get("model", {}), "dropout": 0.1}})
    with pytest.raises(ValueError, match=r"\(model\.dropout: 0\.3 -> 0\.1; patience: 10 -> 3\)"):
        fit(other, data, LocalHooks(tmp_path, resume=True), progress=False)
    # Nor is the same config on other data (a folder prepared again, say).
    other_data = replace(data, card={**data.card, "data_version": "0123456789abcdef"})
    with pytest.raises(ValueError, match=r"trained on data_version .* not 0123456789abcdef"):
        fit(TrainConfig.model_validate({**small, "epochs": 4}), other_data,
            LocalHooks(tmp_path, resume=True), progress=False)


def test_progress_bar_shows_the_last_evaluated_and_the_best_validation_score() -> None:
    # Evaluated every second epoch: epoch 3 shows epoch 2's score beside the best.
    state = {"history": [{"epoch": 1, "loss": 2.0},
                         {"epoch": 2, "loss": 1.5, "epoch_valid_ndcg_10": 0.25},
                         {"epoch": 3, "loss": 1.2}],
             "best_score": 0.25, "best_epoch": 2}
    assert _progress_fields(state, False, 0, 1) == {"valid_ndcg10": "0.2500",
                                                    "valid_best": "0.2500@2"}
    assert _progress_fields({**state, "history": state["history"][:1]}, False, 0, 1) == {}
    assert _progress_fields(state, True, 1, 3) == {"branch": "2/3"}
    assert _progress_fields(state, True, 0, 1) == {"valid_best": "0.2500@2"}


def test_refit_retrains_on_train_and_valid_for_the_selected_epochs(
        small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({**SMALL, "epochs": 5, "soup_branches": 1})
    selected = fit(config.model_copy(update={"refit": False}), data, progress=False)
    refit = fit(config, data, progress=False)
    # Selection is untouched: same epochs, same best epoch, same validation metrics.
    assert [h["loss"] for h in refit.history] == [h["loss"] for h in selected.history]
    assert refit.best_epoch == selected.best_epoch and refit.valid == selected.valid
    # The refit ran exactly the selected number of epochs, without validation.
    assert [h["epoch"] for h in refit.refit_history] == list(range(1, refit.best_epoch + 1))
    assert all("epoch_valid_ndcg_10" not in h for h in refit.refit_history)
    assert refit.refit_epochs == refit.best_epoch and selected.refit_epochs == 0
    assert refit.soup_branches == 1 and selected.soup_branches == 0
    # A different model, so a different test score.
    a, b = selected.model.state_dict(), refit.model.state_dict()
    assert any(not __import__("torch").equal(a[k], b[k]) for k in a)
    assert refit.test != selected.test
    # The per-user ranks returned are those of the tested (refit) model, one per test user.
    for result in (selected, refit):
        for protocol, ranks in (("full", result.test_ranks.full_ranks),
                                ("sampled", result.test_ranks.sampled_ranks)):
            assert ndcg_at_k(ranks, 10).mean() == pytest.approx(
                result.test[protocol]["ndcg@10"])
    assert not np.array_equal(refit.test_ranks.full_ranks, selected.test_ranks.full_ranks)


def test_training_sequences_and_times_of_both_phases(small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    sequences, times = training_sequences(data, refit=True)
    selection, selection_times = training_sequences(data, refit=False)
    assert len(sequences) == len(times) == data.n_users + 1
    for user in range(1, data.n_users + 1):
        expected = data.train[user] if not data.valid_item[user] else np.append(
            data.train[user], data.valid_item[user])
        assert sequences[user].tolist() == expected.tolist()
        assert data.test_item[user] == 0 or sequences[user][-1] != data.test_item[user]
        assert selection[user].tolist() == data.train[user].tolist()
        # Timestamps follow the items and never decrease along a history.
        assert len(times[user]) == len(sequences[user])
        assert len(selection_times[user]) == len(selection[user])
        assert (np.diff(times[user]) >= 0).all()
    with pytest.raises(ValueError, match="split must be"):
        data.history_times(1, "train")
    # Data without timestamps (built by hand) trains in the order given.
    assert training_sequences(replace(data, train_times=None), refit=True)[1] is None


def refit_losses(history: list[dict]) -> list[tuple[int, str, float]]:
    """(epoch, key, loss) of every refit record, in order (times left out)."""
    return [(h["epoch"], k, v) for h in history for k, v in h.items() if "loss" in k]


class _BranchEnds(LocalHooks):
    """Keeps the weights at the end of each soup branch (the last refit epoch's reports)."""

    def __init__(self, last_epoch: int) -> None:
        super().__init__()
        self.last_epoch, self.ends = last_epoch, []

    def report(self, record: dict, state: dict) -> None:
        if record["epoch"] == self.last_epoch and any("refit" in k for k in record):
            self.ends.append({k: v.clone() for k, v in state["model"].items()})


def test_refit_soup_forks_branches_and_averages_their_weights(small_prepared: Path) -> None:
    import torch

    data = load_sequences(small_prepared)
    base = {**SMALL, "epochs": 4, "patience": 4}
    plain = fit(TrainConfig.model_validate({**base, "soup_branches": 1}), data, progress=False)
    epochs = plain.best_epoch
    assert epochs >= 2, "the soup needs a refit of two epochs or more"
    config = TrainConfig.model_validate({**base, "soup_branches": 3, "soup_fork": 0.5})
    hooks = _BranchEnds(epochs)
    soup = fit(config, data, hooks, progress=False)
    fork = round(0.5 * epochs)
    # The trunk and branch 0 are the plain refit's epochs; branches 1 and 2 restart at the
    # fork, each with its own key, so they are logged apart.
    assert soup.refit_epochs == fork + 3 * (epochs - fork) and soup.soup_branches == 3
    by_key = {}
    for epoch, key, loss in refit_losses(soup.refit_history):
        by_key.setdefault(key, []).append((epoch, loss))
    assert set(by_key) == {"refit_loss", "refit_loss_1", "refit_loss_2"}
    assert by_key["refit_loss"] == [(e, h["refit_loss"]) for e, h in
                                    zip(range(1, epochs + 1), plain.refit_history, strict=True)]
    for key in ("refit_loss_1", "refit_loss_2"):
        assert [e for e, _ in by_key[key]] == list(range(fork + 1, epochs + 1))
        assert by_key[key][0][1] != by_key["refit_loss"][fork][1]  # other batches, dropout
    # The served weights are the mean of the three branches' final weights.
    assert len(hooks.ends) == 3
    for name, value in soup.model.state_dict().items():
        expected = sum(end[name] for end in hooks.ends) / 3
        assert torch.allclose(value, expected, atol=1e-6), name
    assert soup.valid == plain.valid and soup.test != plain.test


class _CrashInRefit(LocalHooks):
    """Checkpoints like LocalHooks, then fails once after the first record with ``key``."""

    def __init__(self, folder: Path, key: str) -> None:
        super().__init__(folder)
        self.key, self.crashed = key, False

    def report(self, record: dict, state: dict) -> None:
        super().report(record, state)
        if self.key in record and not self.crashed:
            self.crashed = True
            raise RuntimeError("injected failure in the refit")


@pytest.mark.parametrize("key", ["refit_loss", "refit_loss_2"])
def test_a_crash_in_the_refit_resumes_in_the_refit(small_prepared: Path, tmp_path: Path,
                                                    key: str) -> None:
    """Crashes in the trunk and in the last soup branch both resume where they were."""
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({**SMALL, "epochs": 4, "patience": 4})
    uninterrupted = fit(config, data, progress=False)
    assert uninterrupted.best_epoch >= 2, "needs a soup: a refit of two epochs or more"
    with pytest.raises(RuntimeError, match="injected"):
        fit(config, data, _CrashInRefit(tmp_path, key), progress=False)
    resumed = fit(config, data, LocalHooks(tmp_path, resume=True), progress=False)
    assert [r["phase"] for r in resumed.resumes] == ["refit"] and not uninterrupted.resumes
    assert resumed.resumes[0]["branch"] == (2 if key == "refit_loss_2" else 0)
    assert [h["epoch"] for h in resumed.history] == [h["epoch"] for h in
                                                     uninterrupted.history]
    again, once = refit_losses(resumed.refit_history), refit_losses(uninterrupted.refit_history)
    assert [r[:2] for r in again] == [r[:2] for r in once]
    assert [r[2] for r in again] == pytest.approx([r[2] for r in once])
    assert resumed.valid == uninterrupted.valid
    for protocol in ("sampled", "full"):
        assert resumed.test[protocol] == pytest.approx(uninterrupted.test[protocol])


def test_cli_train_contract_and_mlflow_record(small_prepared: Path, tmp_path: Path) -> None:
    import mlflow

    config = tmp_path / "config.json"
    config.write_text(json.dumps({k: v for k, v in SMALL.items() if k != "epochs"}))
    out = tmp_path / "metrics.json"
    assert main(["train", "--data", str(small_prepared), "--model", "sse-pt", "--loss", "ce",
                 "--epochs", "2", "--seed", "3", "--workers", "0", "--config", str(config),
                 "--metrics-out", str(out), "--quiet"]) == 0
    summary = json.loads(out.read_text())
    assert set(summary) >= {"run_id", "best_epoch", "valid", "test"}
    for split in ("valid", "test"):
        assert set(summary[split]) == {"sampled", "full"}
        assert {"ndcg@10", "hr@10", "mrr", "ndcg@20", "hr@20"} <= set(summary[split]["full"])
    run = mlflow.get_run(summary["run_id"])
    assert run.data.params["model.loss"] == "ce" and run.data.params["seed"] == "3"
    assert run.data.tags["data_version"] == json.loads(
        (small_prepared / "dataset.json").read_text())["data_version"]
    assert run.data.tags["git_commit"]
    assert "test_full_ndcg_10" in run.data.metrics
    for metric in ("loss", "epoch_valid_ndcg_10", "epoch_valid_hr_10", "epoch_valid_mrr"):
        history = mlflow.MlflowClient().get_metric_history(summary["run_id"], metric)
        assert [m.step for m in history] == [1, 2], metric
    assert summary["resumes"] == [] and run.data.metrics["resumes"] == 0
    # Refit by default: its epochs are logged apart from the selection's (and with a
    # soup, each branch after the first under its own key).
    assert summary["refit_epochs"] >= summary["best_epoch"] >= 1
    refit = mlflow.MlflowClient().get_metric_history(summary["run_id"], "refit_loss")
    assert [m.step for m in refit] == list(range(1, summary["best_epoch"] + 1))
    assert main(["train", "--data", str(small_prepared), "--epochs", "1", "--no-refit",
                 "--config", str(config), "--metrics-out", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["refit_epochs"] == 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"])}
    assert {"config.json", "dataset.json", "model", "id_mapping"} <= artifacts


def test_training_is_tracked_while_it_runs_and_a_failed_run_ends_failed(
        small_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from movierec.training import runner

    seen: list[tuple[str, int, float | None]] = []

    class Watching(runner.EpochLogger):
        def __call__(self, record: dict) -> None:
            super().__call__(record)
            run = mlflow.MlflowClient().get_run(self.run_id)
            seen.append((run.info.status, record["epoch"], run.data.metrics.get("loss")))
            if "refit_loss" in record:
                raise RuntimeError("the machine went away")

    monkeypatch.setattr(runner, "EpochLogger", Watching)
    config = TrainConfig.model_validate({**SMALL, "epochs": 2, "patience": 5})
    with pytest.raises(RuntimeError, match="went away"):
        runner.train_and_track(config, small_prepared, progress=False)
    # Each selection epoch was in MLflow, in a running run, as soon as it ended.
    client = mlflow.MlflowClient()
    run = client.search_runs([mlflow.get_experiment_by_name("movierec").experiment_id])[0]
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert [s[:2] for s in seen] == [("RUNNING", 1), ("RUNNING", 2), ("RUNNING", 1)]
    assert [s[2] for s in seen[:2]] == losses
    # The failure ended the run as FAILED, so it is no finished training run to compare.
    assert run.info.status == "FAILED"
    from movierec.training.tracking import search_runs
    assert run.info.run_id not in search_runs()


def test_epoch_logger_survives_a_tracking_outage_and_catches_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from movierec.training.tracking import EpochLogger, configure

    configure()
    with mlflow.start_run() as run:
        logger = EpochLogger(run.info.run_id)
        real, calls = logger._client.log_batch, []

        def flaky(*args: object, **kwargs: object) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise ConnectionError("tracking server down")
            real(*args, **kwargs)

        monkeypatch.setattr(logger._client, "log_batch", flaky)
        history = [{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0}]
        with pytest.warns(RuntimeWarning, match="tracking server down"):
            for record in history:
                logger(record)  # the first fails: training goes on, not logging live
        assert len(calls) == 1  # no more waiting on a server that did not answer
        logger.flush(history)  # logs both epochs
    steps = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in steps) == [(1, 3.0), (2, 2.0)]
    assert len(calls) == 3


def test_evaluate_compares_runs_and_reports_cis(small_prepared: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # SASRec ranks against its own sampled negatives (eval_seed 7), and the report must too.
    (tmp_path / "pop-config.json").write_text("{}")
    (tmp_path / "sasrec-config.json").write_text(json.dumps({"eval_seed": 7}))
    for model in ("pop", "sasrec"):
        assert main(["train", "--data", str(small_prepared), "--model", model, "--epochs", "1",
                     "--quiet", "--metrics-out", str(tmp_path / f"{model}.json"),
                     "--config", str(tmp_path / f"{model}-config.json")]) == 0
    # The newest run is a tune parent (no model, no weights): the default comparison of the
    # latest runs must skip it.
    with tracked_run("tune", {"samples": 1}, {"kind": "tune"}):
        pass
    capsys.readouterr()
    assert main(["evaluate", "--data", str(small_prepared), "--out", str(tmp_path / "ev")]) == 0
    table = (tmp_path / "ev" / "comparison.md").read_text()
    assert "| pop (" in table and "| sasrec-ce (" in table
    run_id = json.loads((tmp_path / "pop.json").read_text())["run_id"]
    report = json.loads((tmp_path / "ev" / f"report-{run_id}.json").read_text())
    lo, hi = report["ci95"]["full"]["ndcg@10"]
    assert lo <= report["metrics"]["full"]["ndcg@10"] <= hi
    assert report["metrics"]["full"]["ndcg@10"] == pytest.approx(
        json.loads((tmp_path / "pop.json").read_text())["test"]["full"]["ndcg@10"])
    assert "history_length" in report["slices"] and "gender" in report["slices"]
    assert "warning" not in report
    sasrec_logged = json.loads((tmp_path / "sasrec.json").read_text())
    sasrec_report = json.loads(
        (tmp_path / "ev" / f"report-{sasrec_logged['run_id']}.json").read_text())
    for protocol in ("sampled", "full"):
        assert sasrec_report["metrics"][protocol]["ndcg@10"] == pytest.approx(
            sasrec_logged["test"][protocol]["ndcg@10"])
    # On validation, the refit SASRec's report says its figures are optimistic.
    sasrec = json.loads((tmp_path / "sasrec.json").read_text())["run_id"]
    assert main(["evaluate", sasrec, run_id, "--data", str(small_prepared), "--split", "valid",
                 "--out", str(tmp_path / "ev-valid")]) == 0
    assert "refit on train + valid" in capsys.readouterr().out
    reports = {r: json.loads((tmp_path / "ev-valid" / f"report-{r}.json").read_text())
               for r in (sasrec, run_id)}
    assert "warning" in reports[sasrec] and "warning" not in reports[run_id]


def test_learning_curves_show_the_refit_and_its_soup_branches() -> None:
    from movierec.evaluation.plots import plot_learning_curves, run_history
    from movierec.training.tracking import EpochLogger, configure

    mlflow = configure()
    history = [{"epoch": 1, "loss": 5.0, "epoch_valid_ndcg_10": 0.1},
               {"epoch": 2, "loss": 4.0, "epoch_valid_ndcg_10": 0.2},
               {"epoch": 1, "refit_loss": 5.1}, {"epoch": 2, "refit_loss": 4.2},
               {"epoch": 2, "refit_loss_1": 4.3}, {"epoch": 2, "refit_loss_2": 4.4}]
    with mlflow.start_run() as run:
        EpochLogger(run.info.run_id).flush(history)
    read = run_history(run.info.run_id)
    assert read == [{"epoch": 1, "loss": 5.0, "epoch_valid_ndcg_10": 0.1, "refit_loss": 5.1},
                    {"epoch": 2, "loss": 4.0, "epoch_valid_ndcg_10": 0.2, "refit_loss": 4.2,
                     "refit_loss_1": 4.3, "refit_loss_2": 4.4}]
    loss_ax, _ = plot_learning_curves({"sse-pt": read}).axes
    styles = sorted(line.get_linestyle() for line in loss_ax.get_lines())
    assert styles == ["-", "--", ":", ":"]  # selection, refit, two branches
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["sse-pt",
                                                                        "sse-pt refit"]


def test_tie_shuffling_trains_on_the_datas_timestamps(small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    # The synthetic data has no ties: make every three consecutive items share a second.
    data = replace(data, train_times=[np.arange(len(t)) // 3 for t in data.train],
                   valid_time=np.array([len(t) // 3 for t in data.train]))
    base = {**SMALL, "epochs": 2, "refit": False}
    plain = fit(TrainConfig.model_validate(base), data, progress=False)
    shuffled = fit(TrainConfig.model_validate({**base, "model": {**SMALL["model"],
                                                                 "shuffle_ties": True}}),
                   data, progress=False)
    again = fit(TrainConfig.model_validate({**base, "model": {**SMALL["model"],
                                                              "shuffle_ties": True}}),
                data, progress=False)
    assert [h["loss"] for h in shuffled.history] != [h["loss"] for h in plain.history]
    assert [h["loss"] for h in shuffled.history] == [h["loss"] for h in again.history]


class _Batches:
    """Stands in for TrainingBatches: ``n`` one-row batches per epoch."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def epoch(self, epoch: int) -> object:
        import torch

        return iter([{"x": torch.ones(1)} for _ in range(self.n)])


def _objective(value: float) -> object:
    import torch

    class Objective(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return (self.weight * batch["x"] * value).sum()

    return Objective()


def test_a_diverged_loss_stops_training_with_a_clear_error() -> None:
    import torch

    from movierec.training.loop import _train_epoch

    config = TrainConfig()
    cpu = torch.device("cpu")
    fine = _objective(2.0)
    record = _train_epoch(fine, torch.optim.SGD(fine.parameters(), lr=0.1), _Batches(3), 1,
                          LocalHooks(), cpu, config)  # type: ignore[arg-type]
    assert record["loss"] == pytest.approx((2.0 + 1.6 + 1.2) / 3)  # SGD: w 1, 0.8, 0.6
    broken = _objective(float("nan"))
    with pytest.raises(FloatingPointError, match=r"loss is nan in epoch 4: training diverged"):
        _train_epoch(broken, torch.optim.SGD(broken.parameters(), lr=0.1), _Batches(3), 4,
                     LocalHooks(), cpu, config)  # type: ignore[arg-type]


def test_fewer_batches_than_workers_is_an_error_not_a_stalled_sync() -> None:
    import torch

    from movierec.training.loop import _train_epoch

    class FourWorkers(LocalHooks):
        rank, world_size = 0, 4

    objective = _objective(1.0)
    with pytest.raises(ValueError, match="3 batches per epoch cannot feed 4 workers"):
        _train_epoch(objective, torch.optim.SGD(objective.parameters(), lr=0.1), _Batches(3),
                     1, FourWorkers(), torch.device("cpu"), TrainConfig())  # type: ignore[arg-type]


def test_an_option_of_the_other_runner_is_an_error_not_ignored(tmp_path: Path) -> None:
    from movierec.training.runner import run_training

    with pytest.raises(ValueError, match="checkpoint_dir and resume are for in-process"):
        run_training(TrainConfig(), tmp_path, workers=2, resume=True)
    with pytest.raises(ValueError, match="address, use_gpu: Ray Train options"):
        run_training(TrainConfig(), tmp_path, workers=0, use_gpu=True, address="ray://x")
    # On Ray a device of the config would be ignored: a conflict with use_gpu is an error.
    for device, gpu in (("cuda", False), ("cpu", True)):
        with pytest.raises(ValueError, match="ask for GPUs with --gpu"):
            run_training(TrainConfig(device=device), tmp_path, workers=1, use_gpu=gpu)


def test_train_flags_of_the_other_runner_are_user_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data", str(tmp_path), "--epochs", "1", "--quiet"]
    for extra, message in ((["--gpu"], "add --workers N >= 1"),
                           (["--workers", "2", "--checkpoint-dir", str(tmp_path)],
                            "--checkpoint-dir and --resume are for in-process"),
                           (["--resume"], "--resume needs --checkpoint-dir")):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
