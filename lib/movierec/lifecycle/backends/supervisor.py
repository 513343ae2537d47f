"""The local platform's process supervisor: keeps one ``movierec serve`` per desired stage.

It runs as its own process (started by ``movierec platform up``) and reconciles every
``POLL_S`` seconds: the desired state is ``stages.json`` (written atomically by deploys);
a stage whose process died is restarted from the same bundle, a removed stage is stopped,
and each service's health is checked and written to ``status.json`` for ``platform status``.
A deploy that reloads a running service in place (zero failed requests) only changes the
desired version; the supervisor sees the service already reports it and keeps the process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from movierec.files import write_json_atomic
from movierec.polling import read_pid_file, stop_process_group, write_pid_file

POLL_S = 0.5
HEALTH_EVERY_S = 2.0
STABLE_S = 60.0  # a service that ran this long before exiting is restarted at once
MAX_BACKOFF_S = 60.0
log = logging.getLogger("movierec.supervisor")


def read_json(path: Path, default: Any) -> Any:
    """A JSON file, or ``default`` when it does not exist yet."""
    return json.loads(path.read_text()) if path.exists() else default


@dataclass
class Service:
    """One supervised stage process."""

    stage: str
    version: str
    bundle: str
    process: subprocess.Popen[bytes]
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    last_health: float | None = None
    healthy: bool = False
    restart_at: float | None = None  # set when its exit is noticed


def restart_delay(restarts: int, uptime: float) -> float:
    """Seconds to wait before restarting a service that exited after ``uptime`` seconds.

    One that ran a while is restarted at once; one that keeps failing soon after it
    starts (a broken bundle, a port someone else holds) waits twice as long each time,
    up to ``MAX_BACKOFF_S``, instead of a new interpreter every half second.
    """
    if uptime >= STABLE_S:
        return 0.0
    return min(MAX_BACKOFF_S, POLL_S * 2.0 ** min(restarts, 16))


class Supervisor:
    """Reconcile running stage processes with ``stages.json`` (see the module docstring)."""

    def __init__(self, folder: Path, host: str, ports: dict[str, int]) -> None:
        self.folder = folder
        self.host = host
        self.ports = ports
        self.services: dict[str, Service] = {}
        self.stopping = False

    def _start(self, stage: str, spec: dict[str, str], restarts: int = 0) -> Service:
        orphan = read_pid_file(self.folder / f"{stage}.pid")
        if orphan is not None and stage not in self.services:
            # Left by a supervisor that was killed (its services run in their own sessions);
            # it holds the stage's port, so a new service could never start.
            log.warning("stopping %s's orphaned service (pid %d)", stage, orphan)
            stop_process_group(orphan, timeout=15)
        log_file = (self.folder / f"{stage}.log").open("ab")
        argv = [sys.executable, "-m", "movierec.cli.main", "serve", "--bundle", spec["bundle"],
                "--model-version", spec["version"], "--alias", stage, "--host", self.host,
                "--port", str(self.ports[stage]), "--threads", "1"]
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log_file.close()
        write_pid_file(self.folder / f"{stage}.pid", process.pid)
        log.info("started %s v%s pid %d (restart %d)", stage, spec["version"], process.pid,
                 restarts)
        return Service(stage, spec["version"], spec["bundle"], process, restarts=restarts)

    def _stop(self, service: Service) -> None:
        if service.process.poll() is None:
            service.process.terminate()
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
        (self.folder / f"{service.stage}.pid").unlink(missing_ok=True)
        log.info("stopped %s", service.stage)

    def _reported_version(self, stage: str) -> str | None:
        try:
            reply = httpx.get(f"http://{self.host}:{self.ports[stage]}/version", timeout=2.0)
            return str(reply.json().get("version")) if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def reconcile(self) -> None:
        """One pass: start, restart, replace or stop processes to match the desired state."""
        desired: dict[str, dict[str, str]] = read_json(self.folder / "stages.json", {})
        for stage in list(self.services):
            if stage not in desired:
                self._stop(self.services.pop(stage))
        for stage, spec in desired.items():
            service = self.services.get(stage)
            exited = service is not None and service.process.poll() is not None
            if service is None or (exited and service.version != spec["version"]):
                # New, or another version deployed: it owes nothing to the old one's crashes.
                self.services[stage] = self._start(stage, spec)
            elif exited:
                now = time.time()
                if service.restart_at is None:
                    delay = restart_delay(service.restarts, now - service.started_at)
                    service.restart_at = now + delay
                    log.warning("%s (pid %d) exited with %s: restarting in %.1f s", stage,
                                service.process.pid, service.process.returncode, delay)
                if now >= service.restart_at:
                    self.services[stage] = self._start(stage, spec, service.restarts + 1)
            elif service.version != spec["version"]:
                if self._reported_version(stage) == spec["version"]:
                    service.version, service.bundle = spec["version"], spec["bundle"]
                else:  # not reloaded in place: replace the process
                    self._stop(service)
                    self.services[stage] = self._start(stage, spec, service.restarts)

    def check_health(self) -> None:
        """GET /health of every service; write ``status.json``."""
        now = time.time()
        status = {"supervisor_pid": os.getpid(), "updated_at": now, "services": {}}
        for stage, service in self.services.items():
            try:
                reply = httpx.get(f"http://{self.host}:{self.ports[stage]}/health", timeout=1.0)
                service.healthy = reply.status_code == 200
            except httpx.HTTPError:
                service.healthy = False
            service.last_health = now
            status["services"][stage] = {
                "pid": service.process.pid, "version": service.version,
                "bundle": service.bundle, "port": self.ports[stage],
                "started_at": service.started_at, "restarts": service.restarts,
                "healthy": service.healthy, "last_health": now}
        write_json_atomic(self.folder / "status.json", status)

    def run(self) -> None:
        """Loop until SIGTERM/SIGINT, then stop every process it started."""
        def stop(signum: int, frame: object) -> None:
            del signum, frame
            self.stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        last_health = 0.0
        while not self.stopping:
            try:
                self.reconcile()
                if time.monotonic() - last_health >= HEALTH_EVERY_S:
                    self.check_health()
                    last_health = time.monotonic()
            except Exception:  # keep supervising: one bad pass must not stop the platform
                log.exception("reconcile failed")
            time.sleep(POLL_S)
        for service in self.services.values():
            self._stop(service)
        write_json_atomic(self.folder / "status.json",
                          {"supervisor_pid": None, "updated_at": time.time(), "services": {}})


def main() -> None:
    """``python -m movierec.lifecycle.backends.supervisor FOLDER HOST PORTS_JSON``."""
    folder, host, ports = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Supervisor(folder, host, ports).run()


if __name__ == "__main__":
    main()
