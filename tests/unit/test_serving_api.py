"""The HTTP contract of the recommendation service (in-process, TestClient)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from movierec.serving.app import ServeSettings, create_app
from movierec.serving.engine import OnnxModel
from movierec.serving.feedback import FeedbackStoreError, open_store
from movierec.serving.logs import JsonFormatter
from movierec.serving.metrics import PERCENTILE_BUCKETS, BatchHistogram
from movierec.serving.page import PAGE
from movierec.serving.worker import ModelProcess
from tests.unit.test_serving_bundle import (
    MARKUP_TITLE,
    N_USERS,
    make_bundle,
    movie_id,
    user_id,
)

ITEM_FIELDS = {"movie_id", "title", "year", "genres", "score"}


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def make_client(bundle: Path, tmp_path: Path, **overrides: object) -> TestClient:
    settings = ServeSettings(bundle=bundle, threads=1, feedback_url=str(tmp_path / "fb.db"),
                             model_version="7", model_alias="production",
                             **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings))


@pytest.fixture
def client(bundle_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(bundle_dir, tmp_path) as test_client:
        yield test_client


def metric(client: TestClient, name: str, **labels: str) -> float:
    """One sample's value from /metrics (0 when absent)."""
    text = client.get("/metrics").text
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "")
    match = re.search(rf"^{pattern} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_recommend_known_user_uses_stored_history(client: TestClient) -> None:
    response = client.post("/recommend", json={"user_id": user_id(3), "top_k": 5})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"items", "model_version", "unknown_movie_ids", "fallback", "user_known"}
    assert body["model_version"] == "7"
    assert body["fallback"] is None
    assert body["user_known"] is True
    assert body["unknown_movie_ids"] == []
    assert len(body["items"]) == 5
    for item in body["items"]:
        assert set(item) == ITEM_FIELDS
        assert isinstance(item["movie_id"], int) and isinstance(item["title"], str)
        assert item["year"] is None or isinstance(item["year"], int)
        assert isinstance(item["genres"], list) and isinstance(item["score"], float)
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    history = client.get(f"/users/{user_id(3)}/history", params={"limit": 1000}).json()
    seen = {m["movie_id"] for m in history["items"]}
    assert history["user_known"] and history["length"] == len(seen) > 0
    assert not seen & {item["movie_id"] for item in body["items"]}  # exclude_seen


def test_sequence_overrides_history_and_lists_unknown_ids(client: TestClient) -> None:
    seq = [movie_id(5), 424242, movie_id(9), 7]
    body = client.post("/recommend", json={"user_id": user_id(3), "sequence": seq,
                                           "top_k": 100}).json()
    assert body["unknown_movie_ids"] == [424242, 7]
    returned = {item["movie_id"] for item in body["items"]}
    assert not returned & {movie_id(5), movie_id(9)}
    assert len(body["items"]) == 40 - 2  # top_k beyond the catalogue: all the rest
    kept = client.post("/recommend", json={"sequence": seq, "exclude_seen": False,
                                           "top_k": 100}).json()
    assert {movie_id(5), movie_id(9)} <= {item["movie_id"] for item in kept["items"]}
    assert metric(client, "movierec_unknown_items_total") == 4


def test_predict_is_compatible(client: TestClient) -> None:
    payload = {"user_id": user_id(3), "sequence": [movie_id(5)], "top_k": 4}
    predicted = client.post("/predict", json=payload)
    assert predicted.status_code == 200
    assert predicted.json() == client.post("/recommend", json=payload).json()


