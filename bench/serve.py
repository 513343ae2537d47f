"""Benchmark serving: model latency (PyTorch eager, ONNX fp32, ONNX int8) and HTTP load.

Builds (once, reused) an ml-100k SSE-PT bundle with ``max_len`` 200, times ``score_all`` at
batch 1, 8 and 64 on one thread, then loads four servers with ``wrk`` at 1, 8, 32 and 64
connections: ``movierec serve`` with micro-batching on and off, a plain FastAPI + PyTorch
eager server (one model call per request, the seed's design) and the service's own HTTP
stack answering a constant list (the ceiling). Writes JSON (``--out``) and prints a markdown
summary with the targets. README.md beside this file says what is measured.
"""

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
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py

# FastAPI resolves a route's annotations from module globals: the request and response
# models of the two helper servers must be importable here (pydantic only, no torch).
from _common import machine_info as _machine_info  # noqa: E402
from _common import run_worker as _run_worker  # noqa: E402
from _common import write_json  # noqa: E402

from movierec.serving import wrk  # noqa: E402
from movierec.serving.loadtest import free_port  # noqa: E402
from movierec.serving.schemas import (  # noqa: E402
    RecommendRequest,
    RecommendResponse,
    ScoredMovie,
)

DEFAULT_OUT = ROOT / "bench" / "results" / "serve.json"
DEFAULT_WORKDIR = Path("/tmp/movierec-bench-serve")
ML100K_SOURCE = Path("/work/shared/data/ml-100k")
MAX_LEN = 200
TOP_K = 10
BATCHES = (1, 8, 64)
CONNECTIONS = (1, 8, 32, 64)
QUICK_CONNECTIONS = (1, 32)
# onnx_fp32_served: the service's own call (engine.OnnxModel.run on the unpadded histories:
# each batch cut into length groups); the others all get the same max_len-padded input.
IMPLS = ("eager", "onnx_fp32", "onnx_int8", "onnx_fp32_served")
# Server name -> what it is; the order is the rotation start of the interleaved load points.
SERVERS = {
    "service_batched": "movierec serve, micro-batching on (ONNX fp32)",
    "service_unbatched": "movierec serve --max-batch-size 1 (ONNX fp32)",
    "service_int8": "movierec serve --precision int8, micro-batching on (the int8 option)",
    "eager": "plain FastAPI + PyTorch eager, one model call per request (seed design)",
    "constant": "service HTTP stack answering a constant list, no model (ceiling)",
}

# Targets (ml-100k SSE-PT, max_len 200, the 2-core machine).
TARGET_ONNX_SPEEDUP_B1 = 2.0      # eager ms / ONNX fp32 ms at batch 1
TARGET_CONNECTIONS = 32
TARGET_P99_MS = 50.0
TARGET_VS_EAGER = 5.0             # service req/s / eager server req/s
TARGET_VS_CEILING = 0.5           # service req/s / constant server req/s
TARGET_SERVER = "service_batched"  # the default configuration is the one judged

LIB_FILES = ("serving/app.py", "serving/engine.py", "serving/middleware.py",
             "serving/catalog.py", "export/runtime.py", "models/sse_pt.py")


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------

def _paths(workdir: Path) -> dict[str, Path]:
    """Where the prepared data, the bundle, the eager weights and the logs live."""
    return {"data": workdir / "ml-100k", "bundle": workdir / "bundle",
            "weights": workdir / "model.pt", "build": workdir / "build.json",
            "home": workdir / "home", "logs": workdir / "logs",
            "lua": workdir / "recommend.lua"}


def _physical_cores() -> int:
    """Distinct (package, core) pairs: what ONNX Runtime's default thread count follows."""
    cores, package = set(), "0"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or (os.cpu_count() or 1)


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


def _quantiles(samples: list[float]) -> dict[str, float]:
    """Median, p10, p90 and min of timings in milliseconds."""
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"median_ms": round(statistics.median(ordered), 3), "p10_ms": round(pick(0.1), 3),
            "p90_ms": round(pick(0.9), 3), "min_ms": round(ordered[0], 3),
            "calls": len(ordered)}


