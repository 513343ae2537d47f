"""Train -> export -> register -> alias -> serve from the registry, through the CLI."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from movierec.cli.main import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "movierec.cli.main", "serve", "--model",
         "models:/movierec@production", "--port", str(port)],
        env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            time.sleep(0.3)
        else:
            pytest.fail("the service did not become ready within 60 s")
        version = httpx.get(f"{base}/version").json()
        assert (version["version"], version["alias"]) == ("1", "production")
        reply = httpx.post(f"{base}/recommend", json={"user_id": 1, "top_k": 5}).json()
        assert len(reply["items"]) == 5 and reply["user_known"] is True
        assert {"movie_id", "title", "year", "genres", "score"} <= set(reply["items"][0])
    finally:
        server.terminate()
        server.wait(timeout=20)
