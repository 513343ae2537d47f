"""A real uvicorn server in a subprocess: acknowledged feedback survives kill -9, and the
process logs JSON lines without the admin token."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from movierec.serving.loadtest import free_port, wait_ready
from tests.unit.test_serving_bundle import make_bundle, movie_id

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
    acknowledged: list[int] = []  # every event's timestamp is unique: it identifies it
    stop = threading.Event()
    try:
        _wait_ready(base, proc, log)
        assert httpx.post(f"{base}/recommend", json={"user_id": 101}).status_code == 200

        def send() -> None:
            stamp = 1_000_000
            with httpx.Client(base_url=base, timeout=5) as client:
                while not stop.is_set():
                    stamps = list(range(stamp, stamp + 25))
                    stamp += 25
                    events = [{"user_id": 7, "movie_id": movie_id(1 + s % 40),
                               "event": "watch", "timestamp": s} for s in stamps]
                    try:
                        response = client.post("/feedback", json={"events": events})
                    except httpx.TransportError:
                        return  # the server died mid-request: not acknowledged
                    if response.status_code == 200:
                        acknowledged.extend(stamps)

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 500 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # while the sender is still sending
        proc.wait(10)
        stop.set()
        sender.join(10)
    finally:
        stop.set()
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