def _uvicorn_run(app: Any, port: int) -> None:
    """The service's uvicorn settings (``movierec.serving.app.run_server``), JSON logs."""
    import uvicorn

    from movierec.serving.logs import configure_logging

    configure_logging("info")
    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                server_header=False, timeout_graceful_shutdown=10, log_level="info")


# ---------------------------------------------------------------------------------------
# Workers: each runs in its own interpreter and writes one JSON result
# ---------------------------------------------------------------------------------------

def work_build(workdir: Path, epochs: int) -> dict[str, Any]:
    """Prepare ml-100k, train SSE-PT (max_len 200) for a few epochs, write the bundle.

    Latency does not depend on model quality; a briefly trained model has realistic
    weights (int8 quantisation sees real ranges) without the cost of a full run.
    """
    import torch

    from movierec.data.dataset import load_sequences
    from movierec.models.config import ModelConfig
    from movierec.registry.bundle import write_bundle
    from movierec.training.config import TrainConfig
    from movierec.training.loop import fit

    paths = _paths(workdir)
    if not (paths["data"] / "dataset.json").exists():
        cmd = [str(Path(sys.executable).with_name("movierec")), "data", "prepare",
               "--dataset", "ml-100k", "--source", str(ML100K_SOURCE), "--out",
               str(paths["data"])]
        env = {**os.environ, "MOVIEREC_HOME": str(paths["home"])}
        subprocess.run(cmd, check=True, env=env)
    config = TrainConfig(epochs=epochs, model=ModelConfig(max_len=MAX_LEN))
    data = load_sequences(paths["data"])
    started = time.perf_counter()
    result = fit(config, data, progress=False)
    train_seconds = time.perf_counter() - started
    torch.save(result.model.state_dict(), paths["weights"])
    started = time.perf_counter()
    meta = write_bundle(result.model, config, paths["data"], paths["bundle"],
                        run_metrics={"valid": result.valid, "test": result.test})
    _require_int8(meta)
    return {"train_seconds": round(train_seconds, 1), "epochs": epochs,
            "export_seconds": round(time.perf_counter() - started, 1),
            "train_config": config.model_dump(mode="json"), "data_version": meta["data_version"],
            "n_users": meta["n_users"], "n_items": meta["n_items"],
            "valid_full_ndcg_10": meta["metrics"]["valid"]["full"]["ndcg@10"]}


def work_export(workdir: Path) -> dict[str, Any]:
    """Re-export the bundle from the saved weights (no training) with the current exporter.

    Run whenever the weights are reused, so the served graph is always the one this
    checkout produces.
    """
    import torch

    from movierec.data.dataset import load_sequences
    from movierec.models import build_model
    from movierec.registry.bundle import write_bundle
    from movierec.training.config import TrainConfig

    paths = _paths(workdir)
    built = json.loads(paths["build"].read_text())
    config = TrainConfig.model_validate(built["train_config"])
    data = load_sequences(paths["data"])
    model = build_model(config.model, data.n_users, data.n_items)
    model.load_state_dict(torch.load(paths["weights"], map_location="cpu", weights_only=True))
    old = json.loads((paths["bundle"] / "metadata.json").read_text())
    started = time.perf_counter()
    meta = write_bundle(model.eval(), config, paths["data"], paths["bundle"],
                        run_metrics=old["metrics"], git_commit=old["git_commit"],
                        trained_at=old["trained_at"])
    _require_int8(meta)
    return {"export_seconds": round(time.perf_counter() - started, 1)}


def _require_int8(meta: dict[str, Any]) -> None:
    """Stop when the exporter left the int8 model out: the benchmark measures it too."""
    parity = meta["parity"]
    if "int8" not in parity["models"]:
        raise SystemExit("the bundle has no int8 model to benchmark: "
                         + "; ".join(parity.get("int8_reasons") or ["quantisation was off"]))


