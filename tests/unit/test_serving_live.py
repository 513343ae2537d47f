"""A real uvicorn server in a subprocess: acknowledged feedback survives kill -9, and the
process logs JSON lines without the admin token."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from movierec.serving.loadtest import free_port, wait_ready
from tests.unit.feedback_burst import acknowledged_until_killed
from tests.unit.test_serving_bundle import make_bundle

TOKEN = "live-secret-token-5678"


def _start(bundle: Path, db: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    code = ("from pathlib import Path\n"
            "from movierec.serving.app import ServeSettings, run_server\n"
            f"run_server(ServeSettings(bundle=Path({str(bundle)!r}), threads=1, "
            f"feedback_url={str(db)!r}), '127.0.0.1', {port})\n")
    env = {**os.environ, "MOVIEREC_ADMIN_TOKEN": TOKEN}
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                stderr=subprocess.STDOUT, env=env)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        wait_ready(base, timeout=90, alive=lambda: proc.poll() is None)
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(f"{error}: {log.read_text()[-2000:]}") from error


def test_acknowledged_feedback_survives_kill_9(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    db, log, port = tmp_path / "feedback.db", tmp_path / "server.log", free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(bundle, db, port, log)
    try:
        _wait_ready(base, proc, log)
        assert httpx.post(f"{base}/recommend", json={"user_id": 101}).status_code == 200
        acknowledged = acknowledged_until_killed(base, proc, user_id=7, at_least=500)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(acknowledged) >= 500
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT timestamp FROM feedback")}
    assert set(acknowledged) <= stored
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("route") == "/feedback" and line.get("status") == 200 for line in lines)
    assert any(line.get("message") == "serving" for line in lines)
    assert TOKEN not in log.read_text()
