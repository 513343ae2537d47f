"""The ``local`` backend: MLflow server, feedback store and supervised stage services.

``up`` starts (only what is not already running) an MLflow tracking server on SQLite with a
local artifact store and the supervisor of the stage services, then reconciles the stages
with the registry's aliases, so after a crash the running services again match
``staging``/``canary``/``production``. ``down`` stops only what ``up`` started (pid files).
A deploy to a running stage reloads it in place (``/admin/reload``: zero failed requests);
otherwise the supervisor starts it; either way ``deploy`` returns once ``/ready`` answers
and ``/version`` names the deployed version.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from movierec.config import get_settings
from movierec.files import write_json_atomic
from movierec.lifecycle.backends import reported_version
from movierec.lifecycle.backends.supervisor import read_json
from movierec.lifecycle.config import STAGES, PlatformConfig, Stage
from movierec.polling import (
    http_ok,
    poll,
    read_pid_file,
    stop_process_group,
    write_pid_file,
)

MLFLOW_START_TIMEOUT_S = 60.0
RETIRE_TIMEOUT_S = 30.0
RECONCILE_LOG = "reconcile.jsonl"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _last_error(log: Path, tail: int = 20) -> str:
    """The last line that names an error among a log's last ``tail`` lines, else its last.

    A server that fails to bind logs the error and then its shutdown, so the last line
    alone would only say that it shut down.
    """
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()][-tail:]
    except OSError:
        return "no log"
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["empty log"])[-1]


class LocalPlatform:
    """Everything on this machine; state and logs under ``$MOVIEREC_HOME/platform``."""

    name = "local"
    follows_alias = False  # deploy() hands the service the bundle of the version

    def __init__(self, config: PlatformConfig | None = None, home: Path | None = None) -> None:
        self.config = config or PlatformConfig()
        self.home = home or get_settings().home
        self.folder = self.home / "platform"

    # ---- the platform -------------------------------------------------------------
    def tracking_uri(self) -> str:
        """The platform's MLflow server."""
        return self.config.mlflow_url

    def admin_token(self) -> str:
        """The stage services' admin token (generated once, file mode 0600, never printed)."""
        path = self.folder / "admin_token"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with (self.folder / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, env={**os.environ, **env})
        write_pid_file(self.folder / f"{name}.pid", process.pid)
        return process

    def _mlflow_healthy(self) -> bool:
        return http_ok(f"{self.config.mlflow_url}/health", timeout=2.0)

    def up(self) -> dict[str, Any]:
        """Start MLflow and the supervisor (if needed) and reconcile stages with aliases."""
        self.folder.mkdir(parents=True, exist_ok=True)
        started = []
        mlflow: subprocess.Popen | None = None
        if read_pid_file(self.folder / "mlflow.pid") is None:
            if self._mlflow_healthy():
                raise RuntimeError(f"port {self.config.mlflow_port} already serves an MLflow "
                                   "this platform did not start; stop it or choose "
                                   "another --mlflow-port")
            db = self.home / "mlflow.db"
            mlflow = self._spawn("mlflow", [
                str(Path(sys.executable).with_name("mlflow")), "server",
                "--backend-store-uri", f"sqlite:///{db}",
                "--default-artifact-root", str(self.home / "mlartifacts"),
                "--host", self.config.host, "--port", str(self.config.mlflow_port),
                "--workers", "1"], {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
            started.append("mlflow")
        log = self.folder / "mlflow.log"

        def exited() -> str | None:
            if mlflow is None or mlflow.poll() is None:
                return None
            # E.g. its port was taken: say so now, not after the whole timeout.
            return (f"MLflow exited with code {mlflow.returncode} before it answered on port "
                    f"{self.config.mlflow_port}: {_last_error(log)} (see {log})")

        if not poll(self._mlflow_healthy, MLFLOW_START_TIMEOUT_S, every=0.5, abort=exited):
            raise TimeoutError(f"MLflow did not start within {MLFLOW_START_TIMEOUT_S:g} s: "
                               f"see {log}")
        if read_pid_file(self.folder / "supervisor.pid") is None:
            ports = json.dumps(dict(self.config.ports))
            self._spawn("supervisor", [sys.executable, "-m",
                                       "movierec.lifecycle.backends.supervisor",
                                       str(self.folder), self.config.host, ports],
                        {"MOVIEREC_ADMIN_TOKEN": self.admin_token(),
                         "MOVIEREC_HOME": str(self.home),
                         "MLFLOW_TRACKING_URI": self.config.mlflow_url})
            started.append("supervisor")
        reconciled = self.reconcile()
        return {"started": started, "reconciled": reconciled, "mlflow": self.config.mlflow_url}

    def reconcile(self) -> dict[str, str | None]:
        """Make the running stages equal the registry's aliases; return stage -> version.

        After a crash (e.g. mid-promotion: the alias moved, the deploy never ran) the
        aliases are the truth: a stage serving another version is redeployed, a stage
        serving without an alias is retired. Each such action is appended to
        ``platform/reconcile.jsonl`` (see :meth:`reconcile_log`).

        Raises:
            ConnectionError: MLflow does not answer (the registry's client would retry for
                minutes before failing).
        """
        from movierec.registry.mlflow_registry import current_version  # noqa: PLC0415

        if not poll(self._mlflow_healthy, 5.0, every=0.5):  # busy is not down
            raise ConnectionError(f"MLflow at {self.config.mlflow_url} is not running, and the "
                               "aliases live there: start it with `movierec platform up`")

        os.environ["MLFLOW_TRACKING_URI"] = self.config.mlflow_url
        result: dict[str, str | None] = {}
        for stage in STAGES:
            version = current_version(stage)
            result[stage] = version
            serving = self.serving_version(stage)
            if version is None:
                if serving is not None:
                    self.retire(stage)
                    self._record_reconcile(stage, "retired", serving, None)
                else:
                    self._set_desired(stage, None)
            elif serving != version:
                deployed = self.deploy(stage, version)
                self._record_reconcile(stage, f"deployed ({deployed['how']})", serving, version)
        return result

    def _record_reconcile(self, stage: Stage, action: str, before: str | None,
                          after: str | None) -> None:
        """Append one reconcile action, fsynced: the audit trail of what ``up`` repaired."""
        event = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "unix": time.time(),
                 "stage": stage, "action": action, "serving_before": before,
                 "alias_version": after, "why": "stage did not match its registry alias"}
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / RECONCILE_LOG).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def reconcile_log(self) -> list[dict[str, Any]]:
        """Every action reconcile took, oldest first."""
        path = self.folder / RECONCILE_LOG
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def down(self) -> list[str]:
        """Stop the supervisor (it stops the stages) and MLflow; return what was stopped.

        Stage services a supervisor left running (it was killed, so it could not stop
        them) are stopped too. Only processes whose pid files still name them are
        signalled: a pid reused by another process is left alone.
        """
        stopped = []
        for name in ("supervisor", *STAGES, "mlflow"):  # the stages once theirs is gone
            pid_file = self.folder / f"{name}.pid"
            pid = read_pid_file(pid_file)
            if pid is not None:
                stop_process_group(pid)
                stopped.append(name)
            pid_file.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        """Each service: pid, alive, port, version, uptime, restarts, last health check."""
        now = time.time()
        sup = read_json(self.folder / "status.json", {"services": {}})
        supervisor = read_pid_file(self.folder / "supervisor.pid")
        rows: dict[str, Any] = {
            "mlflow": {"pid": read_pid_file(self.folder / "mlflow.pid"),
                       "alive": self._mlflow_healthy(), "url": self.config.mlflow_url},
            "supervisor": {"pid": supervisor,
                           "alive": supervisor is not None}}
        for stage in STAGES:
            service = sup["services"].get(stage)
            if service is None:
                rows[stage] = {"alive": False, "url": self.config.url(stage)}
                continue
            rows[stage] = {"pid": service["pid"], "alive": _alive(service["pid"]),
                           "url": self.config.url(stage), "version": self.serving_version(stage),
                           "uptime_s": round(now - service["started_at"], 1),
                           "restarts": service["restarts"], "healthy": service["healthy"],
                           "last_health_s_ago": round(now - service["last_health"], 1)}
        return rows

    # ---- the Backend protocol --------------------------------------------------------
    def stage_url(self, stage: Stage) -> str:
        """Base URL of a stage."""
        return self.config.url(stage)

    def serving_version(self, stage: Stage) -> str | None:
        """What ``/version`` of the stage says (None when it does not answer)."""
        return reported_version(self.stage_url(stage), timeout=2.0)

    def _set_desired(self, stage: Stage, spec: dict[str, str] | None) -> None:
        path = self.folder / "stages.json"
        desired = read_json(path, {})
        if spec is None:
            desired.pop(stage, None)
        else:
            desired[stage] = spec
        write_json_atomic(path, desired)

    def deploy(self, stage: Stage, version: str) -> dict[str, Any]:
        """Serve ``version`` at ``stage``: reload in place when running, else start it."""
        from movierec.registry.mlflow_registry import download_bundle  # noqa: PLC0415

        bundle = download_bundle(version, self.home / "bundles" / f"v{version}")
        spec = {"version": str(version), "bundle": str(bundle)}
        started = time.monotonic()
        how = "started"
        if self.serving_version(stage) is not None:
            limit = self.config.ready_timeout_s
            try:
                reply = httpx.post(f"{self.stage_url(stage)}/admin/reload", timeout=limit,
                                   headers={"Authorization": f"Bearer {self.admin_token()}"},
                                   json={"bundle": str(bundle), "version": str(version),
                                         "alias": stage, "wait": True})
            except httpx.TimeoutException as error:
                raise TimeoutError(f"{stage}: the reload to version {version} did not finish "
                                   f"within {limit:g} s (ready_timeout_s); it may still be "
                                   f"loading: see {self.folder / (stage + '.log')}") from error
            if reply.status_code != 200:
                raise RuntimeError(f"{stage}: reload to version {version} failed "
                                   f"({reply.status_code}): {reply.text[:300]}")
            how = "reloaded in place"
        self._set_desired(stage, spec)
        self.wait_serving(stage, str(version))
        return {"stage": stage, "version": str(version), "how": how,
                "seconds": round(time.monotonic() - started, 2)}

    def wait_serving(self, stage: Stage, version: str) -> None:
        """Block until the stage is ready and reports ``version``."""
        def serving_it() -> bool:
            return (self.serving_version(stage) == version
                    and http_ok(f"{self.stage_url(stage)}/ready", timeout=2.0))

        if not poll(serving_it, self.config.ready_timeout_s, every=0.3):
            raise TimeoutError(f"{stage} did not serve version {version} within "
                               f"{self.config.ready_timeout_s:g} s: see "
                               f"{self.folder / (stage + '.log')}")

    def retire(self, stage: Stage) -> None:
        """Stop the stage's service (the supervisor stops the process).

        Raises:
            TimeoutError: It still answered 30 s later.
        """
        self._set_desired(stage, None)
        if not poll(lambda: self.serving_version(stage) is None, RETIRE_TIMEOUT_S, every=0.3):
            raise TimeoutError(f"{stage} still serves {RETIRE_TIMEOUT_S:g} s after it was "
                               f"retired: is the supervisor running? (see "
                               f"{self.folder / 'supervisor.log'})")
