"""The PostgreSQL feedback store: the same contract as the SQLite one, for shared deployments.

Each :meth:`PostgresFeedbackStore.add` is one transaction, acknowledged only after its
COMMIT returns with ``synchronous_commit=on`` (set on every connection, so a server default
of ``off`` cannot weaken the guarantee). One connection behind a lock keeps it thread-safe;
a connection lost to a server restart is replaced on the next call, so the service recovers
by itself. The password of the URL never appears in :attr:`path`, errors or logs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from movierec.serving.feedback import (
    EVENT_FIELDS,
    EVENT_ID_COLUMN,
    EVENT_ID_INDEX,
    INSERT_COLUMNS,
    SKIP_STORED_ID,
    FeedbackEvent,
    FeedbackOutcomeUnknownError,
    FeedbackStoreError,
    FeedbackWriteError,
    check_resends,
    insert_rows,
    mask_url,
)

if TYPE_CHECKING:
    import psycopg

PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+")
# A file holding the password, for a URL without one: Kubernetes mounts the Secret as a file,
# so the password is in neither the URL nor the environment.
ENV_PASSWORD_FILE = "MOVIEREC_FEEDBACK_PASSWORD_FILE"
CONNECT_TIMEOUT_S = 5
# Any constant: it serialises schema creation when several stage services start at once
# (concurrent CREATE TABLE IF NOT EXISTS can otherwise fail on the catalogue's unique index).
_SCHEMA_LOCK_KEY = 7_410_533_001

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    movie_id BIGINT NOT NULL,
    event TEXT NOT NULL CHECK (event IN ('impression', 'click', 'watch')),
    timestamp BIGINT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
    model_version TEXT,
    event_id TEXT
);
CREATE INDEX IF NOT EXISTS feedback_event_user ON feedback (event, user_id);
"""
# Only when missing: ALTER TABLE takes an exclusive lock even when the column exists, and
# would queue every insert behind a long read of the table on each service start.
_HAS_EVENT_ID = ("SELECT 1 FROM information_schema.columns WHERE table_schema = "
                 "current_schema() AND table_name = 'feedback' AND column_name = 'event_id'")
_INSERT = f"INSERT INTO feedback ({INSERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)"


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database."""
    return url.startswith(PG_SCHEMES)


def _libpq_url(url: str) -> str:
    """``postgresql+psycopg://...`` (SQLAlchemy style) -> ``postgresql://...`` for libpq."""
    scheme, sep, rest = url.partition("://")
    return ("postgresql" if scheme.startswith("postgresql+") else scheme) + sep + rest


def _password_from_file(shown_url: str) -> str | None:
    """The password in ``$MOVIEREC_FEEDBACK_PASSWORD_FILE`` (None when the variable is unset).

    Raises:
        FeedbackStoreError: The variable names a file that cannot be read.
    """
    name = os.environ.get(ENV_PASSWORD_FILE, "").strip()
    if not name:
        return None
    try:
        return Path(name).read_text(encoding="utf-8").rstrip("\r\n") or None
    except OSError as exc:
        raise FeedbackStoreError(f"feedback_url {shown_url}: {ENV_PASSWORD_FILE}={name}: "
                                 f"{exc.strerror}") from None


