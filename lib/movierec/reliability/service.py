"""A standalone service process with its own feedback store, and reading that store back.

Used by the feedback-store faults, which need a service without the platform around it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from movierec.serving.loadtest import free_port


class ServiceProcess:
    """One ``movierec`` service in a subprocess with its own feedback store (no supervisor).

    The feedback URL has no CLI flag, so the process runs ``run_server`` directly.
    """

    def __init__(self, bundle: Path, feedback_db: Path, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.bundle, self.feedback_db, self.log = bundle, feedback_db, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> float:
        """Start it and wait for ``/ready``; return the seconds that took."""
        from movierec.serving.loadtest import wait_ready  # noqa: PLC0415

        code = ("from pathlib import Path\n"
                "from movierec.serving.app import ServeSettings, run_server\n"
                f"run_server(ServeSettings(bundle=Path({str(self.bundle)!r}), threads=1, "
                f"feedback_url={str(self.feedback_db)!r}), '127.0.0.1', {self.port}, "
                "log_level='warning')\n")
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                            stderr=subprocess.STDOUT,
                                            env={**os.environ, **self.env})
        process = self.process
        try:
            wait_ready(self.url, timeout=timeout, alive=lambda: process.poll() is None)
        except (RuntimeError, TimeoutError) as error:
            self.stop()
            raise RuntimeError(f"{error}: {self.log.read_text()[-1500:]}") from error
        return time.monotonic() - started

    def kill9(self) -> None:
        """``kill -9`` the service and wait for it to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """Terminate it (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stored_markers(feedback_db: Path) -> set[int]:
    """Every event timestamp in a feedback store (the probes' unique markers)."""
    import sqlite3  # noqa: PLC0415

    with contextlib.closing(sqlite3.connect(feedback_db)) as conn:
        return {int(row[0]) for row in conn.execute("SELECT timestamp FROM feedback")}
