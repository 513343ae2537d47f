"""Train -> export -> register -> alias -> serve from the registry, through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from movierec.cli.main import main
from movierec.serving.loadtest import free_port, wait_ready

pytestmark = pytest.mark.slow


def test_cli_trains_exports_registers_and_serves(small_prepared: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "m.json"
    assert main(["train", "--data", str(small_prepared), "--epochs", "2", "--quiet",
                 "--metrics-out", str(metrics)]) == 0
    run_id = json.loads(metrics.read_text())["run_id"]
    capsys.readouterr()
    assert main(["export", "--run", run_id, "--data", str(small_prepared),
                 "--out", str(tmp_path / "bundle"), "--register"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "registered movierec version 1" in out
    assert main(["registry", "set-alias", "production", "1", "--reason", "first model"]) == 0

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "movierec.cli.main", "serve", "--model",
         "models:/movierec@production", "--port", str(port)],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, timeout=60, alive=lambda: server.poll() is None)
        version = httpx.get(f"{base}/version").json()
        assert (version["version"], version["alias"]) == ("1", "production")
        reply = httpx.post(f"{base}/recommend", json={"user_id": 1, "top_k": 5}).json()
        assert len(reply["items"]) == 5 and reply["user_known"] is True
        assert {"movie_id", "title", "year", "genres", "score"} <= set(reply["items"][0])
    finally:
        server.terminate()
        server.wait(timeout=20)
