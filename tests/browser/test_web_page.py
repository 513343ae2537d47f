"""The demo page at ``/`` in headless Chromium (Playwright), against a live service.

The service runs in a uvicorn thread over the tiny torch-free bundle. Chromium is Debian's
(``make browser-deps``); without it the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect, sync_playwright

from movierec.serving.app import ServeSettings, create_app
from movierec.serving.feedback import FeedbackStore
from tests.unit.test_serving_bundle import MARKUP_TITLE, make_bundle

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
# A second markup title, on a movie the tiny model recommends to demo users (item 30), so
# both lists are checked; MARKUP_TITLE (item 1) is in a demo user's history.
REC_MARKUP_ITEM, REC_MARKUP_TITLE = 30, "<b>Bold</b><img src=x onerror=alert(1)>"
TIMEOUT_MS = 15_000  # generous: CI shares two cores with other jobs


def artifact_dir() -> Path:
    """Where screenshots go: $MOVIEREC_TEST_ARTIFACTS, else .cache/test-artifacts (ignored)."""
    root = os.environ.get("MOVIEREC_TEST_ARTIFACTS")
    folder = Path(root) if root else REPO / ".cache" / "test-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def markup_bundle(folder: Path) -> Path:
    """The tiny bundle with REC_MARKUP_TITLE on one more movie (checksums recomputed)."""
    make_bundle(folder)
    items = pl.read_parquet(folder / "items.parquet")
    items.with_columns(
        pl.when(pl.col("item_idx") == REC_MARKUP_ITEM)
        .then(pl.lit(REC_MARKUP_TITLE))
        .otherwise(pl.col("title"))
        .alias("title")
    ).write_parquet(folder / "items.parquet")
    meta = json.loads((folder / "metadata.json").read_text())
    meta["files"]["items.parquet"] = hashlib.sha256(
        (folder / "items.parquet").read_bytes()
    ).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


@dataclass
class Service:
    """A live service: its base URL and feedback store."""

    url: str
    store: FeedbackStore

    def get(self, path: str) -> Any:
        response = httpx.get(self.url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def recommend(self, user: int) -> list[dict[str, Any]]:
        response = httpx.post(
            self.url + "/recommend", json={"user_id": user, "top_k": 10}, timeout=10
        )
        response.raise_for_status()
        return list(response.json()["items"])

    def history(self, user: int) -> dict[str, Any]:
        return dict(self.get(f"/users/{user}/history?limit=10"))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("web")
    app = create_app(
        ServeSettings(
            bundle=markup_bundle(root / "bundle"), threads=1, feedback_url=str(root / "feedback.db")
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, log_level="warning")
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here: no race for a free port
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)
    try:
        yield Service(f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.serving.store)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"chromium not installed ({CHROMIUM} missing): run `make browser-deps` as root"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{reason}; CI must run the browser tests", pytrace=False)
        pytest.skip(reason)
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@dataclass
class PageErrors:
    """What a page reported that it should not: script errors, console errors, dialogs."""

    messages: list[str] = field(default_factory=list)


@pytest.fixture
def page(browser: Browser, service: Service) -> Iterator[tuple[Page, PageErrors]]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors = PageErrors()
    tab.on("pageerror", lambda exc: errors.messages.append(f"page error: {exc}"))

    def console(msg: ConsoleMessage) -> None:
        url = msg.location.get("url", "")
        if msg.type == "error":
            errors.messages.append(f"console: {msg.text} ({url})")

    tab.on("console", console)

    def dialog(d: Dialog) -> None:  # an alert() would mean injected script ran
        errors.messages.append(f"dialog: {d.message}")
        d.dismiss()

    tab.on("dialog", dialog)
    tab.goto(service.url + "/")
    yield tab, errors
    context.close()


def user_buttons(tab: Page) -> Any:
    return tab.locator("#users button")


def meta_text(movie: dict[str, Any]) -> str:
    """The page's "year · genres" line for a movie (parts that are empty are left out)."""
    parts = [str(movie["year"]) if movie["year"] else "", ", ".join(movie["genres"])]
    return " · ".join(p for p in parts if p)


def pick(tab: Page, service: Service, user: int) -> None:
    """Press a user's button and wait until the page shows what the API says for them."""
    tab.locator(f'#users button[data-user="{user}"]').click()
    expect(tab.locator(f'#users button[data-user="{user}"]')).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(tab.locator("#history .title")).to_have_text(
        [m["title"] for m in service.history(user)["items"]]
    )
    expect(tab.locator("#recs .title")).to_have_text([m["title"] for m in service.recommend(user)])


