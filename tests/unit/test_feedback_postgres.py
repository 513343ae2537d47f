"""The PostgreSQL feedback store against a real, throwaway PostgreSQL cluster.

The cluster is created once per session (initdb as the ``postgres`` user when we are root,
since initdb refuses root), listens on 127.0.0.1 and a free port, and is always stopped and
removed. Without PostgreSQL (``make pg-deps``) the tests skip, except under CI, where they
fail, exactly like the browser tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import psycopg
import pytest

from movierec.lifecycle.traffic import take_events
from movierec.lifecycle.world import build_world, prepare_round
from movierec.serving.feedback import (
    ENV_FEEDBACK_URL,
    FeedbackConflictError,
    FeedbackEvent,
    FeedbackStoreError,
    feedback_location,
    open_store,
)
from movierec.serving.feedback_pg import ENV_PASSWORD_FILE, PostgresFeedbackStore
from movierec.serving.loadtest import free_port, wait_ready
from tests.unit.feedback_burst import acknowledged_until_killed
from tests.unit.test_serving_bundle import make_bundle, movie_id

USER = "movierec"
# Characters that need percent-encoding in a URL: the store must decode and still mask them.
PASSWORD = "test-Secret/with@odd:chars"


def _initdb() -> Path | None:
    """The newest installed PostgreSQL's initdb (Debian layout), if any."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1] if found else None


@dataclass
class Cluster:
    """A throwaway PostgreSQL cluster; ``start``/``stop`` may be called again (restart)."""

    root: Path
    bin_dir: Path
    port: int
    as_user: list[str]
    databases: list[str] = field(default_factory=list)

    def _run(self, *argv: str, timeout: float = 60) -> None:
        cmd = [*self.as_user, str(self.bin_dir / argv[0]), *argv[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-1500:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                               f"{done.stderr.strip()}\n{tail}")

    def start(self) -> None:
        # fsync=off: only the *service* is killed in these tests, never the server or the
        # machine, so durability across an OS crash is not what is tested (and it is slow).
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   "-c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
                  "-w", "-t", "30", "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "-t", "30",
                  "stop")

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                               autocommit=True, connect_timeout=5)

    def url(self, database: str, password: str = PASSWORD) -> str:
        return (f"postgresql://{USER}:{quote(password, safe='')}@127.0.0.1:{self.port}/"
                f"{database}")

    def new_database(self) -> str:
        name = f"feedback_{len(self.databases)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {USER}")
        self.databases.append(name)
        return name


