"""Soak: hold the service at 70% of its measured maximum throughput for a long time.

The load comes from ``wrk`` with the serving benchmark's POST script
(:mod:`movierec.serving.wrk`), plus a ``delay()`` hook that paces each connection. Debian's
wrk has no fixed-rate mode, so the soak runs in segments and retunes the per-request delay
after each one to stay on the target rate. Between segments the server's resident memory is
read from ``/proc``. Passing means: zero errors, p99 of every segment within the SLO, and RSS
growth under 10% from the first minute (or the first quarter of a shorter run) to the end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from movierec.reliability.fuzz import LiveService
from movierec.serving import wrk

LOAD_FRACTION = 0.7
CONNECTIONS = 32
SLO_P99_MS = 50.0  # the service's target at 32 connections (issue 4, bench/serve.py)
MAX_RSS_GROWTH = 0.10


def rss_mib(pid: int) -> float:
    """Resident memory in MiB of a server and its model process (``VmRSS``, ``/proc``)."""
    rss = wrk.memory_mib(pid, "VmRSS")
    if not rss:
        raise ProcessLookupError(f"process {pid} has no VmRSS (exited?)")
    return rss


def _run(service: LiveService, connections: int, seconds: float, lua: Path
         ) -> dict[str, Any]:
    return wrk.run_wrk(service.url, service.proc.pid, connections, seconds, lua)


def _summary(point: dict[str, Any]) -> dict[str, Any]:
    keys = ("requests", "requests_per_sec", "p50_ms", "p99_ms", "max_ms", "errors",
            "non_2xx", "socket_errors", "cpu", "engine")
    return {k: point[k] for k in keys if k in point}


def max_throughput(service: LiveService, bundle: Path, workdir: Path, seconds: float,
                   connections: int = CONNECTIONS) -> dict[str, Any]:
    """Closed-loop wrk (no pacing) against ``/recommend``: the most the service answers."""
    lua = workdir / "max.lua"
    wrk.write_recommend_script(bundle, lua)
    _run(service, 8, 2, lua)  # warm-up
    return _summary(_run(service, connections, max(1, round(seconds)), lua))


def soak(service: LiveService, bundle: Path, workdir: Path, *, seconds: float,
         target_rps: float, connections: int = CONNECTIONS, segment_seconds: float = 10.0,
         slo_p99_ms: float = SLO_P99_MS, max_rss_growth: float = MAX_RSS_GROWTH,
         ) -> dict[str, Any]:
    """Load ``service`` at ``target_rps`` for ``seconds``; judge errors, p99 and memory.

    Args:
        service: The running service (its pid is read for RSS).
        bundle: The bundle it serves (the wrk script posts its users).
        workdir: Where the wrk scripts go.
        seconds: Soak duration.
        target_rps: Requests per second to hold (e.g. 70% of :func:`max_throughput`).
        connections: wrk connections.
        segment_seconds: Length of one wrk run; the pace is retuned between runs.
        slo_p99_ms: p99 latency every segment must stay under.
        max_rss_growth: Allowed RSS growth (fraction) from the baseline sample to the end.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    lua = workdir / "soak.lua"
    pid = service.proc.pid
    cycle_ms = 1000.0 * connections / target_rps  # per-connection time between requests
    pace = max(0.0, cycle_ms)
    baseline_at = min(60.0, seconds / 4)
    segments: list[dict[str, Any]] = []
    rss = [{"t": 0.0, "rss_mib": rss_mib(pid)}]
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds - 0.5:
        length = max(1, round(min(segment_seconds, seconds - elapsed)))  # wrk: whole seconds
        wrk.write_recommend_script(bundle, lua, pace_ms=round(pace))
        point = _run(service, connections, length, lua)
        segment = {"t_end": round(time.perf_counter() - started, 1), "pace_ms": round(pace),
                   **_summary(point)}
        segments.append(segment)
        rss.append({"t": segment["t_end"], "rss_mib": rss_mib(pid)})
        achieved = point.get("requests_per_sec") or 0.0
        if achieved > 0:
            # rate = connections / (pace + latency): move the pace by the cycle we missed.
            pace = max(0.0, pace + cycle_ms - 1000.0 * connections / achieved)
    total = sum(s.get("requests", 0) for s in segments)
    errors = sum(s.get("errors", 0) for s in segments)
    p99s = [s["p99_ms"] for s in segments if s.get("p99_ms") is not None]
    baseline = next((r for r in rss if r["t"] >= baseline_at), rss[-1])
    end = rss[-1]
    growth = (end["rss_mib"] - baseline["rss_mib"]) / baseline["rss_mib"]
    # A soak too short for a sample after the baseline measures no growth at all: that
    # must fail the check, not pass it with a growth of 0.
    measured = baseline is not end
    wall = time.perf_counter() - started
    achieved_rps = total / wall if wall else 0.0
    checks = {
        "zero_errors": errors == 0,
        "p99_within_slo": bool(p99s) and max(p99s) < slo_p99_ms,
        "rss_growth_under_limit": measured and growth < max_rss_growth,
        "rate_held": achieved_rps >= 0.85 * target_rps,
    }
    return {
        "seconds": round(wall, 1), "connections": connections, "target_rps": round(target_rps, 1),
        "achieved_rps": round(achieved_rps, 1), "requests": total, "errors": errors,
        "p99_ms_worst_segment": max(p99s) if p99s else None,
        "p50_ms_median_segment": sorted(s["p50_ms"] for s in segments)[len(segments) // 2]
        if segments else None,
        "slo_p99_ms": slo_p99_ms,
        "rss_mib": {"start": rss[0]["rss_mib"], "baseline": baseline["rss_mib"],
                    "baseline_at_s": baseline["t"], "end": end["rss_mib"],
                    "growth": round(growth, 4), "limit": max_rss_growth,
                    "measured": measured},
        "rss_samples": rss, "segments": segments, "checks": checks, "ok": all(checks.values()),
        "load_average": os.getloadavg(),
    }


def run_soak(service: LiveService, bundle: Path, workdir: Path, *, seconds: float,
             probe_seconds: float = 10.0, connections: int = CONNECTIONS,
             segment_seconds: float = 10.0, slo_p99_ms: float = SLO_P99_MS,
             ) -> dict[str, Any]:
    """Measure the maximum throughput, then soak at ``LOAD_FRACTION`` of it."""
    workdir.mkdir(parents=True, exist_ok=True)
    peak = max_throughput(service, bundle, workdir, probe_seconds, connections)
    if not peak.get("requests_per_sec") or peak.get("errors"):
        return {"max": peak, "ok": False,
                "error": "the maximum-throughput probe failed or had errors"}
    target = LOAD_FRACTION * float(peak["requests_per_sec"])
    result = soak(service, bundle, workdir, seconds=seconds, target_rps=target,
                  connections=connections, segment_seconds=segment_seconds,
                  slo_p99_ms=slo_p99_ms)
    return {"max": peak, "load_fraction": LOAD_FRACTION, **result}


__all__ = ["LOAD_FRACTION", "SLO_P99_MS", "max_throughput", "rss_mib",
           "run_soak", "soak"]