def test_cold_start_paths_and_counters(client: TestClient) -> None:
    unknown = client.post("/recommend", json={"user_id": 999, "sequence": [movie_id(4)]}).json()
    assert (unknown["fallback"], unknown["user_known"]) == ("no_user_embedding", False)
    anonymous = client.post("/recommend", json={"sequence": [movie_id(4)]}).json()
    assert anonymous["fallback"] == "no_user_embedding"
    assert anonymous["items"] == unknown["items"]
    nothing = client.post("/recommend", json={"user_id": 999}).json()
    assert (nothing["fallback"], nothing["user_known"]) == ("popularity", False)
    # Popularity: train_count decreases with the item index in the test bundle.
    assert [i["movie_id"] for i in nothing["items"][:3]] == [movie_id(1), movie_id(2),
                                                             movie_id(3)]
    assert nothing["items"][0]["score"] == 117.0
    empty = client.post("/recommend", json={"user_id": user_id(N_USERS)}).json()
    assert (empty["fallback"], empty["user_known"]) == ("popularity", True)
    all_unknown = client.post("/recommend", json={"sequence": [1, 2]}).json()
    assert all_unknown["fallback"] == "popularity"
    assert metric(client, "movierec_fallbacks_total", kind="no_user_embedding") == 2
    assert metric(client, "movierec_fallbacks_total", kind="popularity") == 3


def test_feedback_watch_joins_history_and_changes_recommendations(client: TestClient,
                                                                  tmp_path: Path) -> None:
    before = client.post("/recommend", json={"user_id": 999}).json()
    assert before["fallback"] == "popularity"
    top = before["items"][0]["movie_id"]
    events = [{"user_id": 999, "movie_id": top, "event": "watch", "timestamp": 1_700_000_000},
              {"user_id": 999, "movie_id": top, "event": "impression", "timestamp": 1_700_000_001}]
    response = client.post("/feedback", json={"events": events})
    assert response.status_code == 200
    assert response.json() == {"accepted": 2, "duplicates": 0}
    after = client.post("/recommend", json={"user_id": 999}).json()
    assert after["fallback"] == "no_user_embedding"  # now has a history, still no embedding
    assert top not in {item["movie_id"] for item in after["items"]}
    history = client.get("/users/999/history").json()
    assert history["items"][0]["movie_id"] == top and not history["user_known"]
    with sqlite3.connect(tmp_path / "fb.db") as db:
        rows = db.execute("SELECT user_id, movie_id, event, timestamp, model_version "
                          "FROM feedback ORDER BY id").fetchall()
    assert rows == [(999, top, "watch", 1_700_000_000, "7"),
                    (999, top, "impression", 1_700_000_001, "7")]
    assert metric(client, "movierec_feedback_events_total", event="watch") == 1


def test_resent_feedback_with_event_ids_is_stored_once(client: TestClient,
                                                       tmp_path: Path) -> None:
    events = [{"user_id": 5, "movie_id": movie_id(3), "event": "watch", "timestamp": 10,
               "event_id": "a1b2-watch"},
              {"user_id": 5, "movie_id": movie_id(3), "event": "click", "timestamp": 10,
               "event_id": "a1b2-click"},
              {"user_id": 5, "movie_id": movie_id(4), "event": "impression", "timestamp": 11}]
    assert client.post("/feedback", json={"events": events}).json() == {
        "accepted": 3, "duplicates": 0}
    # The answer was lost, say, and the client sends it all again: the events with an id
    # are not stored (or counted) twice; the one without an id cannot be told apart.
    assert client.post("/feedback", json={"events": events}).json() == {
        "accepted": 3, "duplicates": 2}
    # Within one request too.
    twice = [{**events[0], "event_id": "same"}, {**events[0], "event_id": "same"}]
    assert client.post("/feedback", json={"events": twice}).json() == {
        "accepted": 2, "duplicates": 1}
    with sqlite3.connect(tmp_path / "fb.db") as db:
        ids = [row[0] for row in db.execute("SELECT event_id FROM feedback ORDER BY id")]
    assert ids == ["a1b2-watch", "a1b2-click", None, None, "same"]
    assert metric(client, "movierec_feedback_events_total", event="watch") == 2
    for bad in ("", "has space", "x" * 65):
        refused = client.post("/feedback", json={"events": [{**events[0], "event_id": bad}]})
        assert refused.status_code == 422, bad
    # An id used again for another event is a client's bug: refused whole, nothing stored,
    # the history untouched (a second client numbering its events 1, 2, 3 would lose them).
    other = {**events[0], "movie_id": movie_id(7), "event_id": "a1b2-watch"}
    fresh = {**events[2], "event_id": "brand-new"}
    for batch in ([fresh, other], [fresh, {**fresh, "timestamp": 99}]):
        conflict = client.post("/feedback", json={"events": batch})
        assert conflict.status_code == 409 and "already names another event" in conflict.text
    with sqlite3.connect(tmp_path / "fb.db") as db:
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == len(ids)
    history = client.get("/users/5/history").json()["items"]
    assert movie_id(7) not in [item["movie_id"] for item in history]


