"""The feedback store: user events (impression, click, watch), durable before acknowledged.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`FeedbackStore.add` returns only after
the transaction is committed and synced, so an acknowledged event survives ``kill -9``.
A write that fails (a full disk raises :class:`FeedbackStoreFullError`) is rolled back
whole, and the store accepts writes again as soon as the cause is gone. An event may carry
a client-chosen ``event_id``: the store keeps one event per id, so a client that resends
after a lost answer (or a 503 whose outcome is unknown) stores it once.
``postgresql://`` URLs open :class:`~movierec.serving.feedback_pg.PostgresFeedbackStore`,
which keeps the same contract (see :func:`open_store`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from movierec.serving.feedback_pg import PostgresFeedbackStore

EVENTS = ("impression", "click", "watch")
# Where every reader and writer of the store looks first (services, pipeline, drift).
ENV_FEEDBACK_URL = "MOVIEREC_FEEDBACK_URL"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    movie_id INTEGER NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('impression', 'click', 'watch')),
    timestamp INTEGER NOT NULL,
    received_at REAL NOT NULL,
    model_version TEXT,
    event_id TEXT
);
CREATE INDEX IF NOT EXISTS feedback_event_user ON feedback (event, user_id)
"""
# Added after the first release: stores created before it gain the column when opened.
EVENT_ID_COLUMN = "ALTER TABLE feedback ADD COLUMN event_id TEXT"
# One event per client id; events without one are all kept.
EVENT_ID_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS feedback_event_id ON feedback (event_id) "
                  "WHERE event_id IS NOT NULL")
INSERT_COLUMNS = "user_id, movie_id, event, timestamp, received_at, model_version, event_id"
SKIP_STORED_ID = "ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING"
# What an event is, to tell a resend (the same event) from an id used for another one.
EVENT_FIELDS = "event_id, user_id, movie_id, event, timestamp"


class FeedbackStoreError(ValueError):
    """The feedback store URL is invalid or its backend is unavailable."""


class FeedbackWriteError(RuntimeError):
    """Events could not be stored (none of them was: the transaction was rolled back)."""


class FeedbackOutcomeUnknownError(FeedbackWriteError):
    """The connection was lost during COMMIT: the events may or may not have been stored.

    Unlike its parent, nothing is promised: resending may store the events twice.
    """


class FeedbackStoreFullError(FeedbackWriteError):
    """The disk holding the feedback store is full; writes work again once space returns."""