def test_three_demo_users_with_history_and_top10(
    page: tuple[Page, PageErrors], service: Service
) -> None:
    tab, errors = page
    demo = service.get("/demo/users")["users"]
    assert len(demo) == 3
    expect(user_buttons(tab)).to_have_count(3)
    for user, button in zip(demo, user_buttons(tab).all(), strict=True):
        expect(button).to_contain_text(f"User {user['user_id']}")
        expect(button).to_contain_text(f"likes {user['top_genre']}")
        expect(button).to_contain_text(f"· {user['history_length']} watched")
    expect(user_buttons(tab).first).to_have_attribute("aria-pressed", "true")  # picked on load
    expect(tab.locator("#version")).to_contain_text("model run-a")

    for user in demo:
        uid = user["user_id"]
        pick(tab, service, uid)
        expect(tab.locator('#users button[aria-pressed="true"]')).to_have_count(1)
        history = service.history(uid)["items"]
        assert history, f"demo user {uid} has no history"
        expect(tab.locator("#history li .meta")).to_have_text([meta_text(m) for m in history])
        recs = service.recommend(uid)
        assert len(recs) == 10
        expect(tab.locator("#recs > li")).to_have_count(10)
        expect(tab.locator("#recs .meta")).to_have_text([meta_text(m) for m in recs])
        expect(tab.locator("#recs > li button")).to_have_text(["watch"] * 10)
        years = [m["year"] for m in recs if m["year"]]
        genres = {g for m in recs for g in m["genres"]}
        assert years and genres  # the metas above really show years and genres
    assert not errors.messages


def test_watch_sends_feedback_and_updates_recommendations_in_place(
    page: tuple[Page, PageErrors], service: Service, tmp_path: Path
) -> None:
    tab, errors = page
    uid = service.get("/demo/users")["users"][0]["user_id"]
    pick(tab, service, uid)
    before = service.history(uid)
    recs = service.recommend(uid)
    watched = next(m for m in recs if m["title"] != REC_MARKUP_TITLE)
    tab.evaluate("window.sameDocument = true")  # gone if the page reloads

    row = tab.locator("#recs > li").filter(
        has=tab.locator(".title", has_text=re.compile(f"^{re.escape(watched['title'])}$"))
    )
    with tab.expect_request(
        lambda r: (
            r.method == "POST" and r.url.endswith("/feedback") and '"watch"' in (r.post_data or "")
        )
    ) as sent:
        row.get_by_role("button", name="watch").click()
    events = sent.value.post_data_json["events"]
    assert [(e["user_id"], e["movie_id"], e["event"]) for e in events] == [
        (uid, watched["movie_id"], "click"), (uid, watched["movie_id"], "watch")
    ]

    # The lists update in place: the movie moves from the top 10 to the head of the history.
    expect(row).to_have_count(0)
    expect(tab.locator("#history .title").first).to_have_text(watched["title"])
    after = service.recommend(uid)
    assert watched["movie_id"] not in [m["movie_id"] for m in after]
    expect(tab.locator("#recs .title")).to_have_text([m["title"] for m in after])
    expect(tab.locator("#recs > li")).to_have_count(10)
    expect(tab.locator('#users button[aria-pressed="true"]')).to_contain_text(
        f"· {before['length'] + 1} watched"
    )
    assert tab.evaluate("window.sameDocument") is True, "the page reloaded"

    history = service.history(uid)
    assert history["length"] == before["length"] + 1
    assert history["items"][0]["movie_id"] == watched["movie_id"]
    assert (uid, watched["movie_id"]) in {(u, m) for u, m, _ in service.store.watches()}
    assert not errors.messages

    shot = tab.screenshot(full_page=True)
    (tmp_path / "web_page.png").write_bytes(shot)
    (artifact_dir() / "web_page.png").write_bytes(shot)


def test_markup_in_titles_is_shown_as_text(
    page: tuple[Page, PageErrors], service: Service, tmp_path: Path
) -> None:
    tab, errors = page
    uid = next(
        (
            u["user_id"]
            for u in service.get("/demo/users")["users"]
            if MARKUP_TITLE in [m["title"] for m in service.history(u["user_id"])["items"]]
            and REC_MARKUP_TITLE in [m["title"] for m in service.recommend(u["user_id"])]
        ),
        None,
    )
    assert uid is not None, "no demo user sees both markup titles: update REC_MARKUP_ITEM"
    pick(tab, service, uid)  # the lists' titles equal the raw strings, tags included

    expect(tab.locator("#history .title", has_text=MARKUP_TITLE)).to_have_count(1)
    expect(tab.locator("#recs .title", has_text=REC_MARKUP_TITLE)).to_have_count(1)
    expect(tab.locator("b")).to_have_count(0)
    expect(tab.locator("img")).to_have_count(0)
    html = tab.locator("main").inner_html()
    assert "&lt;b&gt;Bold&lt;/b&gt;" in html and "&lt;img src=x" in html
    assert not errors.messages  # no alert(), no script error
    shot = tab.screenshot(full_page=True)
    (tmp_path / "web_page_markup.png").write_bytes(shot)
    (artifact_dir() / "web_page_markup.png").write_bytes(shot)
