"""/admin/reload: token checks, failures that keep serving, and a swap under load."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from movierec.serving import admin
from movierec.serving.app import ServeSettings, create_app
from movierec.serving.worker import ModelProcess
from tests.unit.test_serving_bundle import make_bundle, movie_id, rewrite_metadata, user_id

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return make_bundle(root / "a", seed=0, run_id="run-a"), make_bundle(root / "b", seed=1,
                                                                         run_id="run-b")


@pytest.fixture
def client(bundles: tuple[Path, Path], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("MOVIEREC_ADMIN_TOKEN", TOKEN)
    app = create_app(ServeSettings(bundle=bundles[0], threads=1,
                                   feedback_url=str(tmp_path / "fb.db")))
    with TestClient(app) as test_client:
        yield test_client


def test_token_checks(client: TestClient, bundles: tuple[Path, Path], tmp_path: Path) -> None:
    missing = client.post("/admin/reload", json={})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert client.post("/admin/reload", headers={"Authorization": "Basic abc"}).status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert client.get("/admin/reload", headers={"Authorization": f"Bearer {TOKEN}x"}
                      ).status_code == 403
    assert client.get("/admin/reload", headers=AUTH).json()["status"] == "idle"


def test_a_non_ascii_token_is_accepted_and_a_nul_path_is_a_422(
        bundles: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "sécret-token-ünïcode"
    monkeypatch.setenv("MOVIEREC_ADMIN_TOKEN", token)
    app = create_app(ServeSettings(bundle=bundles[0], threads=1,
                                   feedback_url=str(tmp_path / "fb.db")))
    with TestClient(app) as client:
        raw = {"Authorization": ("Bearer " + token).encode("utf-8")}  # as clients send it
        assert client.get("/admin/reload", headers=raw).status_code == 200
        wrong = {"Authorization": ("Bearer " + token[:-1] + "x").encode("utf-8")}
        assert client.get("/admin/reload", headers=wrong).status_code == 403
        nul = client.post("/admin/reload", headers=raw, json={"bundle": "a\u0000b"})
        assert nul.status_code == 422 and "NUL" in nul.json()["message"]


def test_admin_disabled_without_token(bundles: tuple[Path, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOVIEREC_ADMIN_TOKEN", raising=False)
    app = create_app(ServeSettings(bundle=bundles[0], threads=1,
                                   feedback_url=str(tmp_path / "fb.db")))
    with TestClient(app) as client:
        response = client.post("/admin/reload", headers=AUTH, json={})
        assert response.status_code == 403
        assert "MOVIEREC_ADMIN_TOKEN" in response.json()["detail"]


def test_reload_swaps_version_and_precision(client: TestClient,
                                            bundles: tuple[Path, Path]) -> None:
    before = client.post("/recommend", json={"user_id": user_id(3)}).json()
    done = client.post("/admin/reload", headers=AUTH,
                       json={"bundle": str(bundles[1]), "alias": "staging", "wait": True})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "ok" and done.json()["version"] == "run-b"
    version = client.get("/version").json()
    assert (version["version"], version["alias"], version["run_id"]) == ("run-b", "staging",
                                                                          "run-b")
    after = client.post("/recommend", json={"user_id": user_id(3)}).json()
    assert after["model_version"] == "run-b" and after["items"] != before["items"]
    same = client.post("/admin/reload", headers=AUTH, json={"precision": "int8", "wait": True})
    assert same.status_code == 200
    assert client.get("/version").json()["precision"] == "int8"
    assert 'movierec_reloads_total{outcome="ok"} 2.0' in client.get("/metrics").text


def test_a_reload_of_the_same_folder_keeps_its_version_only_for_the_same_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_ADMIN_TOKEN", TOKEN)
    folder = make_bundle(tmp_path / "served", seed=0, run_id="run-a")
    app = create_app(ServeSettings(bundle=folder, threads=1, model_version="7",
                                   feedback_url=str(tmp_path / "fb.db")))
    with TestClient(app) as client:
        def reload() -> dict[str, str]:
            reply = client.post("/admin/reload", headers=AUTH, json={"wait": True})
            assert reply.status_code == 200, reply.text
            return client.get("/version").json()

        assert reload()["version"] == "7"  # the same files: the registry's label stays
        make_bundle(folder, seed=1, run_id="run-b")  # another model written into the folder
        assert (reload()["version"], client.get("/version").json()["run_id"]) == (
            "run-b", "run-b")
        reply = client.post("/recommend", json={"user_id": user_id(3)})
        assert reply.json()["model_version"] == "run-b"


def test_a_swapped_out_model_process_exits_and_shutdown_ends_the_last(
        bundles: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_ADMIN_TOKEN", TOKEN)
    app = create_app(ServeSettings(bundle=bundles[0], threads=1,
                                   feedback_url=str(tmp_path / "fb.db")))
    with TestClient(app) as client:
        first = app.state.serving.bundle.model
        assert isinstance(first, ModelProcess) and first.alive  # the default: a child process
        reply = client.post("/admin/reload", headers=AUTH,
                            json={"bundle": str(bundles[1]), "wait": True})
        assert reply.status_code == 200, reply.text
        assert client.post("/recommend", json={"user_id": user_id(2)}).status_code == 200
        for _ in range(200):
            if not first.alive:
                break
            threading.Event().wait(0.05)
        assert not first.alive, "the old model process still runs after the swap"
        second = app.state.serving.bundle.model
        assert second.alive
    assert not second.alive  # the server's shutdown closed it


def test_failed_reload_keeps_serving(client: TestClient, tmp_path: Path) -> None:
    missing = client.post("/admin/reload", headers=AUTH,
                          json={"bundle": str(tmp_path / "nowhere"), "wait": True})
    assert missing.status_code == 422
    assert "not a folder" in missing.json()["error"]
    broken = make_bundle(tmp_path / "broken")
    rewrite_metadata(broken, files={**_files(broken), "users.parquet": "1" * 64})
    bad = client.post("/admin/reload", headers=AUTH, json={"bundle": str(broken), "wait": True})
    assert bad.status_code == 422 and "users.parquet sha256" in bad.json()["error"]
    assert client.get("/version").json()["version"] == "run-a"
    assert client.post("/recommend", json={"user_id": user_id(3)}).status_code == 200
    assert client.get("/admin/reload", headers=AUTH).json()["status"] == "failed"
    assert 'movierec_reloads_total{outcome="failed"} 2.0' in client.get("/metrics").text


def _files(folder: Path) -> dict[str, str]:
    return json.loads((folder / "metadata.json").read_text())["files"]


def test_one_reload_at_a_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    real = admin.load_bundle

    def slow_load(*args: object, **kwargs: object) -> object:
        release.wait(10)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(admin, "load_bundle", slow_load)
    started = client.post("/admin/reload", headers=AUTH, json={})
    assert started.status_code == 202 and started.json()["status"] == "running"
    assert client.post("/admin/reload", headers=AUTH, json={}).status_code == 409
    release.set()
    for _ in range(200):
        if client.get("/admin/reload", headers=AUTH).json()["status"] == "ok":
            break
        threading.Event().wait(0.05)
    assert client.get("/admin/reload", headers=AUTH).json()["status"] == "ok"


def test_a_reload_still_loading_at_shutdown_is_closed(
        bundles: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOVIEREC_ADMIN_TOKEN", TOKEN)
    loading, release, loaded = threading.Event(), threading.Event(), []
    real = admin.load_bundle

    def slow_load(*args: object, **kwargs: object) -> object:
        loading.set()
        release.wait(10)
        bundle = real(*args, **kwargs)  # type: ignore[arg-type]
        loaded.append(bundle)
        return bundle

    app = create_app(ServeSettings(bundle=bundles[0], threads=1,
                                   feedback_url=str(tmp_path / "fb.db")))
    with TestClient(app) as client:
        monkeypatch.setattr(admin, "load_bundle", slow_load)
        assert client.post("/admin/reload", headers=AUTH, json={}).status_code == 202
        assert loading.wait(10)
        # Shutdown begins while the bundle loads; the load finishes during it.
        threading.Timer(0.3, release.set).start()
    # The model that load produced, with its child process, did not outlive the server.
    (bundle,) = loaded
    assert isinstance(bundle.model, ModelProcess) and not bundle.model.alive


def test_cancel_closes_a_loaded_bundle_only_if_it_was_never_published() -> None:
    import asyncio
    from types import SimpleNamespace

    closed: list[str] = []

    def bundle(name: str) -> SimpleNamespace:
        return SimpleNamespace(model=SimpleNamespace(close=lambda: closed.append(name)))

    async def shut_down(loaded: SimpleNamespace, served: SimpleNamespace) -> None:
        manager = admin.ReloadManager(SimpleNamespace(bundle=served))  # type: ignore[arg-type]
        done = asyncio.get_running_loop().create_future()
        done.set_result(loaded)  # the load finished; the cancelled reload never swapped
        manager._loading = done
        await manager.cancel()

    served = bundle("served")
    asyncio.run(shut_down(bundle("orphan"), served))
    asyncio.run(shut_down(served, served))  # published: closed with the server, not here
    assert closed == ["orphan"]


def test_no_request_fails_while_reloading(client: TestClient,
                                          bundles: tuple[Path, Path]) -> None:
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body = ({"user_id": user_id(1 + (n + worker) % 11)} if n % 2 else
                    {"sequence": [movie_id(1 + n % 40), movie_id(1 + worker)]})
            response = client.post("/recommend", json=body)
            with lock:
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions[response.json()["model_version"]] += 1

    def served_at_least(n: int) -> None:
        for _ in range(1000):
            with lock:
                if sum(statuses.values()) >= n:
                    return
            threading.Event().wait(0.01)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        served_at_least(30)  # the load is running before the first swap
        for target in (bundles[1], bundles[0], bundles[1], bundles[0], bundles[1]):
            reply = client.post("/admin/reload", headers=AUTH,
                                json={"bundle": str(target), "wait": True})
            assert reply.status_code == 200, reply.text
        with lock:
            done = sum(statuses.values())
        served_at_least(done + 30)  # and keeps running after the last one
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) >= 60
    assert set(versions) == {"run-a", "run-b"}
