"""Benchmark serving: model latency (PyTorch eager, ONNX fp32, ONNX int8) and HTTP load.

Builds (once, reused) an ml-100k SSE-PT bundle with ``max_len`` 200, times ``score_all`` at
batch 1, 8 and 64 on one thread, then loads four servers with ``wrk`` at 1, 8, 32 and 64
connections: ``movierec serve`` with micro-batching on and off, a plain FastAPI + PyTorch
eager server (one model call per request, the seed's design) and the service's own HTTP
stack answering a constant list (the ceiling). Writes JSON (``--out``) and prints a markdown
summary with the targets. README.md beside this file says what is measured.

The parts: ``serve_model.py`` (what runs in fresh interpreters: the bundle build, the
latency timing, the eager and constant servers), ``serve_http.py`` (servers and wrk) and
``serve_report.py`` (targets and markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py

from _common import machine_info as _machine_info  # noqa: E402
from _common import run_worker as _run_worker  # noqa: E402
from _common import write_json  # noqa: E402
from serve_http import run_http  # noqa: E402
from serve_model import (  # noqa: E402
    MAX_LEN,
    WORKERS,
    constant_server,
    eager_server,
    workdir_paths,
)
from serve_report import evaluate_targets, markdown  # noqa: E402

__all__ = ["ensure_bundle", "machine_info", "write_json"]  # what bench/reliability.py uses

DEFAULT_OUT = ROOT / "bench" / "results" / "serve.json"
DEFAULT_WORKDIR = Path("/tmp/movierec-bench-serve")
CONNECTIONS = (1, 8, 32, 64)
QUICK_CONNECTIONS = (1, 32)
LIB_FILES = ("serving/app.py", "serving/engine.py", "serving/middleware.py",
             "serving/catalog.py", "export/runtime.py", "models/sse_pt.py")


def run_worker(name: str, workdir: Path, *extra: str) -> dict[str, Any]:
    """Run one worker (``WORKERS``) in a fresh interpreter and return its JSON result."""
    return _run_worker(Path(__file__).resolve(), [name, *extra, "--workdir", str(workdir)],
                       workdir / f".result-{name}.json")


def ensure_bundle(workdir: Path, epochs: int) -> dict[str, Any]:
    """Build the bundle and eager weights unless a complete max_len-200 pair is there
    (then only re-export the bundle from the weights)."""
    paths = workdir_paths(workdir)
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


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Bundle, model latency, HTTP load; JSON after every step."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `make wrk-deps` installs it (Debian)")
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    paths = workdir_paths(workdir)
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
        worker = WORKERS[args._worker]
        if args._worker == "build":
            result = worker(args.workdir, args.epochs)
        elif args._worker == "latency":
            result = worker(args.workdir, args.latency_seconds)
        else:
            result = worker(args.workdir)
        args._result.write_text(json.dumps(result))
        return 0
    report = run_benchmark(args)
    print()
    print(markdown(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
