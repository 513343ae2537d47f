"""A small HTTP client for a running service: readiness, sample answers, and a load test.

The load test keeps ``concurrency`` requests in flight for a fixed time (a closed loop, like
that many users who send again as soon as they get an answer) and reports per-request
latencies, errors and throughput. Torch-free: it only needs httpx and numpy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import random
import socket
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from movierec.polling import poll

T = TypeVar("T")

MAX_ERROR_SAMPLES = 5  # distinct error messages kept for the report
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_PORTS = (32768, 60999)  # Linux's default, when the file cannot be read
FREE_PORT_SPAN = 10_000  # free_port draws from this many ports below the ephemeral range
FREE_PORT_TRIES = 200
_handed_out: set[int] = set()  # ports free_port already returned in this process


@dataclass
class LoadResult:
    """What one load test measured.

    Attributes:
        latencies: Seconds per successful request, in completion order.
        errors: Requests that failed (transport error or a status other than 200).
        error_samples: Up to ``MAX_ERROR_SAMPLES`` distinct error messages.
        seconds: Wall time of the test.
        concurrency: Requests kept in flight.
    """

    latencies: list[float]
    errors: int
    seconds: float
    concurrency: int
    error_samples: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return len(self.latencies) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers: counts, throughput and the latency summary in milliseconds."""
        return {"requests": len(self.latencies) + self.errors, "errors": self.errors,
                "concurrency": self.concurrency, "seconds": round(self.seconds, 3),
                "throughput_rps": round(self.throughput, 2),
                **latency_summary(self.latencies), "error_samples": self.error_samples}


def latency_summary(latencies: Sequence[float]) -> dict[str, float | None]:
    """Mean, p50, p90, p99 and max of latencies given in seconds, in milliseconds.

    Percentiles use linear interpolation; an empty input gives ``None`` for each.
    """
    keys = ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    if len(latencies) == 0:
        return dict.fromkeys(keys)
    ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    values = (ms.mean(), *np.percentile(ms, (50, 90, 99)), ms.max())
    return {key: round(float(v), 3) for key, v in zip(keys, values, strict=True)}


def recommend_payloads(user_ids: Sequence[int], top_k: int = 10) -> Iterator[dict[str, Any]]:
    """``/recommend`` bodies cycling over ``user_ids`` (their stored histories are used)."""
    if len(user_ids) == 0:
        raise ValueError("user_ids is empty: pass at least one user id known to the service")
    return ({"user_id": int(u), "top_k": top_k} for u in itertools.cycle(user_ids))


async def run_load(base_url: str, payloads: Iterator[dict[str, Any]], seconds: float,
                   concurrency: int, path: str = "/recommend",
                   timeout: float = 10.0) -> LoadResult:
    """POST ``payloads`` to ``base_url + path`` from ``concurrency`` workers for ``seconds``.

    Each worker sends its next request as soon as the previous one is answered; requests
    started before the deadline are awaited, so the test may run one request longer.

    Args:
        base_url: The service, e.g. ``http://127.0.0.1:8000``.
        payloads: JSON bodies, taken in turn by all workers (e.g. ``recommend_payloads``).
        seconds: How long to keep sending.
        concurrency: Requests in flight (workers sharing one connection pool).
        path: The route to call.
        timeout: Seconds before one request counts as an error.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency={concurrency}: use at least 1")
    if seconds <= 0:
        raise ValueError(f"seconds={seconds}: use a positive duration")
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                body = next(payloads)
                sent = time.perf_counter()
                try:
                    response = await client.post(path, json=body)
                except httpx.HTTPError as error:
                    errors.append(f"{type(error).__name__}: {error}")
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    samples = list(dict.fromkeys(errors))[:MAX_ERROR_SAMPLES]
    return LoadResult(latencies, len(errors), elapsed, concurrency, samples)


def load_test(base_url: str, user_ids: Sequence[int], seconds: float, concurrency: int,
              top_k: int = 10) -> LoadResult:
    """Blocking ``run_load`` of ``/recommend`` over ``user_ids``.

    Safe to call where an event loop already runs (a Jupyter kernel): the test then gets its
    own loop in a helper thread.
    """
    return run_blocking(run_load(base_url, recommend_payloads(user_ids, top_k), seconds,
                                 concurrency))


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code.

    Safe where an event loop already runs (a Jupyter kernel): the coroutine then gets its
    own loop in a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel draws outgoing connections' local ports from (Linux's file)."""
    try:
        low, high = EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL_PORTS


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now, for a server that will bind it a little later.

    A port the OS picks with ``bind(0)`` lies in its ephemeral range, and any client's
    ``connect()`` may take it before the server starts (a lifecycle test lost its MLflow
    server that way: "address already in use"). So the port is drawn from the
    ``FREE_PORT_SPAN`` ports just below that range, which the kernel never hands out by
    itself, and never twice in one process. Another process could still take it on purpose.

    Raises:
        OSError: No port of that span could be bound in ``FREE_PORT_TRIES`` draws.
    """
    low = _ephemeral_ports()[0]
    first = max(low - FREE_PORT_SPAN, 1024)
    if first >= low:  # an ephemeral range that starts at the bottom: let the OS pick
        with socket.socket() as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    # SystemRandom: training seeds the random module, and two seeded processes would then
    # draw the same ports.
    draw = random.SystemRandom()
    for _ in range(FREE_PORT_TRIES):
        port = draw.randrange(first, low)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free TCP port among {FREE_PORT_TRIES} tries in {first}-{low - 1} "
                  f"on {host}")


def wait_ready(base_url: str, timeout: float = 60.0,
               alive: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Poll ``GET /ready`` until it answers 200; return its body.

    Args:
        base_url: The service.
        timeout: Seconds to wait in all.
        alive: Says whether the server process still runs; when it stops, waiting ends at
            once instead of at the timeout.

    Raises:
        RuntimeError: The server exited before it was ready.
        TimeoutError: It was not ready within ``timeout`` seconds.
    """
    last = ["no answer"]

    def ready_body() -> dict[str, Any] | None:
        try:
            response = httpx.get(f"{base_url}/ready", timeout=2.0)
        except httpx.TransportError as error:
            last[0] = type(error).__name__
            return None
        if response.status_code == 200:
            return dict(response.json())
        last[0] = f"HTTP {response.status_code} {response.text[:200]}"
        return None

    def exited() -> str | None:
        if alive is None or alive():
            return None
        return f"the service at {base_url} exited before it was ready"

    body = poll(ready_body, timeout, abort=exited)
    if body is None:
        raise TimeoutError(f"{base_url}/ready did not answer 200 within {timeout:g} s (last: "
                           f"{last[0]}); check the service log")
    return body


def recommendation_rows(base_url: str, user_ids: Sequence[int],
                        top_k: int = 5) -> list[dict[str, Any]]:
    """``POST /recommend`` for each user; one flat row per recommended movie.

    Rows hold ``user_id``, ``rank``, ``title``, ``year``, ``genres`` (joined), ``score``,
    ``movie_id`` and ``fallback``, ready for a table.
    """
    rows = []
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        for user_id in user_ids:
            response = client.post("/recommend", json={"user_id": int(user_id),
                                                       "top_k": top_k})
            response.raise_for_status()
            reply = response.json()
            for rank, item in enumerate(reply["items"], start=1):
                rows.append({"user_id": int(user_id), "rank": rank, "title": item["title"],
                             "year": item["year"], "genres": ", ".join(item["genres"]),
                             "score": round(float(item["score"]), 3),
                             "movie_id": item["movie_id"], "fallback": reply["fallback"]})
    return rows
