"""Run notebooks/01_data.ipynb end to end with papermill on MovieLens 100K."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import papermill
import pytest

from tests.notebooks.executed import NOTEBOOKS, count_images

NOTEBOOK = NOTEBOOKS / "01_data.ipynb"


@pytest.mark.notebook
def test_data_notebook_records_ml100k_figures(tmp_path: Path, notebook_home: Path,
                                              ml100k_dir: Path) -> None:
    results_path = tmp_path / "results.json"
    output = tmp_path / "01_data.out.ipynb"

    papermill.execute_notebook(
        str(NOTEBOOK), str(output), kernel_name="python3", cwd=str(tmp_path),
        parameters={"DATASET": "ml-100k", "RESULTS_PATH": str(results_path)},
        progress_bar=False,
    )

    results = json.loads(results_path.read_text())
    assert results["users"] == 943
    assert results["items"] == 1682
    assert results["interactions"] == 100_000
    assert results["valid_users"] == 943
    assert results["test_users"] == 943
    assert results["train_interactions"] == 100_000 - 2 * 943
    assert len(results["data_version"]) == 16
    int(results["data_version"], 16)  # hexadecimal
    assert "MOVIEREC_DATASETS" in results["source_origin"]
    assert Path(results["folder"]) == tmp_path / "home" / "data" / "ml-100k"
    summary = results["summary"]
    assert summary["median_length"] == 65
    assert summary["top_genre"] == "Drama"
    # The Gini of interactions per item, by its other definition (mean absolute difference
    # over twice the mean), from the raw file.
    items = np.loadtxt(ml100k_dir / "ml-100k.inter", skiprows=1, usecols=1, dtype=np.int64)
    counts = np.unique(items, return_counts=True)[1].astype(np.float64)
    expected = np.abs(counts[:, None] - counts[None, :]).mean() / (2 * counts.mean())
    assert summary["item_gini"] == pytest.approx(expected, abs=5e-4)

    assert count_images(output) == 1, "plot_overview should render exactly one figure"
