"""Request and response bodies of the HTTP API.

Requests are strict: unknown fields and wrong types are rejected with a 422 naming the field.
The error answers every route may give are declared in ``ERROR_RESPONSES`` and
``ADMIN_ERROR_RESPONSES``, so the OpenAPI schema lists every status a client can see.
"""

from __future__ import annotations

from typing import Annotated, Literal

from annotated_types import Ge, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

INT64_MAX = 2**63 - 1
# Largest id a body may carry: every JSON parser (JavaScript's included) holds it exactly.
# At 2**63 - 1 a client sending doubles rounds the bound itself up to 2**63 and is refused
# (found by fuzzing).
MAX_ID = 2**53 - 1
MAX_TIMESTAMP = 10_000_000_000  # seconds; larger values are almost surely milliseconds


def _integral_float_to_int(value: object) -> object:
    """``3.0`` -> ``3``: JSON Schema's "integer" includes integral floats.

    Found by fuzzing: clients that serialise numbers as doubles sent schema-valid bodies and
    got a 422. Strings, booleans and fractional floats stay as they are, so strict mode still
    refuses them.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral_float_to_int)]
# Bounds before the validator: placed after it, pydantic writes them as non-standard
# "ge"/"le" keys and the OpenAPI schema would allow negative ids.
Id = Annotated[int, Ge(0), Le(MAX_ID), BeforeValidator(_integral_float_to_int)]
Fallback = Literal["no_user_embedding", "popularity"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RecommendRequest(_Request):
    """``POST /recommend``: who to recommend for, or what they just watched.

    Attributes:
        user_id: MovieLens user id; without ``sequence`` their stored history is used.
        sequence: MovieLens movie ids watched, newest last (overrides the stored history).
        top_k: How many movies to return (1-100).
        exclude_seen: Leave out movies in the history used.
    """

    user_id: Id | None = None
    sequence: list[Id] | None = None
    top_k: Int = Field(10, ge=1, le=100)
    exclude_seen: bool = True


class PredictRequest(_Request):
    """``POST /predict``: the seed service's body (same answer as ``/recommend``)."""

    user_id: Id | None = None
    sequence: list[Id] | None = None
    top_k: Int = Field(10, ge=1, le=100)


class MovieOut(BaseModel):
    """A catalogue entry."""

    movie_id: int
    title: str
    year: int | None
    genres: list[str]


class ScoredMovie(MovieOut):
    """A recommended movie.

    ``score`` is the model's score, or the training-set count when the popularity fallback
    answered.
    """

    score: float


class RecommendResponse(BaseModel):
    """The answer of ``/recommend`` and ``/predict``."""

    items: list[ScoredMovie]
    model_version: str
    unknown_movie_ids: list[int]
    fallback: Fallback | None
    user_known: bool


class FeedbackEventIn(_Request):
    """One user event."""

    user_id: Id
    movie_id: Id
    event: Literal["impression", "click", "watch"]
    timestamp: Int = Field(ge=0, le=MAX_TIMESTAMP,
                           description="Unix time in seconds (not milliseconds).")
    event_id: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
        description="The client's id of this event (a UUID, say). The store keeps one event "
                    "per id, so resending a request whose answer was lost stores it once.")


class FeedbackRequest(_Request):
    """``POST /feedback``: 1-1000 events, stored together."""

    events: list[FeedbackEventIn] = Field(min_length=1, max_length=1000)


class ErrorResponse(BaseModel):
    """A refusal that is not a validation error (400, 401, 403, 409, 413, 503)."""

    detail: str


def _error(description: str) -> dict[str, object]:
    return {"model": ErrorResponse, "description": description}


# Statuses the middleware and the framework may answer on any route (OpenAPI ``responses``).
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    400: _error("The body cannot be decoded, or Content-Length is not a byte count"),
    413: _error("The body is over the route's size limit"),
    503: _error("Not ready yet, or the feedback store is unavailable: retry later"),
}
FEEDBACK_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    409: _error("An event_id of the request already names another stored event: none of "
                "the request's events were stored"),
}
ADMIN_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    401: _error("No 'Authorization: Bearer <admin token>' header"),
    403: _error("The admin token is wrong, or the admin API is disabled"),
}


class FeedbackResponse(BaseModel):
    """Sent only after the events are committed to disk."""

    accepted: int = Field(description="Events of the request now in the store (all of them).")
    duplicates: int = Field(0, description="Of those, events whose event_id was stored "
                                           "before: they were not stored again.")


class VersionResponse(BaseModel):
    """``GET /version``: what is being served."""

    name: str
    version: str
    alias: str
    data_version: str
    trained_at: str
    run_id: str
    precision: str
    model_kind: str
    git_commit: str


class ReadyResponse(BaseModel):
    """``GET /ready``."""

    ready: bool
    reason: str | None = None
    version: str | None = None


class HistoryResponse(BaseModel):
    """``GET /users/{user_id}/history``: most recent first."""

    user_id: int
    user_known: bool
    length: int
    items: list[MovieOut]


class DemoUserOut(BaseModel):
    """A demo user and their recent history (most recent first)."""

    user_id: int
    top_genre: str
    history_length: int
    recent: list[MovieOut]


class DemoUsersResponse(BaseModel):
    """``GET /demo/users``."""

    users: list[DemoUserOut]


class ReloadRequest(_Request):
    """``POST /admin/reload``: load a bundle (default: the one served now) and swap it in.

    Attributes:
        bundle: Bundle folder on the server.
        precision: ``fp32`` or ``int8`` (default: unchanged).
        version: Registry version to report (default: from the bundle).
        alias: Registry alias to report (default: unchanged).
        wait: Answer after the swap (200) or failure (422) instead of at once (202).
    """

    bundle: str | None = Field(None, min_length=1, max_length=4096)
    precision: Literal["fp32", "int8"] | None = None
    version: str | None = Field(None, max_length=200)
    alias: str | None = Field(None, max_length=200)
    wait: bool = False

    @field_validator("bundle")
    @classmethod
    def _no_nul(cls, bundle: str | None) -> str | None:
        if bundle is not None and "\x00" in bundle:  # no file system takes it: a 422, not a 500
            raise ValueError("a bundle path cannot contain a NUL character")
        return bundle


class ReloadStatus(BaseModel):
    """The state of the latest reload."""

    status: Literal["idle", "running", "ok", "failed"]
    bundle: str | None = None
    version: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
