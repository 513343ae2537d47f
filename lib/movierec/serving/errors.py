"""422 answers that say what to fix: one readable ``message`` plus the field-level ``detail``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

MAX_LISTED = 5  # a 1,000-item sequence of strings must not produce a 1,000-line answer


def _field(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def _explain(error: Mapping[str, Any], content_type: str) -> str:
    kind = str(error.get("type", ""))
    field = _field(error.get("loc", ()))
    msg = str(error.get("msg", "invalid"))
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({reason}); send a JSON object"
    if kind == "extra_forbidden":
        return f"unknown field '{field}': remove it (the schema is at /openapi.json)"
    if kind == "missing":
        return f"'{field}' is required"
    if field == "body" and "json" not in content_type:
        return "send a JSON object with 'Content-Type: application/json'"
    if field == "body":
        return f"the body must be a JSON object ({msg})"
    value = error.get("input")
    shown = repr(value)
    got = f" (got {shown})" if value is not None and len(shown) <= 40 else ""
    return f"'{field}': {msg}{got}"


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Render a validation error as ``{"message": ..., "detail": [{loc, msg, type}]}``."""
    errors = list(exc.errors())
    content_type = request.headers.get("content-type", "").lower()
    notes = [_explain(error, content_type) for error in errors[:MAX_LISTED]]
    if len(errors) > MAX_LISTED:
        notes.append(f"and {len(errors) - MAX_LISTED} more problems")
    detail = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
               "type": str(e.get("type", ""))} for e in errors[:50]]
    return JSONResponse({"message": "; ".join(notes), "detail": detail}, status_code=422)
