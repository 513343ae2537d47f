"""Drive ``wrk`` (Debian's HTTP load generator) against ``POST /recommend``.

A Python client saturates before the service does on a small machine, so the serving
benchmark (``bench/serve.py``) and the soak test (:mod:`movierec.reliability.soak`) both load
the service with ``wrk`` and a Lua script that posts every known user in turn. One load
point also records the CPU used by the server, by ``wrk`` and by the rest of the machine,
and, for ``movierec serve``, the micro-batcher's counters from ``/metrics``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

# Percentiles written by wrk's done() hook (the text output stops at p99).
RECOMMEND_SCRIPT = """-- POST /recommend for known users, round robin from a per-thread offset.
local ids = {%(ids)s}
local requests = {}
local counter = 0
local headers = {["Content-Type"] = "application/json"}

function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 97)
end

function init(args)
  for i, id in ipairs(ids) do
    requests[i] = wrk.format("POST", "/recommend", headers,
                             '{"user_id": ' .. id .. ', "top_k": %(top_k)d}')
  end
  index = offset or 0
end

function request()
  index = index + 1
  return requests[(index %% #requests) + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "duration_us": %%d, "bytes": %%d, "connect": %%d, ' ..
    '"read": %%d, "write": %%d, "status": %%d, "timeout": %%d, "mean_us": %%.1f, ' ..
    '"stdev_us": %%.1f, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "p999_us": %%d, ' ..
    '"max_us": %%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency.stdev, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""
# Debian's wrk has no fixed-rate mode: delay() makes each connection wait before its next
# request, which paces the load (the soak test retunes it between runs).
PACING_HOOK = """
-- Pacing: wrk calls delay() before each request.
local pace_ms = %(pace_ms)d
function delay()
  return pace_ms
end
"""
ENGINE_METRICS = ("movierec_batch_size", "movierec_queue_wait_seconds",
                  "movierec_inference_seconds")
_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}


def write_recommend_script(bundle: Path, path: Path, top_k: int = 10,
                           pace_ms: int | None = None) -> int:
    """Write the script posting ``{"user_id": U, "top_k": K}`` for every user of ``bundle``.

    Args:
        bundle: A model bundle (its ``users.parquet`` lists the known users).
        path: Where the Lua script goes.
        top_k: The ``top_k`` of every request.
        pace_ms: Milliseconds each connection waits before a request (None: no pacing).

    Returns:
        The number of users the script cycles through.
    """
    ids = sorted(int(u) for u in pq.read_table(Path(bundle) / "users.parquet",
                                              columns=["user_id"]).column(0).to_pylist())
    script = RECOMMEND_SCRIPT % {"ids": ", ".join(map(str, ids)), "top_k": top_k}
    if pace_ms is not None:
        script += PACING_HOOK % {"pace_ms": pace_ms}
    Path(path).write_text(script)
    return len(ids)


def _to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"wrk latency {text!r} has an unknown unit")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """The fields of wrk's text output, plus the JSON line the Lua ``done`` hook wrote."""
    parsed: dict[str, Any] = {}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", output):
        parsed["requests_per_sec"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in ([\d.]+\w+), ([\d.]+\w+) read", output):
        parsed["requests"] = int(m.group(1))
        parsed["duration_ms"] = _to_ms(m.group(2))
        parsed["read"] = m.group(3)
    if m := re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", output):
        parsed["latency_avg_ms"], parsed["latency_stdev_ms"], parsed["latency_max_ms"] = (
            round(_to_ms(m.group(i)), 3) for i in (1, 2, 3))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$", output, re.M):
        parsed[f"p{pct}_ms"] = round(_to_ms(value), 3)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                  output)
    parsed["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"),
                                       map(int, m.groups()), strict=True)) if m else \
        {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    parsed["non_2xx"] = int(m.group(1)) if m else 0
    if m := re.search(r"^WRK_JSON (\{.*\})$", output, re.M):
        parsed["lua"] = json.loads(m.group(1))
    return parsed


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (a server's model process is its child)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(_stat_fields(int(stat.parent.name))[1])
        except (OSError, ValueError, IndexError):  # the process ended while we looked
            continue
    tree = [pid]
    for member in tree:
        tree.extend(child for child, parent in parents.items() if parent == member)
    return tree


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (``/proc/PID/stat``)."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int, field: str = "VmHWM") -> float:
    """Sum of a ``/proc/PID/status`` memory field over a process and its live descendants.

    ``VmHWM`` is each process's peak resident size, ``VmRSS`` its current one.
    """
    total_kib = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total_kib += sum(int(line.split()[1]) for line in status.splitlines()
                         if line.startswith(f"{field}:"))
    return round(total_kib / 1024, 1)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])       # guest time is already inside user
    return total - idle, total