def test_feedback_writes_waiting_for_the_store_are_bounded(client: TestClient) -> None:
    from movierec.serving.app import MAX_FEEDBACK_WAITING

    state = client.app.state.serving  # type: ignore[attr-defined]
    event = {"user_id": 6, "movie_id": movie_id(2), "event": "click", "timestamp": 1}
    before = state.store.count()
    state.feedback_waiting = MAX_FEEDBACK_WAITING  # as many writes wait for a slow disk
    busy = client.post("/feedback", json={"events": [event]})
    assert busy.status_code == 503 and "busy" in busy.text and busy.headers["retry-after"]
    assert state.store.count() == before and state.feedback_waiting == MAX_FEEDBACK_WAITING
    state.feedback_waiting = 0
    assert client.post("/feedback", json={"events": [event]}).status_code == 200
    assert client.post("/feedback", json={"events": [{**event, "event_id": "k"},
                                                      {**event, "event_id": "k",
                                                       "timestamp": 2}]}).status_code == 409
    assert state.feedback_waiting == 0  # released after an answer and after an error


def test_a_watch_resent_after_an_unknown_outcome_joins_the_history(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.serving.feedback import FeedbackOutcomeUnknownError

    store = client.app.state.serving.store  # type: ignore[attr-defined]
    real = store.add

    def stored_then_lost(*args: object, **kwargs: object) -> object:
        real(*args, **kwargs)  # committed, but the answer never came back
        raise FeedbackOutcomeUnknownError("connection lost during COMMIT")

    watch = {"user_id": 4242, "movie_id": movie_id(5), "event": "watch", "timestamp": 50,
             "event_id": "w-4242"}
    monkeypatch.setattr(store, "add", stored_then_lost)
    assert client.post("/feedback", json={"events": [watch]}).status_code == 503
    monkeypatch.setattr(store, "add", real)
    assert client.post("/feedback", json={"events": [watch]}).json() == {
        "accepted": 1, "duplicates": 1}
    # Stored once, and the service now knows it (its first try never got that far).
    history = client.get("/users/4242/history").json()["items"]
    assert [item["movie_id"] for item in history] == [movie_id(5)]


def test_a_store_made_before_event_ids_gains_the_column(tmp_path: Path) -> None:
    from movierec.serving.feedback import FeedbackEvent, FeedbackStore

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, user_id "
                   "INTEGER NOT NULL, movie_id INTEGER NOT NULL, event TEXT NOT NULL, "
                   "timestamp INTEGER NOT NULL, received_at REAL NOT NULL, model_version TEXT)")
        db.execute("INSERT INTO feedback VALUES (1, 7, 8, 'watch', 9, 0.0, '1')")
    store = FeedbackStore(path)
    try:
        watch = FeedbackEvent(7, 9, "watch", 10, event_id="e-1")
        assert store.add([watch, watch]) == [watch]
        assert list(store.watches()) == [(7, 8, 9), (7, 9, 10)]
    finally:
        store.close()


