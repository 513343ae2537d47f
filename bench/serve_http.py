"""bench/serve.py's HTTP phase: start the servers, check they agree, load them with wrk."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py

from _common import write_json  # noqa: E402
from serve_model import TOP_K  # noqa: E402

from movierec.machine import physical_cores  # noqa: E402
from movierec.serving import wrk  # noqa: E402
from movierec.serving.loadtest import free_port  # noqa: E402

# Server name -> what it is; the order is the rotation start of the interleaved load points.
SERVERS = {
    "service_batched": "movierec serve, micro-batching on (ONNX fp32)",
    "service_unbatched": "movierec serve --max-batch-size 1 (ONNX fp32)",
    "service_int8": "movierec serve --precision int8, micro-batching on (the int8 option)",
    "eager": "plain FastAPI + PyTorch eager, one model call per request (seed design)",
    "constant": "service HTTP stack answering a constant list, no model (ceiling)",
}
# The process that runs the eager and constant servers (`--_eager-server`, ...).
SERVE_SCRIPT = Path(__file__).resolve().with_name("serve.py")


def _http(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0
          ) -> tuple[int, bytes]:
    """(status, body) of a GET, or a JSON POST when ``body`` is given."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Server:
    """One server process on a free port, its log file and its readiness check."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path, ready_path: str,
                 env: dict[str, str]) -> None:
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, log
        self.ready_path = ready_path
        self.url = f"http://127.0.0.1:{port}"
        self._log = log.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.started = time.perf_counter()
        self.ready_seconds: float | None = None
        self.peak_rss_mib: float | None = None
        self.loaded_libs: dict[str, bool] = {}

    def wait_ready(self, timeout: float) -> None:
        """Poll the readiness route until it answers 200 (raises with the log's tail)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if _http(self.url + self.ready_path, timeout=2)[0] == 200:
                    self.ready_seconds = round(time.perf_counter() - self.started, 1)
                    return
            except OSError:
                pass
            time.sleep(0.25)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"server {self.name} ({' '.join(self.cmd)}) not ready after "
                           f"{timeout:.0f} s (exit code {self.proc.poll()}); log tail:\n{tail}")

    def stop(self, grace: float = 15.0) -> None:
        """SIGINT (graceful shutdown), SIGKILL after ``grace`` seconds; record the peak RSS."""
        usage = None
        if self.proc.returncode is None:
            self.peak_rss_mib = wrk.memory_mib(self.proc.pid)  # peak, with its model process
            self.proc.send_signal(signal.SIGINT)
            deadline = time.perf_counter() + grace
            try:
                while True:
                    pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
                    if pid:
                        break
                    if time.perf_counter() > deadline:
                        self.proc.kill()
                        pid, status, usage = os.wait4(self.proc.pid, 0)
                        break
                    time.sleep(0.1)
                self.proc.returncode = os.waitstatus_to_exitcode(status)
            except ChildProcessError:  # already reaped by poll()
                usage = None
        if usage is not None and self.peak_rss_mib is None:
            self.peak_rss_mib = round(usage.ru_maxrss / 1024, 1)
        self._log.close()


