"""Simulated users: replay held-out interactions against the stage services.

Each replayed interaction ``(user, movie, time)`` becomes one ``POST /recommend`` for the
user (the service looks up their history) followed by one ``POST /feedback``: an impression
per shown movie, a click when the list held the movie the user really watched next (a hit),
and the watch itself. Users are routed by a stable hash, so each stays on one arm; one
user's interactions are replayed in order, different users concurrently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl

from movierec.data.columns import ITEM_COL, TIMESTAMP_COL, USER_COL
from movierec.files import write_json_atomic
from movierec.lifecycle.canary import ArmStats, bucket
from movierec.lifecycle.world import World
from movierec.serving.loadtest import run_blocking

CURSOR_FILE = "cursor.json"
TOP_K = 10


@dataclass(frozen=True)
class Replayed:
    """One replayed interaction, as measured by the simulated client.

    ``ok`` is the recommendation request's success (a 200 with a list); ``feedback_ok``
    that of sending its events to ``/feedback``, kept apart so that a feedback-store
    hiccup never counts as a recommendation error in the canary's analysis.
    """

    user_id: int
    movie_id: int
    timestamp: int
    arm: str
    ok: bool
    hit: bool
    latency_ms: float
    fallback: str | None
    unknown_movies: int
    feedback_ok: bool = True


def _cursor(world: World) -> int:
    """Index of the next future interaction to replay."""
    cursor_path = world.folder / CURSOR_FILE
    return json.loads(cursor_path.read_text())["next"] if cursor_path.exists() else 0


def events_left(world: World) -> int:
    """How many future interactions have not been replayed yet."""
    return max(world.future().height - _cursor(world), 0)


def take_events(world: World, count: int) -> pl.DataFrame:
    """The next ``count`` future interactions (time order); the cursor moves durably.

    Raises:
        ValueError: The world's future traffic is used up.
    """
    cursor_path = world.folder / CURSOR_FILE
    start = _cursor(world)
    future = world.future()
    if start >= future.height:
        raise ValueError(f"all {future.height} future interactions of {world.folder} were "
                         "replayed already; remove the world folder to start over")
    events = future.slice(start, count)
    write_json_atomic(cursor_path, {"next": start + events.height}, indent=None)
    return events


async def _replay_user(client: httpx.AsyncClient, url: str, arm: str,
                       rows: list[tuple[int, int, int]], out: list[Replayed]) -> None:
    for user_id, movie_id, timestamp in rows:
        started = time.perf_counter()
        try:
            reply = await client.post(f"{url}/recommend",
                                      json={"user_id": user_id, "top_k": TOP_K})
            ok = reply.status_code == 200
        except httpx.TransportError:
            ok, reply = False, None
        latency = (time.perf_counter() - started) * 1000.0
        try:  # a 200 without a list is as failed as a 500
            body = reply.json() if ok and reply is not None else {}
            shown = [int(item["movie_id"]) for item in body["items"]]
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            out.append(Replayed(user_id, movie_id, timestamp, arm, False, False, latency,
                                None, 0, feedback_ok=False))
            continue
        hit = movie_id in shown
        events = [{"user_id": user_id, "movie_id": m, "event": "impression",
                   "timestamp": timestamp} for m in shown]
        if hit:
            events.append({"user_id": user_id, "movie_id": movie_id, "event": "click",
                           "timestamp": timestamp})
        events.append({"user_id": user_id, "movie_id": movie_id, "event": "watch",
                       "timestamp": timestamp})
        try:
            stored = await client.post(f"{url}/feedback", json={"events": events})
            feedback_ok = stored.status_code == 200
        except httpx.TransportError:
            feedback_ok = False
        out.append(Replayed(user_id, movie_id, timestamp, arm, True, hit, latency,
                            body.get("fallback"), len(body.get("unknown_movie_ids") or []),
                            feedback_ok))


async def _replay(events: pl.DataFrame, route: Callable[[int], tuple[str, str]],
                  concurrency: int) -> list[Replayed]:
    by_user: dict[int, list[tuple[int, int, int]]] = {}
    for user_id, movie_id, timestamp in events.select(USER_COL, ITEM_COL,
                                                      TIMESTAMP_COL).iter_rows():
        by_user.setdefault(int(user_id), []).append((int(user_id), int(movie_id),
                                                     int(timestamp)))
    out: list[Replayed] = []
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=10.0, limits=limits) as client:

        async def one(rows: list[tuple[int, int, int]]) -> None:
            arm, url = route(rows[0][0])
            async with gate:
                await _replay_user(client, url, arm, rows, out)

        await asyncio.gather(*(one(rows) for rows in by_user.values()))
    return out


def replay(events: pl.DataFrame, urls: dict[str, str], canary_share: float = 0.0,
           concurrency: int = 8) -> list[Replayed]:
    """Replay ``events`` against production, and the canary for a hashed share of users.

    Args:
        events: Interactions to replay (time order).
        urls: ``production`` and optionally ``canary`` base URLs.
        canary_share: Fraction of users routed to the canary (0: none).
        concurrency: Users replayed at the same time.
    """
    canary = urls.get("canary") if canary_share > 0 else None

    def route(user_id: int) -> tuple[str, str]:
        if canary is not None and bucket(user_id, canary_share):
            return "canary", canary
        return "production", urls["production"]

    return run_blocking(_replay(events, route, concurrency))


def arm_stats(records: list[Replayed], arm: str) -> ArmStats:
    """Requests, errors, hits, p95 latency and per-user (hits, served) of one arm."""
    mine = [r for r in records if r.arm == arm]
    latencies = [r.latency_ms for r in mine if r.ok]
    p95 = float(np.percentile(latencies, 95)) if latencies else None
    per_user: dict[int, list[int]] = {}
    for r in mine:
        if r.ok:
            counts = per_user.setdefault(r.user_id, [0, 0])
            counts[0] += r.hit
            counts[1] += 1
    return ArmStats(requests=len(mine), errors=sum(not r.ok for r in mine),
                    hits=sum(h for h, _ in per_user.values()), p95_ms=p95,
                    per_user=tuple((h, n) for h, n in per_user.values()))


def save_records(records: list[Replayed], path: Path) -> None:
    """Append the replayed interactions to a JSON Lines log (the monitor reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record)) + "\n")


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every replayed interaction logged so far (oldest first)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
