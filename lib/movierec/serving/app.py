"""The recommendation service: ``create_app(settings)`` builds the FastAPI app.

Routes: ``/recommend`` and ``/predict`` (same answer), ``/feedback``, ``/health``, ``/ready``,
``/version``, ``/metrics``, ``/users/{id}/history``, ``/demo/users``, the demo page at ``/``
and ``/admin/reload`` (Bearer token). The bundle is verified and warmed up before the app
exists, so a bad bundle stops ``create_app`` with a :class:`BundleError`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated

import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse

from movierec import __version__
from movierec.serving.admin import ReloadManager, admin_router
from movierec.serving.batcher import MicroBatcher, OverloadedError, ShuttingDownError
from movierec.serving.catalog import BundleError, Catalog, movie_json_prefix
from movierec.serving.drift import DriftGauges
from movierec.serving.engine import LoadedBundle, load_bundle, top_k
from movierec.serving.errors import validation_error_handler
from movierec.serving.feedback import (
    FeedbackConflictError,
    FeedbackEvent,
    FeedbackOutcomeUnknownError,
    FeedbackStore,
    FeedbackStoreFullError,
    FeedbackWriteError,
    open_store,
)
from movierec.serving.history import OnlineHistory, resolve_history, resolve_history_ties
from movierec.serving.logs import configure_logging
from movierec.serving.metrics import ServingMetrics
from movierec.serving.middleware import BodyLimitMiddleware, RequestMetricsMiddleware
from movierec.serving.page import load_page
from movierec.serving.schemas import (
    ADMIN_ERROR_RESPONSES,
    ERROR_RESPONSES,
    FEEDBACK_ERROR_RESPONSES,
    INT64_MAX,
    DemoUserOut,
    DemoUsersResponse,
    FeedbackRequest,
    FeedbackResponse,
    HistoryResponse,
    MovieOut,
    PredictRequest,
    ReadyResponse,
    RecommendRequest,
    RecommendResponse,
    VersionResponse,
)
from movierec.serving.settings import ENV_ADMIN_TOKEN, ServeSettings
from movierec.serving.worker import ModelProcessError

__all__ = ["BundleError", "ServeSettings", "ServingState", "create_app", "run_server"]
log = logging.getLogger("movierec.serving")
JSON = "application/json"
RETRY_AFTER_S = "5"  # seconds a client should wait after a 503 (feedback store or model)
# Feedback writes waiting for the store at once; beyond, 503 at once: each holds its body
# (up to 256 KB) while it waits, and a slow disk must not grow the server without bound.
MAX_FEEDBACK_WAITING = 64
# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
# With the model in this process (--no-model-process), its thread needs the GIL for a few
# microseconds after every ONNX Runtime call; under load the event loop would keep it for
# the whole default interval each time, idling the model. 50 us: 3,060 instead of 2,720
# req/s at 32 connections on 2 cores (bench/serve.py). The model process has no such wait.
GIL_SWITCH_INTERVAL_S = 50e-6


class ServingState:
    """What the routes share; ``bundle`` is replaced as one reference by a reload."""

    def __init__(self, settings: ServeSettings, bundle: LoadedBundle, store: FeedbackStore,
                 online: OnlineHistory, metrics: ServingMetrics, batcher: MicroBatcher) -> None:
        self.settings = settings
        self.bundle = bundle
        self.store = store
        self.online = online
        self.metrics = metrics
        self.batcher = batcher
        self.drift = DriftGauges(metrics)
        self.started = False
        self.feedback_waiting = 0  # /feedback requests waiting for the store

    def publish(self, bundle: LoadedBundle) -> None:
        """Swap in a loaded bundle (requests already running keep the one they took)."""
        self.bundle = bundle
        self.drift.reset(bundle.catalog)
        meta = bundle.meta
        self.metrics.set_model(bundle.version, bundle.alias, bundle.precision,
                               str(meta.get("run_id", "")), str(meta.get("data_version", "")))

    async def recommend(self, user_id: int | None, sequence: list[int] | None, k: int,
                        exclude_seen: bool) -> bytes:
        """Top-k movies for a user and/or a sequence, with the cold-start fallbacks.

        Returns:
            The ``RecommendResponse`` as JSON bytes, rendered from each movie's pre-rendered
            JSON (the route declares the model, so the schema and the docs stay exact).
        """
        limit = self.settings.max_sequence_length
        if sequence is not None and len(sequence) > limit:
            raise RequestValidationError([{
                "type": "too_long", "loc": ("body", "sequence"), "input": None,
                "msg": f"sequence has {len(sequence)} movie ids; send at most {limit} "
                       "(the most recent ones)"}])
        bundle = self.bundle  # one snapshot for the whole request
        catalog = bundle.catalog
        user_idx = catalog.user_idx_by_id.get(user_id) if user_id is not None else None
        unknown: list[int] = []
        ties = 0  # a sequence sent in the request comes without times
        if sequence is not None:
            history, unknown = catalog.to_indices(sequence)
        else:
            history, ties = resolve_history_ties(catalog, self.online, user_id)
        if unknown:
            self.metrics.unknown_items.inc(len(unknown))
        self.metrics.sequence_length.observe(history.size)
        exclude = history if exclude_seen else None
        if history.size == 0:
            fallback: str | None = "popularity"
            best, values = top_k(catalog.train_count, k, exclude)
        else:
            fallback = None if user_idx is not None else "no_user_embedding"
            # Only a model scored over tie orders is told about ties.
            best, values = await self.batcher.top_k(bundle.model, user_idx or 0, history, k,
                                                    exclude, ties if bundle.tie_orders > 1 else 0)
        if fallback is not None:
            self.metrics.fallbacks.labels(kind=fallback).inc()
        self.metrics.recommended_popularity.observe_many(catalog.popularity_pct[best])
        items = [f"{catalog.json_prefix[item] or catalog_entry_prefix(catalog, item)}"
                 f"{value!r}}}" for item, value in zip(best.tolist(), values.tolist(),
                                                       strict=True)]
        tail = json.dumps({"model_version": bundle.version, "unknown_movie_ids": unknown,
                           "fallback": fallback, "user_known": user_idx is not None})
        return f'{{"items": [{", ".join(items)}], {tail[1:]}'.encode()

    def history(self, user_id: int, limit: int) -> tuple[bool, int, list[MovieOut]]:
        """(user known, history length, most recent ``limit`` movies, newest first)."""
        catalog = self.bundle.catalog
        items = resolve_history(catalog, self.online, user_id)
        recent = items[::-1][:limit].tolist()
        return (user_id in catalog.user_idx_by_id, int(items.size),
                [MovieOut(**asdict(catalog.movie(i))) for i in recent])


def create_app(settings: ServeSettings) -> FastAPI:
    """Build the app: open the feedback store, load and warm up the bundle, wire the routes.

    Raises:
        BundleError: The bundle fails verification or cannot be loaded (nothing is served).
        FeedbackStoreError: The feedback URL is unusable.
    """
    metrics = ServingMetrics()
    store = open_store(settings.resolved_feedback_url())
    try:
        online = OnlineHistory(settings.max_sequence_length, settings.max_online_events)
        replayed = online.extend(store.watches())
        bundle = load_bundle(settings.bundle, settings.precision, settings.threads,
                             settings.device, settings.model_version, settings.model_alias,
                             isolate=settings.model_process)
    except BaseException:
        store.close()
        raise
    batcher = MicroBatcher(settings.max_batch_size, settings.max_queue_delay_ms, metrics,
                           max_queued=settings.max_queued_requests)
    state = ServingState(settings, bundle, store, online, metrics, batcher)
    state.publish(bundle)
    reloads = ReloadManager(state)
    page, page_csp = load_page()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        state.started = True
        log.info("serving", extra={
            "bundle": str(bundle.path), "version": bundle.version,
            "precision": bundle.precision, "providers": bundle.model.providers,
            "max_batch_size": settings.max_batch_size, "feedback_db": str(store.path),
            "watches_replayed": replayed,
            "admin_api": "enabled" if settings.admin_token else f"disabled ({ENV_ADMIN_TOKEN} "
                                                                 "not set)"})
        try:
            yield
        finally:
            state.started = False
            await reloads.cancel()
            await batcher.stop()
            await asyncio.to_thread(state.bundle.model.close)
            store.close()

    app = FastAPI(title="movierec", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # the docs UIs load from a CDN
                  responses=ERROR_RESPONSES)
    app.state.serving = state
    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]

    @app.exception_handler(ModelProcessError)
    async def model_process_error(request: Request, exc: ModelProcessError) -> JSONResponse:
        log.error("model process error", extra={"error": str(exc), "gone": exc.gone})
        # A failed batch's detail (ONNX Runtime's text) goes to the log, not to clients.
        message = (f"{exc}; the service cannot score until it is restarted or a bundle is "
                   "reloaded" if exc.gone else "the model failed to score this request's "
                   "batch; try again (the detail is in the service log)")
        return JSONResponse({"detail": message}, status_code=503,  # ErrorResponse
                            headers={"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(ShuttingDownError)
    @app.exception_handler(OverloadedError)
    async def shutting_down(request: Request, exc: RuntimeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503,
                            headers={"Retry-After": RETRY_AFTER_S})
    app.add_middleware(BodyLimitMiddleware, default_limit=settings.max_body_bytes,
                       limits={"/feedback": settings.max_feedback_body_bytes})
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "Authorization"])
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)  # outermost: sees 413s
    app.include_router(admin_router(reloads), responses=ADMIN_ERROR_RESPONSES)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": page_csp,
                                           "X-Content-Type-Options": "nosniff"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        # Browsers ask for it on every page load; "no content" keeps their consoles clean.
        return Response(status_code=204)

    @app.get("/health", responses={503: {}})
    async def health() -> JSONResponse:
        """Liveness: the process answers and its model process runs (else restart me)."""
        if not state.bundle.model.alive:
            return JSONResponse({"status": "model process exited"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/ready", response_model=ReadyResponse,
             responses={503: {"model": ReadyResponse, "description": "Not ready: see reason"}})
    async def ready() -> JSONResponse:
        """Readiness: a verified, warmed-up bundle is served and the batcher runs."""
        if not state.started:
            return JSONResponse(ReadyResponse(ready=False, reason="starting or stopping")
                                .model_dump(), status_code=503)
        if not state.bundle.model.alive:
            return JSONResponse(ReadyResponse(
                ready=False, reason="the model process has exited: restart the server or "
                "reload a bundle (POST /admin/reload)").model_dump(), status_code=503)
        return JSONResponse(ReadyResponse(ready=True, version=state.bundle.version).model_dump())

    @app.get("/version", response_model=VersionResponse)
    async def version() -> VersionResponse:
        """What is served: registry version and alias, data version, training run."""
        b = state.bundle
        meta = b.meta
        return VersionResponse(
            name=str(meta.get("name", "movierec")), version=b.version, alias=b.alias,
            data_version=str(meta.get("data_version", "")),
            trained_at=str(meta.get("trained_at", "")), run_id=str(meta.get("run_id", "")),
            precision=b.precision, model_kind=str(meta.get("model_kind", "")),
            git_commit=str(meta.get("git_commit", "")))

    @app.get("/metrics", include_in_schema=False)
    async def metrics_text() -> Response:
        state.drift.refresh()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest) -> Response:
        """Top-k movies for a user (stored history) or a sequence of movie ids."""
        return Response(await state.recommend(body.user_id, body.sequence, body.top_k,
                                              body.exclude_seen), media_type=JSON)

    @app.post("/predict", response_model=RecommendResponse)
    async def predict(body: PredictRequest) -> Response:
        """The seed service's route: same answer as ``/recommend`` (seen movies excluded)."""
        return Response(await state.recommend(body.user_id, body.sequence, body.top_k, True),
                        media_type=JSON)

    @app.post("/feedback", response_model=FeedbackResponse, responses=FEEDBACK_ERROR_RESPONSES)
    async def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Store events; the answer comes only after they are committed to disk."""
        events = [FeedbackEvent(e.user_id, e.movie_id, e.event, e.timestamp, e.event_id)
                  for e in body.events]
        if state.feedback_waiting >= MAX_FEEDBACK_WAITING:
            raise HTTPException(503, f"feedback store busy ({MAX_FEEDBACK_WAITING} writes "
                                "waiting): none of these events were stored; retry shortly",
                                headers={"Retry-After": RETRY_AFTER_S})
        state.feedback_waiting += 1
        try:
            stored = await asyncio.to_thread(state.store.add, events, state.bundle.version)
        except FeedbackStoreFullError as exc:
            # Expected under a full disk: one line, no traceback, and no server path in the
            # answer. Nothing of the request was stored, so the client may resend it all.
            log.error("feedback store full", extra={"error": str(exc)})
            raise HTTPException(503, "feedback store is full (no disk space left): none of "
                                "these events were stored; retry later",
                                headers={"Retry-After": RETRY_AFTER_S}) from exc
        except FeedbackConflictError as exc:  # a client bug: say so, lose nothing silently
            raise HTTPException(409, str(exc)) from exc
        except FeedbackOutcomeUnknownError as exc:
            log.error("feedback commit outcome unknown", extra={"error": str(exc)})
            raise HTTPException(503, "feedback store lost the connection while committing: "
                                "these events may have been stored; resending stores those "
                                "with an event_id once, the others perhaps twice",
                                headers={"Retry-After": RETRY_AFTER_S}) from exc
        except (FeedbackWriteError, sqlite3.Error) as exc:
            log.exception("feedback store failed")
            raise HTTPException(503, "feedback store unavailable: none of these events were "
                                "stored; retry later",
                                headers={"Retry-After": RETRY_AFTER_S}) from exc
        finally:
            state.feedback_waiting -= 1
        for event in events:
            # Every watch, resent ones too: a first try may have been stored and answered
            # 503 (its outcome unknown) before it got here. The history keeps one of each.
            if event.event == "watch":
                state.online.add(event.user_id, event.movie_id, event.timestamp)
        watched = []
        # Stored events only: a resend is not counted again (nor, after a 503 of unknown
        # outcome, ever: the first try stored it but never got here).
        for event in stored:
            metrics.feedback_events.labels(event=event.event).inc()
            if event.event == "watch":
                watched.append(event.movie_id)
        if watched:
            known, unknown = state.bundle.catalog.to_indices(watched)
            state.drift.observe(known, len(unknown))
        return FeedbackResponse(accepted=len(events), duplicates=len(events) - len(stored))

    @app.get("/users/{user_id}/history", response_model=HistoryResponse)
    async def user_history(
            user_id: Annotated[int, PathParam(ge=0, le=INT64_MAX)],
            limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> HistoryResponse:
        """A user's watch history (stored plus online watches), most recent first."""
        known, length, items = state.history(user_id, limit)
        return HistoryResponse(user_id=user_id, user_known=known, length=length, items=items)

    @app.get("/demo/users", response_model=DemoUsersResponse)
    async def demo_users(limit: Annotated[int, Query(ge=1, le=100)] = 10) -> DemoUsersResponse:
        """Three real users with different tastes, with their recent history."""
        users = []
        for demo in state.bundle.demo_users:
            _, length, recent = state.history(demo.user_id, limit)
            users.append(DemoUserOut(user_id=demo.user_id, top_genre=demo.top_genre,
                                     history_length=length, recent=recent))
        return DemoUsersResponse(users=users)

    return app


def run_server(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "info") -> None:
    """Serve until interrupted, logging JSON lines to stdout (blocking).

    Raises:
        BundleError: Before binding the port, when the bundle fails verification.
    """
    configure_logging(log_level)
    app = create_app(settings)
    # Everything loaded so far (modules, the catalogue, histories) lives as long as the
    # server: keep it out of the cyclic collector's scans, which otherwise show up as
    # latency spikes at the tail.
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False,
                server_header=False, timeout_graceful_shutdown=10, log_level=log_level)


def catalog_entry_prefix(catalog: Catalog, item: int) -> str:
    """JSON prefix of an item the catalogue table lacks (its placeholder entry)."""
    return movie_json_prefix(catalog.movie(item))
