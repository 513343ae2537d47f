"""kill -9 of a service while it acknowledges /feedback: which events did it acknowledge?"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import httpx

from tests.unit.test_serving_bundle import movie_id


def acknowledged_until_killed(base: str, proc: subprocess.Popen[bytes], user_id: int,
                              at_least: int, batch: int = 25) -> list[int]:
    """Post watch events in batches; once ``at_least`` are acknowledged, kill -9 ``proc``
    while the sender is still sending.

    Returns:
        The timestamps (unique per event: they identify it) of every event whose request
        was answered 200; a request cut by the kill is not acknowledged.
    """
    acknowledged: list[int] = []
    stop = threading.Event()

    def send() -> None:
        stamp = 1_000_000
        with httpx.Client(base_url=base, timeout=5) as client:
            while not stop.is_set():
                stamps = list(range(stamp, stamp + batch))
                stamp += batch
                events = [{"user_id": user_id, "movie_id": movie_id(1 + s % 40),
                           "event": "watch", "timestamp": s} for s in stamps]
                try:
                    response = client.post("/feedback", json={"events": events})
                except httpx.TransportError:
                    return  # the service died mid-request: not acknowledged
                if response.status_code == 200:
                    acknowledged.extend(stamps)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        deadline = time.monotonic() + 20
        while len(acknowledged) < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        sender.join(10)
    return acknowledged
