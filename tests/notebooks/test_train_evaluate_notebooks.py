"""Run notebooks/02_train.ipynb then 03_evaluate.ipynb with papermill on MovieLens 100K.

Small settings (one block, width 48, 6 epochs, 2 Ray workers) keep both notebooks near a
minute on a busy 2-core machine; they are still enough for SSE-PT to beat popularity.
"""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest

from tests.notebooks.executed import NOTEBOOKS, count_images

# Batches of 32 give each of the 2 workers ~15 steps per epoch; with batches of 64 even 8
# epochs left SSE-PT only ~15% above popularity on test, 6 epochs of 32 give ~55%.
SMALL = {"epochs": 6, "batch_size": 32, "lr": 0.003, "threads": 1,
         "model": {"max_len": 50, "d_item": 32, "d_user": 16, "n_blocks": 1}}

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_train_then_evaluate_notebooks(tmp_path: Path, notebook_home: Path) -> None:
    home = notebook_home

    papermill.execute_notebook(
        str(NOTEBOOKS / "02_train.ipynb"), str(tmp_path / "02_train.out.ipynb"),
        kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters={"DATASET": "ml-100k", "MODEL": "sse-pt", "LOSS": "ce", "WORKERS": 2,
                    "SEED": 0, "CONFIG_OVERRIDES": SMALL,
                    "RESULTS_PATH": "02_train_results.json"})
    train = json.loads((tmp_path / "02_train_results.json").read_text())
    baseline, model = train["runs"]["baseline"], train["runs"]["model"]
    assert baseline["model"] == "pop"
    assert model["model"] == "sse-pt-ce"
    assert train["run_ids"] == [baseline["run_id"], model["run_id"]]
    assert Path(train["data_dir"]) == home / "data" / "ml-100k"
    assert train["config"]["epochs"] == SMALL["epochs"]
    assert train["config"]["model"]["d_item"] == SMALL["model"]["d_item"]
    assert 1 <= model["best_epoch"] <= SMALL["epochs"]
    model_ndcg = model["test"]["full"]["ndcg@10"]
    pop_ndcg = baseline["test"]["full"]["ndcg@10"]
    assert model_ndcg > pop_ndcg, f"SSE-PT {model_ndcg:.4f} <= popularity {pop_ndcg:.4f}"
    assert count_images(tmp_path / "02_train.out.ipynb") == 1, "expected the learning curves"

    # 03 finds the runs through 02's results file in the same folder (its default).
    papermill.execute_notebook(
        str(NOTEBOOKS / "03_evaluate.ipynb"), str(tmp_path / "03_evaluate.out.ipynb"),
        kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters={"SPLIT": "test", "RESULTS_PATH": "03_evaluate_results.json"})
    evaluation = json.loads((tmp_path / "03_evaluate_results.json").read_text())
    assert evaluation["split"] == "test"
    assert list(evaluation["runs"]) == train["run_ids"]
    for run_id, role in zip(train["run_ids"], ("baseline", "model"), strict=True):
        run = evaluation["runs"][run_id]
        assert run["users"] == 943
        for proto in ("sampled", "full"):
            mean = run[proto]["ndcg@10"]
            low, high = run[proto]["ndcg@10_ci95"]
            assert low < mean < high, f"{run_id} {proto}: CI [{low}, {high}] misses {mean}"
        # Re-ranking the reloaded weights reproduces what training logged.
        logged = train["runs"][role]["test"]["full"]["ndcg@10"]
        assert run["full"]["ndcg@10"] == pytest.approx(logged, abs=1e-6)
    assert count_images(tmp_path / "03_evaluate.out.ipynb") == 2, "expected metric bars and slices"
