"""``/admin/reload``: load a bundle in the background, verify, warm up, then swap atomically.

The swap replaces one reference; requests already running keep the bundle they started
with and the micro-batcher never mixes two models in one call, so no request fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from movierec.serving.catalog import BundleError
from movierec.serving.engine import LoadedBundle, Ranker, load_bundle
from movierec.serving.schemas import ReloadRequest, ReloadStatus

if TYPE_CHECKING:
    from movierec.serving.app import ServingState

log = logging.getLogger("movierec.serving")
# How long shutdown waits for a reload's loading thread (which cannot be interrupted) to
# finish, so that the model it loaded, and its child process, are closed too. Well inside
# Kubernetes' default 30 s grace period, with uvicorn's own shutdown.
LOAD_WAIT_AT_SHUTDOWN_S = 10.0


class ReloadManager:
    """Runs at most one reload at a time and remembers the latest outcome."""

    def __init__(self, state: ServingState) -> None:
        self.state = state
        self.status = ReloadStatus(status="idle")
        self._task: asyncio.Task[None] | None = None
        self._loading: asyncio.Future[LoadedBundle] | None = None  # the loading thread
        self._retiring: dict[asyncio.Task[None], Ranker] = {}  # old models still answering

    @property
    def running(self) -> bool:
        """Whether a reload is in progress."""
        return self._task is not None and not self._task.done()

    def start(self, request: ReloadRequest) -> asyncio.Task[None]:
        """Begin a reload (the caller checked :attr:`running`)."""
        current = self.state.bundle
        path = Path(request.bundle) if request.bundle else current.path
        precision = request.precision or current.precision
        alias = request.alias if request.alias is not None else current.alias
        self.status = ReloadStatus(status="running", bundle=str(path), started_at=time.time())
        self._task = asyncio.create_task(self._run(path, precision, request.version, alias),
                                         name="movierec-reload")
        return self._task

    async def _run(self, path: Path, precision: str, version: str | None,
                   alias: str) -> None:
        settings = self.state.settings
        metrics = self.state.metrics
        # Shielded: cancelling the reload (at shutdown) cannot stop the thread, and
        # ``cancel`` then waits for what it loads in order to close it.
        self._loading = asyncio.ensure_future(asyncio.to_thread(
            load_bundle, path, precision, settings.threads,  # type: ignore[arg-type]
            settings.device, version, alias, settings.model_process))
        try:
            bundle = await asyncio.shield(self._loading)
        except Exception as exc:
            # A failed reload keeps the current bundle: the service never stops serving.
            reason = str(exc) if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}"
            self.status = self.status.model_copy(update={
                "status": "failed", "error": reason, "finished_at": time.time()})
            metrics.reloads.labels(outcome="failed").inc()
            log.error("reload failed", extra={"bundle": str(path), "error": reason})
            return
        current = self.state.bundle
        if version is None and bundle.meta == current.meta:
            # The same files (every one's sha256 is in the metadata, checked on load): keep
            # the version the service was given (``serve --model-version``). New files in
            # the same folder are another model, named by their own metadata.
            bundle = dataclasses.replace(bundle, version=current.version)
        retired = current.model
        self.state.publish(bundle)
        # The old model answers what was admitted before the swap, then goes (a child
        # process would otherwise stay until the server exits).
        retiring = asyncio.create_task(self._retire(retired), name="movierec-retire")
        self._retiring[retiring] = retired
        retiring.add_done_callback(self._retiring.pop)
        self.status = self.status.model_copy(update={
            "status": "ok", "version": bundle.version, "finished_at": time.time()})
        metrics.reloads.labels(outcome="ok").inc()
        log.info("reloaded", extra={"bundle": str(path), "version": bundle.version,
                                    "precision": bundle.precision})

    async def _retire(self, model: Ranker) -> None:
        await self.state.batcher.drained(model)
        await asyncio.to_thread(model.close)

    async def cancel(self) -> None:
        """Stop a reload in progress and close the models still retiring (at shutdown).

        A bundle still loading is waited for (up to ``LOAD_WAIT_AT_SHUTDOWN_S``) and closed,
        so that no model process outlives the server.
        """
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        loading, self._loading = self._loading, None
        if loading is not None:
            try:  # done already, or its thread finishes within the wait
                bundle = await asyncio.wait_for(asyncio.shield(loading),
                                                LOAD_WAIT_AT_SHUTDOWN_S)
            except TimeoutError:
                log.warning("a reload was still loading at shutdown",
                            extra={"waited_s": LOAD_WAIT_AT_SHUTDOWN_S})
            except Exception:  # a failed load holds nothing to close
                pass
            else:
                # Loaded but never published (the reload was cancelled before the swap):
                # nothing else will close it. A published one is closed with the server.
                if bundle is not self.state.bundle:
                    await asyncio.to_thread(bundle.model.close)
        for task, model in list(self._retiring.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(model.close)


def admin_router(manager: ReloadManager) -> APIRouter:
    """Routes under ``/admin``, each behind the Bearer token."""

    def require_admin(request: Request) -> None:
        token = manager.state.settings.admin_token
        if token is None:
            raise HTTPException(403, "the admin API is disabled: start the server with "
                                     "MOVIEREC_ADMIN_TOKEN set")
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPException(401, "send 'Authorization: Bearer <admin token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        # Starlette decodes header bytes as latin-1: back to bytes the same way, so a
        # token with non-ASCII characters (sent as UTF-8) compares equal.
        if not hmac.compare_digest(given.strip().encode("latin-1"),
                                   token.get_secret_value().encode("utf-8")):
            raise HTTPException(403, "the admin token is not valid")

    router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

    @router.post("/reload", response_model=ReloadStatus,
                 responses={202: {"model": ReloadStatus}, 409: {}, 422: {}})
    async def reload(body: ReloadRequest | None = None) -> JSONResponse:
        """Load a bundle (default: the one served), verify, warm up and swap it in.

        Answers 202 at once, or with ``wait`` 200 after the swap / 422 when it failed.
        """
        request = body or ReloadRequest()
        if manager.running:
            raise HTTPException(409, "a reload is already running; GET /admin/reload shows it")
        task = manager.start(request)
        if not request.wait:
            return JSONResponse(manager.status.model_dump(), status_code=202)
        await asyncio.shield(task)
        code = 200 if manager.status.status == "ok" else 422
        return JSONResponse(manager.status.model_dump(), status_code=code)

    @router.get("/reload", response_model=ReloadStatus)
    async def reload_status() -> ReloadStatus:
        """The latest reload's state."""
        return manager.status

    return router