def _eager_model(bundle: Path, weights: Path) -> tuple[Any, dict[str, Any]]:
    """The bundle's SSE-PT as a PyTorch module in eval mode, and the bundle metadata."""
    import torch

    from movierec.models import build_model
    from movierec.models.config import ModelConfig

    meta = json.loads((bundle / "metadata.json").read_text())
    model = build_model(ModelConfig(**meta["model_config"]), int(meta["n_users"]),
                        int(meta["n_items"]))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), meta


def work_latency(workdir: Path, seconds_per_cell: float) -> dict[str, Any]:
    """Time ``score_all`` of eager PyTorch, ONNX fp32 and ONNX int8 on one thread.

    Inputs are real users' histories, left padded to max_len, the same for eager, fp32 and
    int8; ``onnx_fp32_served`` is the service's call on the same users' unpadded histories
    (padding only to each length group's longest). The implementations take turns in
    rounds, so a slow phase of the shared machine hits all of them.
    """
    import numpy as np
    import torch

    from movierec.export.onnx import ort_session
    from movierec.serving.catalog import load_catalog
    from movierec.serving.engine import OnnxModel

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    paths = _paths(workdir)
    model, meta = _eager_model(paths["bundle"], paths["weights"])
    catalog = load_catalog(paths["bundle"], meta)
    sessions = {"onnx_fp32": ort_session(paths["bundle"] / "model.onnx", threads=1),
                "onnx_int8": ort_session(paths["bundle"] / "model.int8.onnx", threads=1)}
    max_len = int(meta["max_len"])
    served = OnnxModel(paths["bundle"] / "model.onnx", max_len, int(meta["n_items"]), threads=1)
    users_all = np.array(sorted(catalog.histories), dtype=np.int64)
    rng = np.random.default_rng(0)

    def runner(impl: str, users: np.ndarray, seqs: np.ndarray) -> Callable[[], np.ndarray]:
        if impl == "eager":
            tu, ts = torch.from_numpy(users), torch.from_numpy(seqs)

            def call() -> np.ndarray:
                with torch.inference_mode():
                    return model.score_all(tu, ts).numpy()
            return call
        if impl == "onnx_fp32_served":  # the service's call: unpadded histories in
            histories = [catalog.histories[int(u)] for u in users]
            return lambda: served.run(users, histories)
        session = sessions[impl]
        feeds = {"users": users, "seqs": seqs}
        return lambda: session.run(["scores"], feeds)[0]

    results: dict[str, Any] = {}
    rounds = 3
    for batch in BATCHES:
        users = rng.choice(users_all, size=batch, replace=batch > users_all.size)
        seqs = np.zeros((batch, max_len), dtype=np.int64)
        for row, user in enumerate(users):
            tail = catalog.histories[int(user)][-max_len:]
            seqs[row, max_len - tail.size:] = tail
        calls = {impl: runner(impl, users, seqs) for impl in IMPLS}
        reference = calls["eager"]()
        agreement = {}
        for impl in IMPLS[1:]:
            got = calls[impl]()
            diff = np.abs(got[:, 1:].astype(np.float64) - reference[:, 1:])
            agreement[impl] = round(float(diff.max()), 6)
        samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for impl in IMPLS:
            for _ in range(3):
                calls[impl]()  # warm-up (allocator, ORT arena)
        for round_ in range(rounds):
            order = IMPLS[round_ % len(IMPLS):] + IMPLS[:round_ % len(IMPLS)]
            for impl in order:
                call = calls[impl]
                deadline = time.perf_counter() + seconds_per_cell / rounds
                count = 0
                while count < 3 or time.perf_counter() < deadline:
                    started = time.perf_counter()
                    call()
                    samples[impl].append((time.perf_counter() - started) * 1000)
                    count += 1
        cell = {impl: _quantiles(samples[impl]) for impl in IMPLS}
        for impl in IMPLS:
            cell[impl]["per_row_ms"] = round(cell[impl]["median_ms"] / batch, 4)
        cell["max_abs_diff_vs_eager"] = agreement
        cell["speedup_vs_eager"] = {impl: round(cell["eager"]["median_ms"]
                                                / cell[impl]["median_ms"], 2)
                                    for impl in IMPLS[1:]}
        results[str(batch)] = cell
    return {"threads": {"torch": torch.get_num_threads(), "onnxruntime_intra_op": 1},
            "seconds_per_cell": seconds_per_cell, "batches": results,
            "versions": {"torch": torch.__version__, "onnxruntime": version("onnxruntime")}}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {"build": work_build,
                                                     "export": work_export,
                                                     "latency": work_latency}