def scrape_engine(url: str) -> dict[str, float]:
    """Sums and counts of the service's batch, queue-wait and inference histograms."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    wanted = {f"{name}_{part}" for name in ENGINE_METRICS for part in ("sum", "count")}
    values: dict[str, float] = {}
    for line in body.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


def _engine_delta(before: dict[str, float], after: dict[str, float],
                  wall: float) -> dict[str, Any] | None:
    """Mean batch size, ONNX Runtime call time and queue wait between two scrapes."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    calls = delta.get("movierec_inference_seconds_count", 0.0)
    if not calls:
        return None
    engine: dict[str, Any] = {
        "ort_calls": int(calls),
        "mean_batch_size": round(delta["movierec_batch_size_sum"] / calls, 2),
        "mean_ort_call_ms": round(delta["movierec_inference_seconds_sum"] / calls * 1000, 3),
        "ort_seconds_per_second": round(delta["movierec_inference_seconds_sum"] / wall, 3)}
    waits = delta.get("movierec_queue_wait_seconds_count", 0.0)
    if waits:
        engine["mean_queue_wait_ms"] = round(
            delta["movierec_queue_wait_seconds_sum"] / waits * 1000, 3)
    return engine


def run_wrk(url: str, pid: int, connections: int, seconds: float, script: Path, *,
            threads: int = 1, timeout_s: float = 5.0, engine_metrics: bool = True,
            name: str = "") -> dict[str, Any]:
    """One load point: wrk against ``url/recommend`` with ``script``.

    Args:
        url: The server's base URL.
        pid: The server's process id (its CPU time is measured).
        connections: Open connections (each sends its next request when answered).
        seconds: Duration (wrk takes whole seconds best).
        script: A script from :func:`write_recommend_script`.
        threads: wrk threads (at most ``connections``).
        timeout_s: wrk's per-request timeout; slower answers count as errors.
        engine_metrics: Scrape the micro-batcher's counters (``movierec serve`` only).
        name: A label stored with the point.

    Returns:
        Throughput, latency percentiles, errors (non-2xx plus socket errors), CPU cores used
        by the server, wrk and the rest of the machine, and the engine counters.

    Raises:
        RuntimeError: wrk failed (its output is in the message).
    """
    threads = min(threads, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency",
           "--timeout", f"{timeout_s:g}s", "-s", str(script), url + "/recommend"]
    before = scrape_engine(url) if engine_metrics else {}
    load_before = os.getloadavg()[0]
    busy0, total0 = machine_cpu()
    server_cpu0 = proc_cpu_seconds(pid)
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        server_cpu = proc_cpu_seconds(pid) - server_cpu0
        busy1, total1 = machine_cpu()
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(cmd)}\n{text}")
    parsed = parse_wrk(text)
    lua_stats = parsed.get("lua", {})
    requests = parsed.get("requests", lua_stats.get("requests", 0))
    server_cores = server_cpu / wall
    wrk_cores = (usage.ru_utime + usage.ru_stime) / wall
    busy_cores = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
    # "other": everything else on the machine (other tenants' work; the caller is idle).
    cpu = {"server_cores": round(server_cores, 2), "wrk_cores": round(wrk_cores, 2),
           "machine_busy_cores": round(busy_cores, 2),
           "other_cores": round(max(0.0, busy_cores - server_cores - wrk_cores), 2)}
    errors = parsed["non_2xx"] + sum(parsed["socket_errors"].values())
    point: dict[str, Any] = {
        "server": name, "connections": connections, "wrk_threads": threads,
        "seconds": seconds, "requests": requests,
        "requests_per_sec": parsed.get("requests_per_sec"),
        "p50_ms": parsed.get("p50_ms"), "p90_ms": parsed.get("p90_ms"),
        "p99_ms": parsed.get("p99_ms"),
        "p999_ms": round(lua_stats["p999_us"] / 1000, 3) if lua_stats else None,
        "max_ms": parsed.get("latency_max_ms"), "mean_ms": parsed.get("latency_avg_ms"),
        "non_2xx": parsed["non_2xx"], "socket_errors": parsed["socket_errors"],
        "errors": errors, "error_rate": round(errors / requests, 6) if requests else 1.0,
        "cpu": cpu, "load_before": round(load_before, 2), "wrk_command": " ".join(cmd),
        "wrk_output": text,
    }
    if engine_metrics and (engine := _engine_delta(before, scrape_engine(url), wall)):
        point["engine"] = engine
    return point


__all__ = ["PACING_HOOK", "RECOMMEND_SCRIPT", "machine_cpu", "memory_mib", "parse_wrk",
           "proc_cpu_seconds", "process_tree", "run_wrk", "scrape_engine",
           "write_recommend_script"]
