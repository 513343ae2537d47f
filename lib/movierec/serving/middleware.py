"""ASGI middleware: request body limits (413 with a fix) and request metrics + access log."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from movierec.serving.metrics import ServingMetrics

log = logging.getLogger("movierec.serving.access")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Methods a client may send are unbounded (WebDAV's PROPFIND...): others share one label.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


async def _send_json(send: Send, status: int, payload: dict[str, object]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reject bodies over a per-path byte limit with 413, before any parsing.

    A declared ``Content-Length`` over the limit is refused at once; a chunked body is read
    up to the limit, then replayed to the app (bodies are small, so buffering is cheap).
    """

    def __init__(self, app: ASGIApp, default_limit: int,
                 limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default_limit = default_limit
        self.limits = dict(limits or {})

    def _too_large(self, limit: int, size: str) -> dict[str, object]:
        return {"detail": f"request body is {size} bytes; the limit for this route is {limit} "
                          "bytes: send fewer items per request (e.g. split feedback into "
                          "several calls, or send only the most recent history)"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse or buffer the body, then call the app."""
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _send_json(send, 400, {"detail": "Content-Length must be a byte count"})
                return
            if int(declared) > limit:
                await _send_json(send, 413, self._too_large(limit, declared))
                return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body", False))
            if len(body) > limit:
                await _send_json(send, 413, self._too_large(limit, f"over {limit}"))
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request its client abandoned


class RequestMetricsMiddleware:
    """Observe every request's latency by route template and status, and log it as JSON."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and record it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app raises
        responded = False

        async def send_status(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status, responded = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, send_status)
            if not responded:  # the client went away before an answer: not a server error
                status = CLIENT_CLOSED_REQUEST
        finally:
            elapsed = time.perf_counter() - started
            # The template ("/users/{user_id}/history"), never the raw path: bounded labels.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.metrics.request_latency.labels(
                route=route, method=method, status=str(status)).observe(elapsed)
            log.info("request", extra={"method": scope["method"], "route": route,
                                       "path": scope["path"], "status": status,
                                       "duration_ms": round(elapsed * 1000, 3)})