# ---------------------------------------------------------------------------------------
# Servers launched by the parent (`--_eager-server`, `--_constant-server`)
# ---------------------------------------------------------------------------------------

def eager_server(port: int, bundle: Path, weights: Path, threads: int) -> None:
    """Plain FastAPI + PyTorch eager: each request runs the model alone (the seed's design).

    Same request and response bodies as the service (pydantic models), history from the
    bundle, ``score_all`` then ``topk`` with the history masked. A sync route, so FastAPI
    runs requests in its thread pool (torch releases the GIL: up to 2 run at once).
    """
    import numpy as np
    import torch
    from fastapi import FastAPI

    from movierec.serving.catalog import load_catalog

    torch.set_num_threads(threads)
    model, meta = _eager_model(bundle, weights)
    catalog = load_catalog(bundle, meta)
    max_len = int(meta["max_len"])
    empty = np.zeros(0, dtype=np.int64)
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/recommend", response_model=RecommendResponse)
    def recommend(body: RecommendRequest) -> RecommendResponse:
        user = catalog.user_idx_by_id.get(body.user_id, 0) if body.user_id is not None else 0
        history = torch.from_numpy(catalog.histories.get(user, empty))
        seqs = torch.zeros(1, max_len, dtype=torch.int64)
        tail = history[-max_len:]
        if tail.numel():
            seqs[0, max_len - tail.numel():] = tail
        with torch.inference_mode():
            scores = model.score_all(torch.tensor([user]), seqs)[0]
            if body.exclude_seen and history.numel():
                scores[history] = float("-inf")
            values, best = torch.topk(scores, body.top_k)
        items = [ScoredMovie(**asdict(catalog.movie(i)), score=s)
                 for i, s in zip(best.tolist(), values.tolist(), strict=True)]
        return RecommendResponse(items=items, model_version="eager", unknown_movie_ids=[],
                                 fallback=None, user_known=user != 0)

    _uvicorn_run(app, port)


