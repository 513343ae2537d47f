import json
from pathlib import Path

import numpy as np
import pytest

from movierec.cli.main import main
from movierec.data.dataset import load_sequences
from movierec.evaluation.metrics import ndcg_at_k
from movierec.evaluation.protocols import rank_users
from movierec.training.config import TrainConfig
from movierec.training.loop import LocalHooks, fit, make_scorer

SMALL = {"epochs": 6, "batch_size": 32, "lr": 0.005, "threads": 1,
         "model": {"max_len": 20, "d_item": 16, "d_user": 8, "n_blocks": 1}}


def test_config_rejects_unknown_keys_at_every_level() -> None:
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.model_validate({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="hidden_units"):
        TrainConfig.model_validate({"model": {"hidden_units": 50}})


def test_two_runs_with_the_same_seed_are_identical(small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({**SMALL, "epochs": 3})
    a, b = fit(config, data, progress=False), fit(config, data, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.test == b.test
    other = fit(config.model_copy(update={"seed": 1}), data, progress=False)
    assert [h["loss"] for h in other.history] != [h["loss"] for h in a.history]


def test_early_stopping_restores_the_best_validation_epoch(small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({**SMALL, "epochs": 12, "patience": 2, "lr": 0.02})
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


def test_in_process_resume_continues_from_the_checkpoint(small_prepared: Path,
                                                         tmp_path: Path) -> None:
    data = load_sequences(small_prepared)
    full = fit(TrainConfig.model_validate({**SMALL, "epochs": 4}), data, progress=False)
    fit(TrainConfig.model_validate({**SMALL, "epochs": 2}), data,
        LocalHooks(tmp_path, resume=False), progress=False)
    resumed = fit(TrainConfig.model_validate({**SMALL, "epochs": 4}), data,
                  LocalHooks(tmp_path, resume=True), progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in full.history])


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
    history = mlflow.MlflowClient().get_metric_history(summary["run_id"], "loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"])}
    assert {"config.json", "dataset.json", "model", "id_mapping"} <= artifacts


def test_evaluate_compares_runs_and_reports_cis(small_prepared: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    for model in ("pop", "sasrec"):
        assert main(["train", "--data", str(small_prepared), "--model", model, "--epochs", "1",
                     "--quiet", "--metrics-out", str(tmp_path / f"{model}.json")]) == 0
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


def test_fast_ce_objective_equals_the_full_catalogue_reference() -> None:
    import torch

    from movierec.models import ModelConfig, build_model, ce_loss
    from movierec.training.loop import TrainingObjective

    torch.manual_seed(0)
    model = build_model(ModelConfig(max_len=6, d_item=8, d_user=4, loss="ce", dropout=0.0,
                                    ce_mask_seen="none"), n_users=5, n_items=20).eval()
    users = torch.tensor([1, 2, 3])
    seqs = torch.tensor([[0, 0, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 7, 8]])
    pos = torch.tensor([[0, 0, 4, 5, 6, 9], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 8, 10]])
    fast = TrainingObjective(model, "ce")({"users": users, "seqs": seqs, "pos": pos})
    # The reference scores [e_item ; e_user] over the whole catalogue; the user term is the
    # same for every candidate of a row, so it must cancel in the softmax.
    reference = ce_loss(model.training_logits_all(users, seqs), pos, pos != 0)
    torch.testing.assert_close(fast, reference)


@pytest.mark.parametrize("mode", ["window", "prefix"])
def test_ce_objective_leaves_seen_items_out_of_the_softmax(mode: str) -> None:
    import torch

    from movierec.models import ModelConfig, build_model, ce_loss
    from movierec.training.loop import TrainingObjective

    torch.manual_seed(0)
    model = build_model(ModelConfig(max_len=4, d_item=8, d_user=4, loss="ce", dropout=0.0,
                                    ce_mask_seen=mode), n_users=3, n_items=10).eval()
    users = torch.tensor([1, 2])
    seqs = torch.tensor([[0, 3, 4, 5], [1, 2, 3, 4]])
    pos = torch.tensor([[0, 4, 5, 6], [2, 3, 4, 9]])
    # The reference: the full catalogue with the seen items set to -inf by hand.
    logits = model.training_logits_all(users, seqs).clone()
    window = {0: {3, 4, 5, 6}, 1: {1, 2, 3, 4, 9}}
    for b in range(2):
        for t in range(4):
            if pos[b, t] == 0:
                continue
            seen = (window[b] if mode == "window"
                    else {int(i) for i in seqs[b, : t + 1] if i != 0})
            for item in seen - {int(pos[b, t])}:
                logits[b, t, item] = float("-inf")
    expected = ce_loss(logits, pos, pos != 0)
    got = TrainingObjective(model, "ce")({"users": users, "seqs": seqs, "pos": pos})
    torch.testing.assert_close(got, expected)
    unmasked = ce_loss(model.training_logits_all(users, seqs), pos, pos != 0)
    assert got < unmasked  # masking removes competitors, so the loss must drop
    got.backward()  # the in-place mask must leave a valid graph
    assert model.item_embedding.weight.grad is not None