def _stop_for_good(cluster: Cluster) -> None:
    """Stop the server however it can be stopped, so no process outlives the session."""
    pid_file = cluster.root / "data" / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        cluster.stop("immediate")
    except (RuntimeError, subprocess.TimeoutExpired):
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)  # the postmaster; its children exit with it


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    initdb = _initdb()
    if initdb is None:
        reason = ("PostgreSQL not installed (/usr/lib/postgresql/*/bin/initdb missing): run "
                  "`make pg-deps` as root")
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests", pytrace=False)
        pytest.skip(reason)
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as
    # the postgres user when we are root (initdb refuses to run as root).
    root = Path(tempfile.mkdtemp(prefix="movierec-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    pg = Cluster(root, initdb.parent, free_port(), as_user)
    try:
        pg._run("initdb", "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync")
        # The superuser logs in without a password (setup only); the store's user must
        # give one, so the password really travels and masking is really tested.
        (root / "data" / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        pg.start()
        with pg.admin() as conn:
            conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        yield pg
    finally:
        _stop_for_good(pg)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(cluster: Cluster) -> str:
    """A fresh, empty database of the cluster, as a URL with the password."""
    return cluster.url(cluster.new_database())


def _watch(user: int, item: int, stamp: int) -> FeedbackEvent:
    return FeedbackEvent(user, movie_id(item), "watch", stamp)


def test_round_trip_arrival_order_and_version_filter(pg_url: str, cluster: Cluster) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with cluster.admin() as conn:
        # A server default of "off" must not weaken the acknowledgement.
        conn.execute(f"ALTER DATABASE {database} SET synchronous_commit = off")
    store = open_store(pg_url)
    assert isinstance(store, PostgresFeedbackStore)
    assert PASSWORD not in store.path and quote(PASSWORD, safe="") not in store.path
    assert store.path == f"postgresql://{USER}:***@127.0.0.1:{cluster.port}/{database}"
    assert store._connection().execute("SHOW synchronous_commit").fetchone() == ("on",)
    assert len(store.add([_watch(7, 3, 30), _watch(7, 1, 10), _watch(8, 2, 20)], "1")) == 3
    assert len(store.add([FeedbackEvent(7, movie_id(4), "impression", 40),
                          FeedbackEvent(7, movie_id(4), "click", 41)], "1")) == 2
    assert len(store.add([_watch(9, 5, 5), _watch(2**62, 6, 2**40)], "2")) == 2  # 64-bit ids
    store.close()

    again = open_store(pg_url)  # the schema exists now: opening again keeps the data
    try:
        # Arrival order, not timestamp order: the lifecycle replays them as they came.
        assert list(again.watches()) == [(7, movie_id(3), 30), (7, movie_id(1), 10),
                                         (8, movie_id(2), 20), (9, movie_id(5), 5),
                                         (2**62, movie_id(6), 2**40)]
        assert list(again.watches("1")) == [(7, movie_id(3), 30), (7, movie_id(1), 10),
                                            (8, movie_id(2), 20)]
        assert list(again.watches("3")) == []
        assert (again.count(), again.count("watch"), again.count("click")) == (7, 5, 1)
    finally:
        again.close()


def test_a_connection_lost_during_commit_is_an_unknown_outcome(pg_url: str) -> None:
    import contextlib

    import psycopg

    from movierec.serving.feedback import FeedbackOutcomeUnknownError

    store = open_store(pg_url)
    assert isinstance(store, PostgresFeedbackStore)
    real = store._connection

    class CommitsThenDrops:
        """The server commits, then the line drops before its answer arrives."""

        def __init__(self, conn: psycopg.Connection) -> None:
            self.conn = conn

        def cursor(self) -> psycopg.Cursor:
            return self.conn.cursor()

        @contextlib.contextmanager
        def transaction(self) -> Iterator[None]:
            with self.conn.transaction():
                yield
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    try:
        before = store.count()
        store._connection = lambda: CommitsThenDrops(real())  # type: ignore[method-assign]
        with pytest.raises(FeedbackOutcomeUnknownError, match="lost during COMMIT"):
            store.add([_watch(5, 1, 1)], "1")
        store._connection = real  # type: ignore[method-assign]
        # It was stored: not retried here, and the client is told a resend may duplicate it.
        assert store.count() == before + 1
    finally:
        store.close()


def test_concurrent_adds_from_threads(pg_url: str) -> None:
    store = open_store(pg_url)
    threads, batches, size = 8, 20, 5
    errors: list[BaseException] = []

    def send(user: int) -> None:
        try:
            for b in range(batches):
                store.add([_watch(user, 1 + i, b * size + i) for i in range(size)], "1")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=send, args=(u,)) for u in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    try:
        assert not errors
        assert store.count() == threads * batches * size
        rows = list(store.watches())
        for user in range(threads):  # each thread's events kept their order
            assert [t for u, _, t in rows if u == user] == list(range(batches * size))
    finally:
        store.close()


def test_open_errors_are_one_line_and_mask_the_password(
        pg_url: str, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = pg_url.rsplit("/", 1)[1]
    wrong = "Wrong-PaSS-123"
    with pytest.raises(FeedbackStoreError) as refused:
        open_store(cluster.url(database, wrong))
    message = str(refused.value)
    assert "password authentication failed" in message and "***" in message
    assert wrong not in message and "\n" not in message
    # Kubernetes' way: the URL has no password, a mounted Secret file holds it.
    secret = tmp_path / "postgres-password"
    secret.write_text(PASSWORD + "\n")
    bare = f"postgresql://{USER}@127.0.0.1:{cluster.port}/{database}"
    monkeypatch.setenv(ENV_PASSWORD_FILE, str(secret))
    from_file = open_store(bare)
    assert from_file.count() == 0 and from_file.path == bare
    from_file.close()
    monkeypatch.setenv(ENV_PASSWORD_FILE, str(tmp_path / "missing"))
    with pytest.raises(FeedbackStoreError, match=f"{ENV_PASSWORD_FILE}=.*missing"):
        open_store(bare)
    monkeypatch.delenv(ENV_PASSWORD_FILE)
    with pytest.raises(FeedbackStoreError, match="Connection refused") as unreachable:
        open_store(f"postgresql://{USER}:{quote(PASSWORD, safe='')}@127.0.0.1:{free_port()}/x")
    assert PASSWORD not in str(unreachable.value)
    assert quote(PASSWORD, safe="") not in str(unreachable.value)
    # The CLI turns it into one line and exit 2, before any bundle work.
    env = {**os.environ, ENV_FEEDBACK_URL: cluster.url(database, wrong)}
    done = subprocess.run([sys.executable, "-m", "movierec.cli.main", "serve", "--bundle",
                           str(tmp_path / "no-bundle"), "--port", str(free_port())],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("movierec: error: feedback_url postgresql://")
    assert done.stderr.count("\n") == 1 and wrong not in done.stderr


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    url: str


@contextlib.contextmanager
def _serve(cluster: Cluster, root: Path) -> Iterator[Service]:
    """``movierec serve`` with MOVIEREC_FEEDBACK_URL pointing at a new database."""
    bundle = make_bundle(root / "bundle")
    url, port, log = cluster.url(cluster.new_database()), free_port(), root / "server.log"
    env = {**os.environ, ENV_FEEDBACK_URL: url, "MOVIEREC_HOME": str(root / "home")}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "movierec.cli.main", "serve",
                                 "--bundle", str(bundle), "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_ready(base, timeout=90, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(f"{error}: {log.read_text()[-2000:]}") from error
        yield Service(proc, base, log, url)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def service(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service the module's tests share (none of them stops it)."""
    with _serve(cluster, tmp_path_factory.mktemp("pg-service")) as shared:
        yield shared


def test_event_ids_store_an_event_once_and_old_tables_gain_the_column(
        pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:  # a table from before event ids, with a row
        conn.execute("CREATE TABLE feedback (id BIGSERIAL PRIMARY KEY, user_id BIGINT NOT "
                     "NULL, movie_id BIGINT NOT NULL, event TEXT NOT NULL, timestamp BIGINT "
                     "NOT NULL, received_at DOUBLE PRECISION NOT NULL, model_version TEXT)")
        conn.execute("INSERT INTO feedback (user_id, movie_id, event, timestamp, received_at) "
                     "VALUES (1, 2, 'watch', 3, 0)")
    store = open_store(pg_url)
    try:
        first = [FeedbackEvent(7, 1, "watch", 10, "w-1"), FeedbackEvent(7, 1, "click", 10, "c-1"),
                 FeedbackEvent(7, 2, "impression", 11)]
        assert store.add(first, "1") == first
        resent = [*first, FeedbackEvent(7, 3, "watch", 12, "w-2"),
                  FeedbackEvent(7, 3, "watch", 12, "w-2")]
        assert store.add(resent, "1") == [first[2], resent[3]]
        assert list(store.watches()) == [(1, 2, 3), (7, 1, 10), (7, 3, 12)]
        assert store.count() == 6
        # An id reused for another event: refused, and nothing of that call stored.
        reused = [FeedbackEvent(8, 5, "watch", 20, "new-1"),
                  FeedbackEvent(7, 9, "watch", 10, "w-1")]
        with pytest.raises(FeedbackConflictError, match="w-1 already names another event"):
            store.add(reused, "1")
        assert store.count() == 6 and store.add(reused[:1], "1") == reused[:1]
    finally:
        store.close()


def _post(base: str, events: list[dict[str, object]]) -> httpx.Response:
    return httpx.post(f"{base}/feedback", json={"events": events}, timeout=10)


def test_stopped_server_gives_503_and_the_service_recovers(service: Service,
                                                           cluster: Cluster) -> None:
    event = [{"user_id": 1, "movie_id": movie_id(1), "event": "watch", "timestamp": 1}]
    assert _post(service.base, event).status_code == 200
    cluster.stop("fast")
    try:
        down = _post(service.base, event)
        assert down.status_code == 503
        assert "feedback store unavailable" in down.json()["detail"]
        assert down.headers["retry-after"]
        assert httpx.get(f"{service.base}/health", timeout=5).status_code == 200
    finally:
        cluster.start()
    # The next request reconnects by itself: no restart of the service needed.
    again = [{"user_id": 1, "movie_id": movie_id(2), "event": "watch", "timestamp": 2}]
    assert _post(service.base, again).json() == {"accepted": 1, "duplicates": 0}
    # A restart while the service is idle leaves it a dead connection that only the next
    # request discovers: that request must still succeed (nothing was sent, so retrying
    # it once is safe), not cost the client a 503.
    cluster.stop("fast")
    cluster.start()
    idle = [{"user_id": 1, "movie_id": movie_id(3), "event": "watch", "timestamp": 3}]
    assert _post(service.base, idle).json() == {"accepted": 1, "duplicates": 0}
    store = open_store(service.url)
    try:
        assert [t for _, _, t in store.watches()] == [1, 2, 3]  # the refused one is not there
    finally:
        store.close()
    # The log (including the 503's traceback above) names the store without its password.
    text = service.log.read_text()
    assert PASSWORD not in text and quote(PASSWORD, safe="") not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    serving = [line for line in lines if line.get("message") == "serving"]
    assert serving and serving[0]["feedback_db"].startswith(f"postgresql://{USER}:***@")


def test_acknowledged_events_survive_kill_9_of_the_service(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    with _serve(cluster, tmp_path) as own:  # killed below: not the module's shared one
        acknowledged = acknowledged_until_killed(own.base, own.proc, user_id=5,
                                                 at_least=300, batch=20)
        url = own.url
    assert len(acknowledged) >= 300
    store = open_store(url)
    try:
        stored = {t for _, _, t in store.watches()}
    finally:
        store.close()
    assert set(acknowledged) <= stored


def test_round_data_reads_watches_from_postgres_like_sqlite(
        pg_url: str, ml100k_dir: Path, tmp_path: Path, isolated_home: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = build_world("ml-100k", 0.1, ml100k_dir)
    assert feedback_location(isolated_home) == isolated_home / "feedback.db"
    monkeypatch.setenv(ENV_FEEDBACK_URL, pg_url)
    location = feedback_location(isolated_home)  # what the pipeline and drift use
    assert location == pg_url
    first = prepare_round(world, location, tmp_path / "r1")
    assert first["feedback"] == {"watches": 0, "used": 0, "skipped_known": 0,
                                 "skipped_unknown_movie": 0}
    watches = [FeedbackEvent(u, m, "watch", t) for u, m, t in take_events(world, 200).iter_rows()]
    for store_at in (pg_url, tmp_path / "feedback.db"):
        store = open_store(store_at)
        store.add(watches + watches[:4], "1")
        store.add([FeedbackEvent(1, 1, "impression", 0)], "1")
        store.close()
    from_pg = prepare_round(world, location, tmp_path / "r2")
    from_sqlite = prepare_round(world, tmp_path / "feedback.db", tmp_path / "r3")
    assert from_pg["data_version"] != first["data_version"]
    assert from_pg["data_version"] == from_sqlite["data_version"]
    assert from_pg["feedback"] == from_sqlite["feedback"] == {
        "watches": 204, "used": 200, "skipped_known": 4, "skipped_unknown_movie": 0}