def constant_server(port: int, bundle: Path | None) -> None:
    """The service's HTTP stack (middlewares, JSON logs, validation, response model) with a
    constant answer: 10 real movies from ``bundle`` (or placeholders), no model, no lookup."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError

    from movierec.serving.errors import validation_error_handler
    from movierec.serving.metrics import ServingMetrics
    from movierec.serving.middleware import BodyLimitMiddleware, RequestMetricsMiddleware
    from movierec.serving.settings import ServeSettings

    if bundle is not None:
        from movierec.serving.catalog import load_catalog

        meta = json.loads((bundle / "metadata.json").read_text())
        catalog = load_catalog(bundle, meta)
        items = [ScoredMovie(**asdict(catalog.movie(int(i))), score=12.345678901234567 - rank)
                 for rank, i in enumerate(catalog.popularity_order[:TOP_K])]
    else:
        items = [ScoredMovie(movie_id=i, title=f"Movie {i} (1995)", year=1995,
                             genres=["Drama"], score=12.345678901234567 - i) for i in range(TOP_K)]
    answer = RecommendResponse(items=items, model_version="constant", unknown_movie_ids=[],
                               fallback=None, user_known=True)
    defaults = ServeSettings.model_fields
    metrics = ServingMetrics()
    app = FastAPI(docs_url=None, redoc_url=None)
    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]
    app.add_middleware(BodyLimitMiddleware, default_limit=defaults["max_body_bytes"].default,
                       limits={"/feedback": defaults["max_feedback_body_bytes"].default})
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> RecommendResponse:
        del body
        return answer

    _uvicorn_run(app, port)


# ---------------------------------------------------------------------------------------
# Parent: bundle, latency, servers, wrk, summary, targets, report
# ---------------------------------------------------------------------------------------

def run_worker(name: str, workdir: Path, *extra: str) -> dict[str, Any]:
    """Run one worker (``WORKERS``) in a fresh interpreter and return its JSON result."""
    return _run_worker(Path(__file__).resolve(), [name, *extra, "--workdir", str(workdir)],
                       workdir / f".result-{name}.json")


def ensure_bundle(workdir: Path, epochs: int) -> dict[str, Any]:
    """Build the bundle and eager weights unless a complete max_len-200 pair is there
    (then only re-export the bundle from the weights)."""
    paths = _paths(workdir)
    meta_file = paths["bundle"] / "metadata.json"
    if meta_file.exists() and paths["weights"].exists() and paths["build"].exists():
        meta = json.loads(meta_file.read_text())
        if int(meta["max_len"]) == MAX_LEN:
            built = {**json.loads(paths["build"].read_text()), "reused": True}
            # The weights are reused; the graph is always this checkout's exporter's.
            print("re-exporting the bundle with the current exporter ...", flush=True)
            built["reexport"] = run_worker("export", workdir)
            return built
    print(f"building the ml-100k SSE-PT bundle (max_len {MAX_LEN}, {epochs} epochs) in "
          f"{workdir} ...", flush=True)
    built = run_worker("build", workdir, "--epochs", str(epochs))
    paths["build"].write_text(json.dumps(built, indent=2))
    return {**built, "reused": False}


def bundle_summary(bundle: Path) -> dict[str, Any]:
    """What was served: model config, sizes, parity and file sizes from metadata.json."""
    meta = json.loads((bundle / "metadata.json").read_text())
    return {"path": str(bundle), "max_len": meta["max_len"], "model_config": meta["model_config"],
            "n_users": meta["n_users"], "n_items": meta["n_items"],
            "data_version": meta["data_version"], "parity": meta.get("parity"),
            "file_mib": {name: round((bundle / name).stat().st_size / 2**20, 2)
                         for name in meta["files"]}}


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
    me = [sys.executable, str(Path(__file__).resolve())]
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


def machine_info() -> dict[str, Any]:
    """The machine, library and tool versions, and the event loop uvicorn will use."""
    info = _machine_info(("torch", "onnxruntime", "fastapi", "uvicorn", "starlette", "pydantic",
                          "numpy", "uvloop", "httptools"), LIB_FILES)
    versions = info["versions"]
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    text = wrk.stdout + wrk.stderr
    return {**info, "wrk": text.splitlines()[0] if text else None,
            # uvicorn picks uvloop/httptools when installed, else asyncio + h11.
            "uvicorn_loop_http": ("uvloop" if versions["uvloop"] else "asyncio") + " + "
                                 + ("httptools" if versions["httptools"] else "h11")}


def _point(report: dict[str, Any], server: str, connections: int) -> dict[str, Any] | None:
    return report["http"]["points"].get(server, {}).get(str(connections))


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """Pass/fail per target as measured; a target whose data was not measured fails."""
    targets: dict[str, Any] = {}
    b1 = report.get("latency", {}).get("batches", {}).get("1")
    if b1:
        speedup = b1["speedup_vs_eager"]["onnx_fp32"]
        targets["onnx_fp32_speedup_batch1"] = {
            "target": f">= {TARGET_ONNX_SPEEDUP_B1:g}x eager (1 thread)",
            "value": f"{speedup}x ({b1['eager']['median_ms']} ms -> "
                     f"{b1['onnx_fp32']['median_ms']} ms)",
            "pass": speedup >= TARGET_ONNX_SPEEDUP_B1}
    c = TARGET_CONNECTIONS
    ours = _point(report, TARGET_SERVER, c)
    eager, ceiling = _point(report, "eager", c), _point(report, "constant", c)
    if ours is None:
        return {**targets, "http": {"target": f"{c} connections measured", "value": "not run",
                                    "pass": False}}
    targets["errors_at_32"] = {"target": f"0 errors at {c} connections",
                               "value": ours["errors"], "pass": ours["errors"] == 0}
    targets["p99_at_32"] = {"target": f"p99 < {TARGET_P99_MS:g} ms at {c} connections",
                            "value": ours["p99_ms"], "pass": ours["p99_ms"] < TARGET_P99_MS}
    if eager:
        ratio = ours["requests_per_sec"] / eager["requests_per_sec"]
        targets["throughput_vs_eager_at_32"] = {
            "target": f">= {TARGET_VS_EAGER:g}x the eager server's req/s at {c} connections",
            "value": f"{ratio:.2f}x ({ours['requests_per_sec']:.0f} vs "
                     f"{eager['requests_per_sec']:.0f} req/s)",
            "pass": ratio >= TARGET_VS_EAGER}
    if ceiling:
        ratio = ours["requests_per_sec"] / ceiling["requests_per_sec"]
        targets["throughput_vs_ceiling_at_32"] = {
            "target": f">= {TARGET_VS_CEILING:.0%} of the constant-answer ceiling at {c} "
                      "connections",
            "value": f"{ratio:.0%} ({ours['requests_per_sec']:.0f} vs "
                     f"{ceiling['requests_per_sec']:.0f} req/s)",
            "pass": ratio >= TARGET_VS_CEILING}
    return targets


def markdown(report: dict[str, Any]) -> str:
    """Latency table, HTTP table and targets."""
    lines: list[str] = []
    latency = report.get("latency")
    if latency:
        lines += ["Model latency, `score_all`, 1 thread, median ms (speedup vs eager); "
                  "fp32/int8 on the same max_len-padded input as eager, served = the "
                  "service's call on unpadded histories:", "",
                  "| batch | eager | ONNX fp32 | ONNX int8 | fp32 served | fp32 per row | "
                  "served per row |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for batch, cell in latency["batches"].items():
            s = cell["speedup_vs_eager"]
            served = cell.get("onnx_fp32_served")
            lines.append(f"| {batch} | {cell['eager']['median_ms']:.2f} | "
                         f"{cell['onnx_fp32']['median_ms']:.2f} ({s['onnx_fp32']:.2f}x) | "
                         f"{cell['onnx_int8']['median_ms']:.2f} ({s['onnx_int8']:.2f}x) | "
                         + (f"{served['median_ms']:.2f} ({s['onnx_fp32_served']:.2f}x) | "
                            if served else "- | ")
                         + f"{cell['onnx_fp32']['per_row_ms']:.3f} | "
                         + (f"{served['per_row_ms']:.3f} |" if served else "- |"))
        lines.append("")
    http = report.get("http", {}).get("points", {})
    if http:
        lines += [f"HTTP load, wrk {report['http']['seconds']:g} s per point, POST /recommend "
                  "(top 10, known users):", "",
                  "| server | conns | req/s | p50 ms | p99 ms | errors | mean batch | "
                  "server cores | wrk cores | other cores |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in SERVERS:
            for conns, p in sorted(http.get(name, {}).items(), key=lambda kv: int(kv[0])):
                batch = p.get("engine", {}).get("mean_batch_size", "")
                lines.append(f"| {name} | {conns} | {p['requests_per_sec']:.0f} | "
                             f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors']} | {batch} | "
                             f"{p['cpu']['server_cores']:.2f} | {p['cpu']['wrk_cores']:.2f} | "
                             f"{p['cpu']['other_cores']:.2f} |")
        lines.append("")
    targets = report.get("targets", {})
    if targets:
        lines += [f"Targets (judged on {TARGET_SERVER}; load average "
                  f"{report['load_before'][0]:.2f} before, "
                  f"{report.get('load_after', [float('nan')])[0]:.2f} after):", ""]
        for name, t in targets.items():
            lines.append(f"- {name}: {t['target']}: {t['value']} -> "
                         f"{'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines)


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
        "settings": {"service_threads": args.service_threads or "service default (1)",
                     "model": ("a thread of the server (--no-model-process)" if args.model_thread
                               else "a child process of the server (service default)"),
                     "physical_cores": _physical_cores(),
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


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Bundle, model latency, HTTP load; JSON after every step."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make wrk-deps` installs it (Debian)")
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    paths = _paths(workdir)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "serve", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False, "quick": args.quick, "workdir": str(workdir),
        "machine": machine_info(), "load_before": os.getloadavg()}
    # A shared machine: say in the results when others were using it (numbers then drift).
    report["loaded"] = report["load_before"][0] > 0.5 * (os.cpu_count() or 1)
    report["build"] = ensure_bundle(workdir, args.epochs)
    report["bundle"] = bundle_summary(paths["bundle"])
    write_json(report, args.out)
    if not args.skip_latency:
        print("timing score_all (eager, ONNX fp32, ONNX int8) on one thread ...", flush=True)
        report["latency"] = run_worker("latency", workdir, "--latency-seconds",
                                       str(args.latency_seconds))
        write_json(report, args.out)
    connections = tuple(int(c) for c in args.connections.split(","))
    run_http(args, paths, report, connections)
    report["targets"] = evaluate_targets(report)
    report["load_after"] = os.getloadavg()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["complete"] = True
    write_json(report, args.out)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the ``--_...`` ones are internal (workers and servers)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="prepared data, bundle and weights (reused), server logs")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: connections {QUICK_CONNECTIONS}, 3 s per point, "
                             "short latency cells")
    parser.add_argument("--seconds", type=float, help="wrk duration per point (default 10)")
    parser.add_argument("--connections", help="comma-separated wrk connection counts "
                        f"(default {','.join(map(str, CONNECTIONS))})")
    parser.add_argument("--repeats", type=int, default=1,
                        help="HTTP runs per point (the median-throughput run is reported)")
    parser.add_argument("--warmup", type=float, help="wrk warm-up seconds per server")
    parser.add_argument("--latency-seconds", type=float,
                        help="timing budget per implementation and batch (default 2)")
    parser.add_argument("--skip-latency", action="store_true", help="HTTP load only")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (1 or 2)")
    parser.add_argument("--wrk-timeout", type=float, default=5.0,
                        help="seconds before wrk counts a request as a timeout error")
    parser.add_argument("--service-threads", type=int,
                        help="movierec serve --threads (ONNX Runtime intra-op threads; "
                             "default: the service's own, 1)")
    parser.add_argument("--model-thread", action="store_true",
                        help="serve with movierec serve --no-model-process (the model in a "
                             "thread of the server instead of a child process)")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="movierec serve --max-batch-size when batching is on")
    parser.add_argument("--max-queue-delay-ms", type=float, default=2.0,
                        help="movierec serve --max-queue-delay-ms")
    parser.add_argument("--eager-threads", type=int, default=1,
                        help="torch intra-op threads of the eager server")
    parser.add_argument("--epochs", type=int, default=2,
                        help="training epochs when the bundle is built")
    parser.add_argument("--_worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--_eager-server", nargs=3, metavar=("PORT", "BUNDLE", "WEIGHTS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--_constant-server", nargs="+", metavar="PORT [BUNDLE]",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup or (1.0 if args.quick else 2.0)
    args.latency_seconds = args.latency_seconds or (0.6 if args.quick else 2.0)
    args.connections = args.connections or ",".join(
        map(str, QUICK_CONNECTIONS if args.quick else CONNECTIONS))
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.wrk_threads not in (1, 2):
        parser.error("--wrk-threads must be 1 or 2 (the machine has 2 cores)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, or one worker or server when called by it."""
    args = parse_args(argv)
    if args._eager_server:
        port, bundle, weights = args._eager_server
        eager_server(int(port), Path(bundle), Path(weights), args.eager_threads)
        return 0
    if args._constant_server:
        port, *rest = args._constant_server
        constant_server(int(port), Path(rest[0]) if rest else None)
        return 0
    if args._worker:
        if args._worker == "build":
            result = work_build(args.workdir, args.epochs)
        elif args._worker == "export":
            result = work_export(args.workdir)
        else:
            result = work_latency(args.workdir, args.latency_seconds)
        args._result.write_text(json.dumps(result))
        return 0
    report = run_benchmark(args)
    print()
    print(markdown(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
