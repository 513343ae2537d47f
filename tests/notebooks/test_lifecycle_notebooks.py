"""project_lifecycles.ipynb and notebooks/05_monitor.ipynb, executed by papermill.

Tiny settings (one-epoch first model, four-epoch candidate, short load test and canary)
keep the loop short; the point is that the notebook runs the whole gated path and records
its decisions, which the test checks against the registry's history.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from movierec.reliability.security import scan_notebook_outputs
from movierec.serving.loadtest import free_port
from tests.notebooks.executed import NOTEBOOKS, count_images

ROOT = NOTEBOOKS.parent
pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def test_lifecycle_and_monitor_notebooks(tmp_path: Path, notebook_home: Path) -> None:
    ports = {"production": free_port(), "staging": free_port(), "canary": free_port()}
    mlflow_port = free_port()
    common = {"MLFLOW_PORT": mlflow_port, "PORTS": ports}
    try:
        papermill.execute_notebook(
            str(ROOT / "project_lifecycles.ipynb"), str(tmp_path / "lifecycles.out.ipynb"),
            kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
            parameters={**common, "FIRST_EPOCHS": 1, "EPOCHS": 4, "WORKERS": 0,
                        "TRAFFIC_EVENTS": 300, "CANARY_EVENTS": 300, "LOAD_SECONDS": 2,
                        "KEEP_PLATFORM": True, "RESULTS_PATH": "lifecycles.json"})
        results = json.loads((tmp_path / "lifecycles.json").read_text())
        runs = results["runs"]
        assert runs[0]["trigger"] == "initial"
        assert runs[0]["decision"] == "promoted" and runs[0]["candidate_version"] == "1"
        assert runs[1]["trigger"] in ("drift", "feedback")
        assert runs[1]["decision"] in ("promoted", "rolled_back")
        assert runs[2]["candidate"] == "weak" and runs[2]["decision"] == "rolled_back"
        assert results["traffic"]["requests"] == 300 and results["traffic"]["errors"] == 0
        expected = runs[1]["candidate_version"] if runs[1]["decision"] == "promoted" else "1"
        assert results["production"] == expected
        assert results["status"]["production"] == expected  # the service agrees
        # The registry's alias history tells the same story as the recorded decisions.
        from movierec.registry.mlflow_registry import read_history

        production = [e["to"] for e in read_history("production")]
        promoted = [r["candidate_version"] for r in runs if r["decision"] == "promoted"]
        assert production == promoted and production[-1] == expected
        rolled_back = [r["candidate_version"] for r in runs if r["decision"] == "rolled_back"]
        assert not set(rolled_back) & set(production)
        # figures: two run reports (the weak run stops at the gate: one panel) and drift
        assert count_images(tmp_path / "lifecycles.out.ipynb") >= 4
        token = (notebook_home / "platform" / "admin_token").read_text().strip()
        assert not scan_notebook_outputs(tmp_path / "lifecycles.out.ipynb", [token])

        papermill.execute_notebook(
            str(NOTEBOOKS / "05_monitor.ipynb"), str(tmp_path / "monitor.out.ipynb"),
            kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
            parameters={**common, "STOP_PLATFORM": True, "RESULTS_PATH": "monitor.json"})
        monitor = json.loads((tmp_path / "monitor.json").read_text())
        assert monitor["version"] == expected
        assert monitor["verdict"] in ("ok", "drift") or monitor["verdict"].startswith("too")
        assert (Path(monitor["folder"]) / "drift.png").exists()
        assert count_images(tmp_path / "monitor.out.ipynb") == 1
        assert not scan_notebook_outputs(tmp_path / "monitor.out.ipynb", [token])
    finally:
        subprocess.run([sys.executable, "-m", "movierec.cli.main", "platform", "down",
                        f"--mlflow-port={mlflow_port}"], check=False, timeout=60)


def test_lifecycle_notebook_on_chameleon_prints_the_workflow(tmp_path: Path,
                                                             notebook_home: Path) -> None:
    output = tmp_path / "chameleon.out.ipynb"
    papermill.execute_notebook(
        str(ROOT / "project_lifecycles.ipynb"), str(output), kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False,
        parameters={"BACKEND": "chameleon", "DRY_RUN": True, "RESULTS_PATH": "c.json"})
    assert json.loads((tmp_path / "c.json").read_text())["submitted"] == "movierec-lifecycle"
    text = output.read_text()
    assert "argo submit" in text and "movierec-lifecycle" in text
