"""Run project_IaC.ipynb and notebooks/99_teardown.ipynb with BACKEND="local" (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest

from movierec.reliability.security import scan_notebook_outputs
from tests.notebooks.executed import NOTEBOOKS

ROOT = NOTEBOOKS.parent
pytestmark = pytest.mark.notebook


def _run(notebook: Path, tmp_path: Path) -> dict:
    results_path = tmp_path / f"{notebook.stem}.json"
    papermill.execute_notebook(
        str(notebook), str(tmp_path / f"{notebook.stem}.out.ipynb"), kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False,
        parameters={"BACKEND": "local", "DRY_RUN": True, "RESULTS_PATH": str(results_path)})
    assert not scan_notebook_outputs(tmp_path / f"{notebook.stem}.out.ipynb")
    return json.loads(results_path.read_text())


def test_iac_notebook_validates_offline_and_plans(tmp_path: Path) -> None:
    results = _run(ROOT / "project_IaC.ipynb", tmp_path)
    assert results["backend"] == "local" and results["dry_run"] is True
    assert results["checks_passed"] >= 15  # terraform, every playbook, lint, checkov x3, scan
    assert results["checks_failed"] == 0, results["failed_checks"]
    assert [c.split(" -input")[0].rsplit(" ", 1)[-1] for c in results["terraform"]] == \
        ["init", "apply"]
    assert results["inventory_hosts"] == ["node1", "node2", "node3"]
    steps = " ".join(results["cluster"])
    order = [steps.index(s) for s in ("pre_k8s.yml", "kubespray", "cluster.yml",
                                      "post_k8s.yml")]
    assert order == sorted(order)


def test_teardown_notebook_plans_the_deletions(tmp_path: Path) -> None:
    results = _run(NOTEBOOKS / "99_teardown.ipynb", tmp_path)
    assert results["dry_run"] is True
    assert results["checks_passed"] == 1 and results["checks_failed"] == 0
    assert results["gpu_released"] == ["movierec-gpu-1", "movierec-gpu-lease"]
    assert any(" destroy " in c and "-auto-approve" in c for c in results["terraform"])