def _write_error(exc: sqlite3.Error, path: Path) -> FeedbackWriteError:
    """Classify a failed write: a full disk is its own, retryable, error."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return FeedbackStoreFullError(f"{path}: the disk is full ({exc}); free space and "
                                      "retry")
    return FeedbackWriteError(f"{path}: {exc}")


@dataclass(frozen=True)
class FeedbackEvent:
    """One user event as stored; ``event_id`` (the client's) makes resending it harmless."""

    user_id: int
    movie_id: int
    event: str
    timestamp: int
    event_id: str | None = None


class FeedbackConflictError(ValueError):
    """An ``event_id`` already names another event; nothing of the request was stored."""


def check_resends(duplicates: Sequence[FeedbackEvent],
                  kept: Sequence[tuple[object, ...]]) -> None:
    """Refuse duplicates whose id the store keeps for a different event.

    Args:
        duplicates: Events whose ``event_id`` was stored before (now or earlier).
        kept: The stored events of those ids, as ``EVENT_FIELDS`` rows.

    Raises:
        FeedbackConflictError: Naming the ids reused for other events (the caller rolls
            its transaction back: a client that reuses ids must not lose events silently).
    """
    stored = {str(row[0]): tuple(row[1:]) for row in kept}
    reused = sorted({e.event_id for e in duplicates if e.event_id is not None and
                     stored.get(e.event_id) != (e.user_id, e.movie_id, e.event, e.timestamp)})
    if reused:
        raise FeedbackConflictError(
            f"event_id {', '.join(reused[:5])} already names another event (user, movie, "
            "event or timestamp differ): none of these events were stored; give each event "
            "an id of its own")


def insert_rows(events: Sequence[FeedbackEvent], model_version: str | None,
                ) -> list[tuple[object, ...]]:
    """The rows ``add`` inserts (``INSERT_COLUMNS``), received now."""
    received = time.time()
    return [(e.user_id, e.movie_id, e.event, e.timestamp, received, model_version, e.event_id)
            for e in events]


class FeedbackStore:
    """Append-only SQLite event table; safe to call from worker threads (one lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # one process at a time adds the column
            try:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._conn.execute(statement)
                columns = {row[1] for row in self._conn.execute("PRAGMA table_info(feedback)")}
                if "event_id" not in columns:
                    self._conn.execute(EVENT_ID_COLUMN)
                self._conn.execute(EVENT_ID_INDEX)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise

    def add(self, events: Sequence[FeedbackEvent],
            model_version: str | None = None) -> list[FeedbackEvent]:
        """Insert ``events`` in one transaction, committed to disk before this returns.

        Returns:
            The events stored now: all of them, less any whose ``event_id`` was stored
            before (in this call or an earlier one).

        Raises:
            FeedbackConflictError: An ``event_id`` was stored before for another event.
        """
        rows = insert_rows(events, model_version)
        insert = f"INSERT INTO feedback ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                if any(event.event_id for event in events):  # which ones are new, row by row
                    stored, duplicates = [], []
                    for event, row in zip(events, rows, strict=True):
                        new = self._conn.execute(f"{insert} {SKIP_STORED_ID}", row).rowcount
                        (stored if new else duplicates).append(event)
                    check_resends(duplicates, [self._conn.execute(
                        f"SELECT {EVENT_FIELDS} FROM feedback WHERE event_id = ?",
                        (event.event_id,)).fetchone() for event in duplicates])
                else:
                    self._conn.executemany(insert, rows)
                    stored = list(events)
                # COMMIT is inside the try: on a full disk it is COMMIT that fails, and a
                # transaction left open would make every later BEGIN fail too (the store
                # would never recover when space returns).
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise _write_error(exc, self.path) from exc
                raise
        return stored

    def _rollback(self) -> None:
        """End a failed transaction; nothing of it was acknowledged."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def watches(self, model_version: str | None = None) -> Iterator[tuple[int, int, int]]:
        """Stored watches as ``(user_id, movie_id, timestamp)``, in arrival order.

        Args:
            model_version: Only watches acknowledged while this version was served.
        """
        query = "SELECT user_id, movie_id, timestamp FROM feedback WHERE event = 'watch'"
        params: tuple[str, ...] = ()
        if model_version is not None:
            query += " AND model_version = ?"
            params = (model_version,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY id", params).fetchall()
        yield from rows

    def count(self, event: str | None = None) -> int:
        """How many events are stored (of one kind, or all)."""
        with self._lock:
            if event is None:
                row = self._conn.execute("SELECT COUNT(*) FROM feedback").fetchone()
            else:
                row = self._conn.execute("SELECT COUNT(*) FROM feedback WHERE event = ?",
                                         (event,)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close the connection (committed data is already on disk)."""
        with self._lock:
            self._conn.close()


SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})  # libpq's connection parameters


def mask_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***`` (safe for logs and errors).

    Masked: the password of ``user:password@host`` and the query parameters libpq takes
    a secret from (``?password=``, ``?sslpassword=``). The rest is kept as written.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:  # an IPv6 literal keeps its brackets
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        url = urlunsplit(parts._replace(netloc=netloc))
    base, mark, query = url.partition("?")
    if not mark:
        return url
    fragment_mark = "#" if "#" in query else ""
    query, _, fragment = query.partition("#")
    pairs = [pair.split("=", 1) if "=" in pair else [pair] for pair in query.split("&")]
    masked = "&".join(f"{pair[0]}=***" if len(pair) == 2 and unquote(pair[0])
                      in SECRET_QUERY_KEYS else "=".join(pair) for pair in pairs)
    return f"{base}?{masked}{fragment_mark}{fragment}"


def sqlite_path(url: str) -> Path:
    """The file of a ``sqlite:///path`` URL (or of a plain path)."""
    if url.startswith("sqlite:///"):
        # SQLAlchemy style: sqlite:////abs/path.db is absolute, sqlite:///rel.db relative.
        return Path(url.removeprefix("sqlite:///"))
    if url.startswith("sqlite:"):
        raise FeedbackStoreError(f"feedback_url {url!r}: a SQLite URL has three slashes "
                                 "before a relative path and four before an absolute one "
                                 "(sqlite:///feedback.db, sqlite:////data/feedback.db)")
    if "://" in url:
        raise FeedbackStoreError(f"feedback_url {mask_url(url)!r}: unknown scheme (use "
                                 "postgresql://, sqlite:///PATH or a file path)")
    return Path(url)


def is_url(location: str | Path) -> bool:
    """Whether ``location`` is a URL (``scheme://``) rather than a file path."""
    return "://" in str(location)


def feedback_location(home: Path) -> str | Path:
    """``$MOVIEREC_FEEDBACK_URL`` when set, else the SQLite file ``home/feedback.db``."""
    url = os.environ.get(ENV_FEEDBACK_URL, "").strip()
    return url or home / "feedback.db"


def store_exists(location: str | Path) -> bool:
    """Whether a store is there to read: a server URL always is, a SQLite file may not be."""
    if isinstance(location, Path) or not is_url(location) or location.startswith("sqlite:"):
        return sqlite_path(str(location)).exists()
    return True


def open_store(url: str | Path) -> FeedbackStore | PostgresFeedbackStore:
    """Open the store named by ``url``.

    Args:
        url: ``sqlite:////abs/path.db``, ``sqlite:///rel.db``, a file path, or
            ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (also ``postgres://`` and
            ``postgresql+psycopg://``).

    Raises:
        FeedbackStoreError: An unknown scheme, or a PostgreSQL server that is unreachable
            or refuses the login (the message masks the password).
    """
    from movierec.serving.feedback_pg import (  # noqa: PLC0415 - avoids an import cycle
        PostgresFeedbackStore,
        is_postgres_url,
    )

    if isinstance(url, Path):
        return FeedbackStore(url)
    if is_postgres_url(url):
        return PostgresFeedbackStore(url)
    return FeedbackStore(sqlite_path(url))
