"""Staging tests: ready, right version, golden requests, and a locust load test vs the SLO."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from movierec.lifecycle.config import StagingConfig

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


@dataclass
class StagingReport:
    """Each check's outcome; ``passed`` only when every check passed."""

    checks: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(self.checks.values()) and not self.problems

    def check(self, name: str, ok: bool, problem: str) -> None:
        """Record one check (and its problem when it failed)."""
        self.checks[name] = ok
        if not ok:
            self.problems.append(f"{name}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "passed": self.passed}


def golden_requests(client: httpx.Client, known_user: int, known_movies: list[int],
                    report: StagingReport) -> None:
    """Requests with known answers in shape: known user, anonymous sequence, cold start."""
    reply = client.post("/recommend", json={"user_id": known_user, "top_k": 10})
    body = reply.json() if reply.status_code == 200 else {}
    items = [i["movie_id"] for i in body.get("items", [])]
    report.check("known user gets 10 distinct movies", reply.status_code == 200
                 and len(items) == 10 and len(set(items)) == 10, f"{reply.status_code} {items}")
    reply = client.post("/recommend", json={"sequence": known_movies, "top_k": 5})
    body = reply.json() if reply.status_code == 200 else {}
    items = [i["movie_id"] for i in body.get("items", [])]
    report.check("anonymous sequence excludes seen movies", reply.status_code == 200
                 and len(items) == 5 and not set(items) & set(known_movies),
                 f"{reply.status_code} {items}")
    reply = client.post("/recommend", json={"top_k": 3})
    report.check("no history falls back to popularity", reply.status_code == 200
                 and reply.json().get("fallback") == "popularity", reply.text[:200])
    reply = client.post("/recommend", json={"user_id": known_user, "top_k": 0})
    report.check("bad input is a 4xx", 400 <= reply.status_code < 500, str(reply.status_code))


def load_test(url: str, user_ids: list[int], config: StagingConfig) -> dict[str, Any]:
    """Run locust headless against ``url``; return requests, failures, p50/p95/p99 (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "load")
        argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
                "--host", url, "-u", str(config.load_users), "-r", str(config.load_users),
                "-t", f"{config.load_seconds}s", "--csv", prefix, "--only-summary",
                "--loglevel", "WARNING", "--exit-code-on-error", "0"]
        env = {**os.environ, "MOVIEREC_LOAD_USERS": ",".join(map(str, user_ids))}
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=config.load_seconds + 60)
        stats_path = Path(prefix + "_stats.csv")
        if not stats_path.exists():
            raise RuntimeError(f"locust produced no statistics (exit {done.returncode}): "
                               f"{done.stderr[-500:]}")
        import csv  # noqa: PLC0415

        rows = {r["Name"]: r for r in csv.DictReader(stats_path.open())}
    total = rows["Aggregated"]
    return {"requests": int(total["Request Count"]), "failures": int(total["Failure Count"]),
            "rps": float(total["Requests/s"]), "p50_ms": float(total["50%"]),
            "p95_ms": float(total["95%"]), "p99_ms": float(total["99%"]),
            "users": config.load_users, "seconds": config.load_seconds}


def staging_tests(url: str, version: str, known_user: int, known_movies: list[int],
                  load_users: list[int], config: StagingConfig) -> StagingReport:
    """Every staging check against the service at ``url``."""
    report = StagingReport()
    with httpx.Client(base_url=url, timeout=10.0) as client:
        ready = client.get("/ready")
        report.check("/ready answers 200", ready.status_code == 200, ready.text[:200])
        served = client.get("/version").json().get("version")
        report.check("/version names the new version", str(served) == str(version),
                     f"serves {served}, expected {version}")
        golden_requests(client, known_user, known_movies, report)
    load = load_test(url, load_users, config)
    report.load = load
    report.check("load test has zero errors", load["failures"] == 0,
                 f"{load['failures']} of {load['requests']} requests failed")
    report.check(f"load test p95 <= {config.slo_p95_ms:g} ms",
                 load["p95_ms"] <= config.slo_p95_ms, f"p95 {load['p95_ms']:g} ms")
    return report

