"""End to end on the local backend: promote, survive a killed stage, roll back, reject.

One platform (MLflow server, supervisor, stage services on free ports) serves the whole
module; each step is the CLI a user runs, in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from movierec.serving.loadtest import free_port

pytestmark = pytest.mark.slow


class Platform:
    def __init__(self, home: Path, ml100k_dir: Path) -> None:
        self.home = home
        self.ports = {name: free_port() for name in ("mlflow", "production", "staging",
                                                     "canary")}
        self.options = [f"--{name}-port={port}" for name, port in self.ports.items()]
        self.env = {**os.environ, "MOVIEREC_HOME": str(home),
                    "MOVIEREC_DATASETS": str(ml100k_dir.parent),
                    "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.ports['mlflow']}"}

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "movierec.cli.main", *args],
                              env=self.env, capture_output=True, text=True, timeout=600)
        if check and done.returncode != 0:
            raise AssertionError(f"movierec {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def pipeline(self, config: dict[str, Any], *args: str) -> dict[str, Any]:
        path = self.home / f"lifecycle-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(config))
        before = set((self.home / "reports").glob("2*")) if (self.home / "reports").exists() \
            else set()
        out = self.cli("pipeline", "--workers", "0", "--config", str(path), *args,
                       *self.options)
        assert "decision:" in out.stdout
        (folder,) = set((self.home / "reports").glob("2*")) - before
        return json.loads((folder / "summary.json").read_text())

    def url(self, stage: str) -> str:
        return f"http://127.0.0.1:{self.ports[stage]}"

    def version(self, stage: str) -> str | None:
        try:
            return httpx.get(self.url(stage) + "/version", timeout=2).json()["version"]
        except httpx.HTTPError:
            return None


SMALL = {"staging": {"load_seconds": 2, "load_users": 4},
         "canary": {"events": 300, "concurrency": 4}}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, ml100k_dir: Path) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("lifecycle-home"), ml100k_dir)
    p.cli("platform", "up", *p.options)
    try:
        yield p
    finally:
        p.cli("platform", "down", *p.options, check=False)


def test_first_model_is_promoted_without_a_canary(platform: Platform) -> None:
    summary = platform.pipeline(SMALL, "--epochs", "1", "--trigger", "initial")
    assert summary["decision"] == "promoted" and summary["candidate_version"] == "1"
    assert summary["production_version"] is None
    assert summary["steps"]["offline_gate"]["reason"] == "no production model yet"
    staging = summary["steps"]["staging"]
    assert staging["passed"] and staging["load"]["failures"] == 0
    assert "canary" not in summary["steps"]
    assert platform.version("production") == "1"
    for name in ("report.md", "report.html", "report.png"):
        assert (platform.home / "reports" / summary["started_at"] / name).exists()


def test_a_killed_stage_is_restarted_by_the_supervisor(platform: Platform) -> None:
    status = json.loads(platform.cli("platform", "status", "--json", *platform.options).stdout)
    pid = status["production"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = json.loads(platform.cli("platform", "status", "--json",
                                         *platform.options).stdout)
        if status["production"].get("restarts") == 1 and platform.version("production") == "1":
            break
        time.sleep(0.5)
    assert status["production"]["restarts"] == 1 and status["production"]["pid"] != pid
    assert httpx.get(platform.url("production") + "/ready", timeout=5).status_code == 200


def test_traffic_feeds_back_and_drift_is_reported(platform: Platform) -> None:
    out = platform.cli("traffic", "--events", "300", *platform.options)
    assert "0 errors" in out.stdout
    drift = platform.cli("monitor", "drift", "--min-events", "10", "--json", *platform.options,
                         check=False)
    assert drift.returncode in (0, 3), drift.stderr
    report = json.loads(drift.stdout[:drift.stdout.rindex("}") + 1])
    assert report["events"] > 0 and (report["verdict"] == "drift") == (drift.returncode == 3)
    assert list((platform.home / "reports").glob("drift-*/drift.png"))


def test_a_slow_canary_is_rolled_back(platform: Platform) -> None:
    config = {**SMALL, "canary": {**SMALL["canary"], "slo_p95_ms": 0.001}}
    summary = platform.pipeline(config, "--epochs", "5", "--trigger", "feedback")
    assert summary["steps"]["data"]["used"] == 300  # the replayed watches became data
    assert summary["steps"]["offline_gate"]["passed"]
    assert summary["decision"] == "rolled_back" and "p95" in summary["reason"]
    assert summary["steps"]["canary"]["analysis"]["canary"]["requests"] > 0
    assert platform.version("production") == "1" and platform.version("canary") is None


def test_a_better_candidate_is_promoted_with_zero_failed_requests(platform: Platform) -> None:
    summary = platform.pipeline(SMALL, "--epochs", "5", "--trigger", "schedule")
    assert summary["decision"] == "promoted", summary["reason"]
    promotion = summary["steps"]["promotion"]
    assert promotion["failed_requests"] == 0 and promotion["probe_requests"] > 0
    assert platform.version("production") == summary["candidate_version"] == "3"
    assert platform.version("canary") is None


def test_a_weak_candidate_is_rejected_and_nothing_is_registered(platform: Platform) -> None:
    summary = platform.pipeline(SMALL, "--candidate", "weak")
    assert summary["decision"] == "rolled_back" and "offline gate" in summary["reason"]
    assert summary["candidate_version"] is None
    assert platform.version("production") == "3"


def test_alias_history_is_consistent_with_the_services(platform: Platform) -> None:
    events = json.loads(platform.cli("registry", "history", "--json").stdout)
    last: dict[str, str | None] = {}
    for event in events:
        assert event["from"] == last.get(event["alias"]), event
        last[event["alias"]] = event["to"]
    assert last["production"] == "3" and last.get("canary") is None
    assert [e["to"] for e in events if e["alias"] == "production"] == ["1", "3"]


def test_production_rollback_reloads_the_previous_version(platform: Platform) -> None:
    out = platform.cli("platform", "rollback", "--reason", "test rollback", *platform.options)
    assert "3 -> 1" in out.stdout and " 0 failed" in out.stdout
    assert platform.version("production") == "1"
    events = json.loads(platform.cli("registry", "history", "--json").stdout)
    assert events[-1]["action"] == "rollback" and events[-1]["why"] == "test rollback"