def _loaded_libs(pid: int) -> dict[str, bool]:
    """Whether the server process has uvloop's and httptools' extensions mapped (in use)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {"uvloop": "/uvloop/loop." in maps, "httptools": "/httptools/parser/" in maps}


def start_servers(args: argparse.Namespace, paths: dict[str, Path]) -> dict[str, Server]:
    """Start the servers together (idle servers cost no CPU), then wait for each."""
    paths["logs"].mkdir(parents=True, exist_ok=True)
    movierec = str(Path(sys.executable).with_name("movierec"))
    me = [sys.executable, str(SERVE_SCRIPT)]
    service = [movierec, "serve", "--bundle", str(paths["bundle"]), "--max-queue-delay-ms",
               str(args.max_queue_delay_ms)]
    if args.service_threads:
        service += ["--threads", str(args.service_threads)]
    if args.model_thread:
        service += ["--no-model-process"]
    servers: dict[str, Server] = {}
    for name in SERVERS:
        port = free_port()
        if name == "service_batched":
            cmd = [*service, "--port", str(port), "--max-batch-size", str(args.max_batch_size)]
        elif name == "service_unbatched":
            cmd = [*service, "--port", str(port), "--max-batch-size", "1"]
        elif name == "service_int8":
            cmd = [*service, "--port", str(port), "--max-batch-size", str(args.max_batch_size),
                   "--precision", "int8"]
        elif name == "eager":
            cmd = [*me, "--_eager-server", str(port), str(paths["bundle"]),
                   str(paths["weights"]), "--eager-threads", str(args.eager_threads)]
        else:
            cmd = [*me, "--_constant-server", str(port), str(paths["bundle"])]
        home = paths["home"] / name
        shutil.rmtree(home, ignore_errors=True)  # a fresh feedback store: no replayed watches
        home.mkdir(parents=True)
        env = {**os.environ, "MOVIEREC_HOME": str(home),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "lib"),
                                                           os.environ.get("PYTHONPATH")]))}
        ready = "/ready" if name.startswith("service") else "/health"
        servers[name] = Server(name, cmd, port, paths["logs"] / f"{name}.log", ready, env)
    try:
        for server in servers.values():
            server.wait_ready(timeout=180)
            server.loaded_libs = _loaded_libs(server.proc.pid)
    except BaseException:
        for server in servers.values():
            server.stop()
        raise
    return servers


def preflight(servers: dict[str, Server], user_ids: list[int]) -> dict[str, Any]:
    """Every server answers 200 with 10 items; the service and eager servers agree."""
    report: dict[str, Any] = {}
    tops: dict[str, list[list[int]]] = {}
    for name, server in servers.items():
        sizes, tops[name] = [], []
        for user in user_ids:
            status, body = _http(server.url + "/recommend", {"user_id": user, "top_k": TOP_K})
            if status != 200:
                raise RuntimeError(f"{name}: POST /recommend user {user} answered {status}: "
                                   f"{body[:300]!r}; see {server.log_path}")
            items = json.loads(body)["items"]
            if len(items) != TOP_K:
                raise RuntimeError(f"{name}: {len(items)} items for user {user}, expected "
                                   f"{TOP_K}")
            sizes.append(len(body))
            tops[name].append([item["movie_id"] for item in items])
        report[name] = {"response_bytes_median": int(statistics.median(sizes))}
    for name in ("service_unbatched", "service_int8", "eager"):
        same = [len(set(a) & set(b)) / TOP_K
                for a, b in zip(tops["service_batched"], tops[name], strict=True)]
        report[name]["top10_overlap_with_service_batched"] = round(statistics.mean(same), 3)
    report["users_checked"] = len(user_ids)
    return report


def run_wrk(server: Server, connections: int, seconds: float, args: argparse.Namespace,
            lua: Path) -> dict[str, Any]:
    """One load point against ``server`` (:func:`movierec.serving.wrk.run_wrk`)."""
    return wrk.run_wrk(server.url, server.proc.pid, connections, seconds, lua,
                       threads=args.wrk_threads, timeout_s=args.wrk_timeout,
                       engine_metrics=server.name.startswith("service"), name=server.name)


def run_http(args: argparse.Namespace, paths: dict[str, Path], report: dict[str, Any],
             connections: tuple[int, ...]) -> None:
    """Start the servers, check them, warm them up, then the load points, interleaved."""
    import pyarrow.parquet as pq

    n_users = wrk.write_recommend_script(paths["bundle"], paths["lua"], TOP_K)
    user_ids = sorted(pq.read_table(paths["bundle"] / "users.parquet",
                                    columns=["user_id"]).column(0).to_pylist())
    print("starting the four servers ...", flush=True)
    servers = start_servers(args, paths)
    http: dict[str, Any] = {
        "seconds": args.seconds, "connections": list(connections), "repeats": args.repeats,
        "users_in_script": n_users, "wrk_timeout_s": args.wrk_timeout,
        "servers": {name: {"description": SERVERS[name], "command": " ".join(s.cmd),
                           "ready_seconds": s.ready_seconds, "loaded": s.loaded_libs}
                    for name, s in servers.items()},
        "settings": {"service_threads": args.service_threads
                     or "service default (movierec serve --threads 1)",
                     "model": ("a thread of the server (--no-model-process)" if args.model_thread
                               else "a child process of the server (service default)"),
                     "physical_cores": physical_cores(),
                     "max_batch_size": args.max_batch_size,
                     "max_queue_delay_ms": args.max_queue_delay_ms,
                     "eager_torch_threads": args.eager_threads},
        "points": {name: {} for name in servers}}
    report["http"] = http
    try:
        http["preflight"] = preflight(servers, user_ids[:: max(1, len(user_ids) // 20)])
        for server in servers.values():  # warm-up: imports, allocators, ORT arenas
            run_wrk(server, 8, args.warmup, args, paths["lua"])
        order = list(servers)
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {} for n in servers}
        step = 0
        for repeat in range(args.repeats):
            for conns in connections:
                rotated = order[step % len(order):] + order[:step % len(order)]
                step += 1
                for name in rotated:
                    print(f"  {name:<18} {conns:>3} connections, run {repeat + 1}/"
                          f"{args.repeats} ...", flush=True)
                    point = run_wrk(servers[name], conns, args.seconds, args, paths["lua"])
                    runs[name].setdefault(str(conns), []).append(point)
                    # With repeats, the reported point is the run of median throughput.
                    points = sorted(runs[name][str(conns)],
                                    key=lambda p: p["requests_per_sec"])
                    chosen = dict(points[len(points) // 2])
                    if len(points) > 1:
                        chosen["repeats_requests_per_sec"] = [p["requests_per_sec"]
                                                              for p in runs[name][str(conns)]]
                    http["points"][name][str(conns)] = chosen
                    write_json(report, args.out)
                    time.sleep(0.5)
    finally:
        for server in servers.values():
            server.stop()
            http["servers"][server.name]["peak_rss_mib"] = server.peak_rss_mib
            http["servers"][server.name]["log_mib"] = round(
                server.log_path.stat().st_size / 2**20, 1)