def test_feedback_store_failure_is_503(client: TestClient,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(client.app.state.serving.store, "add", broken)  # type: ignore[attr-defined]
    event = {"user_id": 1, "movie_id": 2, "event": "click", "timestamp": 3}
    response = client.post("/feedback", json={"events": [event]})
    assert response.status_code == 503 and "retry later" in response.json()["detail"]


def test_watches_survive_a_restart(bundle_dir: Path, tmp_path: Path) -> None:
    event = {"user_id": user_id(2), "movie_id": movie_id(40), "event": "watch",
             "timestamp": 1_800_000_000}
    with make_client(bundle_dir, tmp_path) as first:
        assert first.post("/feedback", json={"events": [event]}).status_code == 200
    with make_client(bundle_dir, tmp_path) as second:
        newest = second.get(f"/users/{user_id(2)}/history").json()["items"][0]
        assert newest["movie_id"] == movie_id(40)


def test_health_ready_version(client: TestClient, bundle_dir: Path, tmp_path: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True, "reason": None, "version": "7"}
    assert client.get("/version").json() == {
        "name": "movierec", "version": "7", "alias": "production", "data_version": "data-1",
        "trained_at": "2026-11-27T00:00:00Z", "run_id": "run-a", "precision": "fp32",
        "model_kind": "tiny", "git_commit": "abc123"}
    # Lifespan not run yet (its model runs in a thread, so no child process is left).
    unstarted = make_client(bundle_dir, tmp_path / "other", model_process=False)
    try:
        assert unstarted.get("/ready").status_code == 503
    finally:
        unstarted.app.state.serving.bundle.model.close()  # type: ignore[attr-defined]
        unstarted.app.state.serving.store.close()  # type: ignore[attr-defined]


def test_a_dead_model_process_fails_health_and_readiness(bundle_dir: Path,
                                                         tmp_path: Path) -> None:
    with make_client(bundle_dir, tmp_path) as client:
        model = client.app.state.serving.bundle.model  # type: ignore[attr-defined]
        assert isinstance(model, ModelProcess) and model.pid is not None
        os.kill(model.pid, signal.SIGKILL)
        for _ in range(100):
            if not model.alive:
                break
            time.sleep(0.02)
        assert client.get("/health").status_code == 503
        assert "model process" in client.get("/ready").json()["reason"]
        failed = client.post("/recommend", json={"sequence": [movie_id(1)]})
        assert failed.status_code == 503 and "model process is gone" in failed.json()["detail"]


def test_a_failed_batch_or_a_shutdown_is_a_503_without_internals(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.serving.batcher import MicroBatcher, ShuttingDownError
    from movierec.serving.worker import ModelProcessError

    async def failing(*args: object, **kwargs: object) -> object:
        raise ModelProcessError("the model process failed a batch: InvalidArgument: "
                                "[ONNXRuntimeError] Gather idx=90", gone=False)

    with monkeypatch.context() as patch:
        patch.setattr(MicroBatcher, "top_k", failing)
        failed = client.post("/recommend", json={"user_id": user_id(3)})
    assert failed.status_code == 503 and failed.headers["Retry-After"]
    assert "try again" in failed.json()["detail"]
    assert "ONNXRuntimeError" not in failed.text and "restarted" not in failed.text
    assert client.post("/recommend", json={"user_id": user_id(3)}).status_code == 200

    async def stopping(*args: object, **kwargs: object) -> object:
        raise ShuttingDownError("the server is shutting down; send the request again")

    with monkeypatch.context() as patch:
        patch.setattr(MicroBatcher, "top_k", stopping)
        refused = client.post("/recommend", json={"user_id": user_id(3)})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert "shutting down" in refused.json()["detail"]


def test_the_model_can_run_in_a_thread_instead(bundle_dir: Path, tmp_path: Path) -> None:
    with make_client(bundle_dir, tmp_path, model_process=False) as client:
        assert isinstance(client.app.state.serving.bundle.model,  # type: ignore[attr-defined]
                          OnnxModel)
        with make_client(bundle_dir, tmp_path / "p") as other:
            for body in ({"user_id": user_id(2)}, {"sequence": [movie_id(3), movie_id(9)]}):
                assert (client.post("/recommend", json=body).json()["items"]
                        == other.post("/recommend", json=body).json()["items"])


def test_metrics_exposition(client: TestClient) -> None:
    client.post("/recommend", json={"user_id": user_id(3)})
    client.post("/recommend", json={"top_k": 0})
    text = client.get("/metrics").text
    assert 'movierec_request_duration_seconds_count{method="POST",route="/recommend",' \
           'status="200"} 1.0' in text
    assert 'route="/recommend",status="422"' in text
    for name in ("movierec_batch_size_bucket", "movierec_queue_wait_seconds_bucket",
                 "movierec_recommended_item_popularity_bucket",
                 "movierec_sequence_length_bucket", "movierec_inference_seconds_bucket"):
        assert name in text
    assert 'movierec_model_info{alias="production",data_version="data-1",precision="fp32",' \
           'run_id="run-a",version="7"} 1.0' in text
    assert metric(client, "movierec_recommended_item_popularity_count") == 10
    client.get("/users/5/history")
    client.get("/no/such/page")
    text = client.get("/metrics").text
    assert 'route="/users/{user_id}/history"' in text  # templates, not raw paths
    assert 'route="unmatched",status="404"' in text
    client.request("PROPFIND", "/recommend")  # any token is a method: bounded labels
    text = client.get("/metrics").text
    assert 'method="other"' in text and "PROPFIND" not in text


def test_demo_users_and_page(client: TestClient) -> None:
    users = client.get("/demo/users").json()["users"]
    assert len(users) == 3 and len({u["top_genre"] for u in users}) == 3
    for user in users:
        assert set(user) == {"user_id", "top_genre", "history_length", "recent"}
        assert 0 < len(user["recent"]) <= 10
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    csp = page.headers["content-security-policy"]
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp
    html = PAGE.read_text()
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)  # no CDN
    for route in ("/demo/users", "/recommend", "/feedback", "/history"):
        assert route in html


def test_markup_in_titles_is_returned_as_data(client: TestClient) -> None:
    body = client.post("/recommend", json={"user_id": 999}).json()
    assert body["items"][0]["title"] == MARKUP_TITLE  # the page renders it with textContent


def test_body_too_large_is_413(bundle_dir: Path, tmp_path: Path) -> None:
    with make_client(bundle_dir, tmp_path, max_body_bytes=2048) as small:
        big = json.dumps({"sequence": list(range(1000))})
        response = small.post("/recommend", content=big,
                              headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert "limit for this route is 2048 bytes" in response.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
            yield big[:1500].encode()
            yield big[1500:].encode()

        streamed = small.post("/recommend", content=chunks(),
                              headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        fine = small.post("/recommend", json={"sequence": [movie_id(2)]})
        assert fine.status_code == 200


def test_sequence_too_long_says_what_to_do(bundle_dir: Path, tmp_path: Path) -> None:
    with make_client(bundle_dir, tmp_path, max_sequence_length=5) as short:
        response = short.post("/recommend", json={"sequence": [movie_id(1)] * 6})
        assert response.status_code == 422
        assert "send at most 5" in response.json()["message"]


def test_cors_only_when_configured(client: TestClient, bundle_dir: Path,
                                   tmp_path: Path) -> None:
    origin = {"Origin": "http://example.org"}
    assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
    with make_client(bundle_dir, tmp_path, cors_origins=["http://example.org"]) as cors:
        got = cors.get("/health", headers=origin).headers
        assert got["access-control-allow-origin"] == "http://example.org"


def test_feedback_store_urls(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert store.path == tmp_path / "a.db"
    mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = store._conn.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)  # 2 = FULL
    store.close()
    with pytest.raises(FeedbackStoreError, match=r"postgresql://user:\*\*\*@db/movierec") as err:
        open_store("postgresql://user:pw@db/movierec")  # unreachable here: a masked error
    assert "pw@" not in str(err.value)
    with pytest.raises(FeedbackStoreError, match="unknown scheme") as err:
        open_store("mysql://user:hunter2@db/movierec")
    assert "hunter2" not in str(err.value) and "user:***@db" in str(err.value)
    with pytest.raises(FeedbackStoreError, match="three slashes"):
        open_store("sqlite://feedback.db")


def test_default_feedback_db_under_movierec_home(bundle_dir: Path,
                                                 isolated_home: Path) -> None:
    settings = ServeSettings(bundle=bundle_dir, threads=1)
    assert settings.resolved_feedback_url() == f"sqlite:///{isolated_home / 'feedback.db'}"


def test_json_log_lines_carry_extra_fields_and_no_token() -> None:
    record = logging.LogRecord("movierec.serving", logging.INFO, __file__, 1, "request", None,
                               None)
    record.route, record.status = "/recommend", 200
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "request" and line["route"] == "/recommend"
    settings = ServeSettings(bundle=Path("b"), admin_token="s3cret-token")  # type: ignore[arg-type]
    assert "s3cret-token" not in repr(settings) and "s3cret-token" not in str(
        settings.model_dump())


def test_serving_does_not_import_torch_ray_or_mlflow() -> None:
    code = ("import sys, movierec.serving.app; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_batch_histogram_renders_like_a_prometheus_histogram() -> None:
    values = np.array([0.0, 0.01, 0.02, 0.05, 0.3, 0.75, 0.9999, 1.0, 0.5, 0.1])
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    histogram = BatchHistogram("popularity", "p.", PERCENTILE_BUCKETS, ours)
    histogram.observe_many(values[:4])
    histogram.observe_many(values[4:])  # a second batch adds up
    histogram.observe_many(values[:0])  # an empty one changes nothing
    reference = Histogram("popularity", "p.", buckets=PERCENTILE_BUCKETS, registry=theirs)
    for value in values:
        reference.observe(float(value))
    lines = [line for line in generate_latest(theirs).decode().splitlines()
             if not line.startswith(("popularity_created", "# "))]
    assert generate_latest(ours).decode().splitlines()[2:] == lines


def test_recommend_sends_the_stored_tie_only_when_the_model_uses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.serving.batcher import MicroBatcher
    from tests.unit.test_serving_bundle import rewrite_metadata

    sent: list[int] = []
    original = MicroBatcher.top_k

    async def spy(self: MicroBatcher, model: object, user: int, seq: np.ndarray, k: int,
                  exclude: np.ndarray | None, ties: int = 0) -> object:
        sent.append(ties)
        return await original(self, model, user, seq, k, exclude, ties)  # type: ignore[arg-type]

    monkeypatch.setattr(MicroBatcher, "top_k", spy)
    plain = make_bundle(tmp_path / "plain")
    with make_client(plain, tmp_path / "a") as client:
        assert client.post("/recommend", json={"user_id": user_id(3)}).status_code == 200
    tied = make_bundle(tmp_path / "tied")
    rewrite_metadata(tied, model_config={"tie_orders": 8})
    with make_client(tied, tmp_path / "b") as client:
        for body in ({"user_id": user_id(3)}, {"user_id": user_id(1)},
                     {"user_id": user_id(3), "sequence": [movie_id(1), movie_id(2)]}):
            assert client.post("/recommend", json=body).status_code == 200
    # user 3's stored history ends in two tied items (make_bundle); a sent sequence has no
    # times, and a bundle scored without tie orders is not asked for them
    assert sent == [0, 2, 0, 0]


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cr%40t@db:5432/fb", "postgresql://app:***@db:5432/fb"),
    ("postgresql://app@db/fb?password=hunter2&sslmode=require",
     "postgresql://app@db/fb?password=***&sslmode=require"),
    ("postgresql://app@db/fb?sslmode=require", "postgresql://app@db/fb?sslmode=require"),
    ("sqlite:///feedback.db", "sqlite:///feedback.db"),
    ("postgresql:///db?host=/var/run/postgresql&password=s3cr3t",  # no host: kept as written
     "postgresql:///db?host=/var/run/postgresql&password=***"),
    ("postgresql://app@db/fb?sslpassword=k3y&sslmode=verify-full",
     "postgresql://app@db/fb?sslpassword=***&sslmode=verify-full"),
])
def test_mask_url_hides_both_places_a_password_can_be(url: str, shown: str) -> None:
    from movierec.serving.feedback import mask_url

    assert mask_url(url) == shown


def test_a_client_that_leaves_mid_upload_is_no_server_error(client: TestClient) -> None:
    import asyncio

    async def abandoned_upload() -> list[int]:
        messages = iter([{"type": "http.request", "body": b'{"events":', "more_body": True},
                         {"type": "http.disconnect"}])
        statuses: list[int] = []

        async def receive() -> dict[str, object]:
            return next(messages)

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/feedback",
                 "raw_path": b"/feedback", "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("test", 80)}
        await client.app(scope, receive, send)  # type: ignore[arg-type]
        return statuses

    assert asyncio.run(abandoned_upload()) == []  # nobody to answer
    text = client.get("/metrics").text
    assert 'status="499"' in text and 'status="500"' not in text
