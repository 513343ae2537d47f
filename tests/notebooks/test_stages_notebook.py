"""Run project_stages.ipynb with papermill, BACKEND=local (as CI does).

The offline checks must all pass, the local platform must come up (MLflow answering) and be
down again at the end: no pid file left, the MLflow port closed. A dry-run chameleon run must
print the argocd commands and touch nothing.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import papermill
import pytest

from movierec.reliability.security import scan_notebook_outputs
from movierec.serving.loadtest import free_port

NOTEBOOK = Path(__file__).resolve().parents[2] / "project_stages.ipynb"

pytestmark = [pytest.mark.notebook]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_stages_notebook_local(tmp_path: Path, notebook_home: Path) -> None:
    mlflow_port = free_port()
    ports = [free_port() for _ in range(3)]
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "project_stages.out.ipynb"), kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False,
        parameters={"BACKEND": "local", "RESULTS_PATH": "results.json",
                    "MLFLOW_PORT": mlflow_port, "PORTS": ports})
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checks_failed"] == 0
    assert results["checks_passed"] >= 20
    assert results["canary_weights"] == {"staging": None, "canary": 10, "production": None}
    assert results["mlflow_up"] is True
    assert set(results["started"]) == {"mlflow", "supervisor"}
    assert set(results["stopped"]) == {"mlflow", "supervisor"}
    assert results["platform_down"] is True
    folder = notebook_home / "platform"
    assert not list(folder.glob("*.pid")), "a pid file was left behind"
    assert not _listening(mlflow_port)
    token = (folder / "admin_token").read_text().strip()
    assert not scan_notebook_outputs(tmp_path / "project_stages.out.ipynb", [token])


def test_stages_notebook_chameleon_dry_run(tmp_path: Path, notebook_home: Path) -> None:
    output = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(output), kernel_name="python3", cwd=str(tmp_path),
        progress_bar=False, parameters={"BACKEND": "chameleon", "DRY_RUN": True,
                                        "RESULTS_PATH": "results.json"})
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["commands"] == 8  # 4 applies, 4 waits
    assert results["stage_urls"]["canary"].startswith("http://movierec-canary.")
    assert "checks_failed" not in results and not (notebook_home / "platform").exists()
    assert "[dry-run] argocd app wait movierec-platform --health" in output.read_text()