class PostgresFeedbackStore:
    """Append-only ``feedback`` table in PostgreSQL; same interface as ``FeedbackStore``.

    Attributes:
        path: The URL with the password masked (what logs show; never the secret).
    """

    def __init__(self, url: str) -> None:
        """Connect and create the schema if missing.

        Raises:
            FeedbackStoreError: psycopg is missing, the server is unreachable, or the
                login is refused (one line, password masked).
        """
        self._url = _libpq_url(url)
        self.path = mask_url(url)
        parts = urlsplit(self._url)
        query = dict(parse_qsl(parts.query))
        password = parts.password or query.get("password")
        self._file_password = None if password else _password_from_file(self.path)
        # The percent-decoded form is what a server or libpq message could echo.
        self._secrets = [s for s in {password, unquote(password or ""), self._file_password,
                                     query.get("sslpassword")} if s]
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        try:
            import psycopg  # noqa: PLC0415 - the SQLite-only paths never need it
        except ImportError as exc:
            raise FeedbackStoreError(
                f"feedback_url {self.path}: PostgreSQL needs psycopg (pip install "
                "'psycopg[binary]', pinned in requirements.txt)") from exc
        self._psycopg = psycopg
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(statement)
                    if conn.execute(_HAS_EVENT_ID).fetchone() is None:
                        conn.execute(EVENT_ID_COLUMN)
                    conn.execute(EVENT_ID_INDEX)
            except psycopg.Error as exc:
                self._discard()
                raise FeedbackStoreError(f"feedback_url {self.path}: "
                                         f"{self._clean(exc)}") from None

    def _clean(self, exc: BaseException) -> str:
        """One line of ``exc`` with any occurrence of the password masked."""
        text = " ".join(str(exc).split()) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _connection(self) -> psycopg.Connection:
        """The open connection, or a new one when there is none or the last one broke."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._discard()
        extra = {"password": self._file_password} if self._file_password else {}
        conn = self._psycopg.connect(self._url, autocommit=True,
                                     connect_timeout=CONNECT_TIMEOUT_S,
                                     application_name="movierec-feedback", **extra)
        conn.execute("SET synchronous_commit TO on")
        self._conn = conn
        return conn

    def _discard(self) -> None:
        """Drop the current connection (broken or after an error we cannot reason about)."""
        if self._conn is not None:
            with contextlib.suppress(self._psycopg.Error):
                self._conn.close()
            self._conn = None

    def add(self, events: Sequence[FeedbackEvent],
            model_version: str | None = None) -> list[FeedbackEvent]:
        """Insert ``events`` in one transaction, durable once COMMIT returned.

        A connection found dead before COMMIT was sent (the server restarted while idle)
        is replaced and the insert tried once more: nothing of the first try was stored.
        A failure during COMMIT is not retried, since the outcome is unknown there.

        Returns:
            The events stored now: all of them, less any whose ``event_id`` was stored
            before (in this call or an earlier one).

        Raises:
            FeedbackWriteError: The events could not be stored (the server is down, or
                refused them); the route answers 503 and the client may resend.
            FeedbackOutcomeUnknownError: The connection was lost during COMMIT; the route
                answers 503 and says that resending may store the events twice (once, for
                events with an ``event_id``).
            FeedbackConflictError: An ``event_id`` was stored before for another event.
        """
        rows = insert_rows(events, model_version)
        with_ids = any(event.event_id for event in events)
        psycopg = self._psycopg
        with self._lock:
            for attempt in (1, 2):
                committing = False
                try:
                    conn = self._connection()
                    with conn.transaction(), conn.cursor() as cur:
                        if with_ids:  # RETURNING tells which rows were new, one set per row
                            cur.executemany(f"{_INSERT} {SKIP_STORED_ID} RETURNING 1", rows,
                                            returning=True)
                            new, duplicates = [], []
                            for event in events:
                                (new if cur.fetchone() is not None else duplicates).append(event)
                                cur.nextset()
                            if duplicates:  # raising here rolls the transaction back
                                cur.execute(f"SELECT {EVENT_FIELDS} FROM feedback WHERE "
                                            "event_id = ANY(%s)",
                                            ([e.event_id for e in duplicates],))
                                check_resends(duplicates, cur.fetchall())
                        else:
                            cur.executemany(_INSERT, rows)
                            new = list(events)
                        committing = True  # leaving the block sends COMMIT
                    return new
                except psycopg.OperationalError as exc:
                    self._discard()
                    if committing:  # the server may have committed before the line dropped
                        raise FeedbackOutcomeUnknownError(
                            f"{self.path}: the connection was lost during COMMIT "
                            f"({self._clean(exc)})") from None
                    if attempt == 1:
                        continue
                    raise FeedbackWriteError(f"{self.path}: {self._clean(exc)}") from None
                except psycopg.Error as exc:
                    # The transaction context rolled back; the connection stays usable.
                    raise FeedbackWriteError(f"{self.path}: {self._clean(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _query(self, sql: str, params: tuple[str, ...]) -> list[tuple[int, ...]]:
        """Rows of a read; a lost connection is replaced once (reads are idempotent)."""
        psycopg = self._psycopg
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._connection().execute(sql, params).fetchall()
                except psycopg.OperationalError as exc:
                    self._discard()
                    if attempt == 2:
                        raise FeedbackStoreError(f"{self.path}: "
                                                 f"{self._clean(exc)}") from None
                except psycopg.Error as exc:
                    raise FeedbackStoreError(f"{self.path}: {self._clean(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def watches(self, model_version: str | None = None) -> Iterator[tuple[int, int, int]]:
        """Stored watches as ``(user_id, movie_id, timestamp)``, in arrival order.

        Args:
            model_version: Only watches acknowledged while this version was served.

        Raises:
            FeedbackStoreError: The server cannot be reached.
        """
        query = "SELECT user_id, movie_id, timestamp FROM feedback WHERE event = 'watch'"
        params: tuple[str, ...] = ()
        if model_version is not None:
            query += " AND model_version = %s"
            params = (model_version,)
        rows = self._query(query + " ORDER BY id", params)
        yield from ((int(u), int(m), int(t)) for u, m, t in rows)

    def count(self, event: str | None = None) -> int:
        """How many events are stored (of one kind, or all)."""
        if event is None:
            rows = self._query("SELECT COUNT(*) FROM feedback", ())
        else:
            rows = self._query("SELECT COUNT(*) FROM feedback WHERE event = %s", (event,))
        return int(rows[0][0])

    def close(self) -> None:
        """Close the connection (committed events are already durable on the server)."""
        with self._lock:
            self._discard()
