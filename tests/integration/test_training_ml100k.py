"""Real training on MovieLens 100K and on Ray Train (slow, but part of make test)."""

from pathlib import Path

import pytest

from movierec.data.dataset import load_sequences
from movierec.training.config import TrainConfig
from movierec.training.loop import fit
from movierec.training.ray_runner import fit_on_ray

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


def test_ray_train_two_workers_resumes_after_a_failure(small_prepared: Path) -> None:
    import ray

    config = TrainConfig.model_validate({
        "epochs": 3, "batch_size": 16, "threads": 1,
        "model": {"max_len": 20, "d_item": 16, "d_user": 8, "n_blocks": 1}})
    try:
        result = fit_on_ray(config, small_prepared, workers=2, crash_once_at_epoch=1)
    finally:
        ray.shutdown()
    # The group was restarted from the epoch-1 checkpoint and finished all three epochs.
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert 1 <= result.best_epoch <= 3
    # The weights that came back are the best validation epoch's, across the restart.
    best = max(h["epoch_valid_ndcg_10"] for h in result.history)
    assert result.valid["full"]["ndcg@10"] == pytest.approx(best)
    crashed = list((Path(__import__("os").environ["MOVIEREC_HOME"]) / "ray_results")
                   .glob("*.crashed"))
    assert len(crashed) == 1
