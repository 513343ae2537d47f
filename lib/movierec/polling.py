"""Waiting for something to happen: a deadline, a pause between looks, an early end.

Servers started as child processes (MLflow, the stage services, the fault lab's) are
waited for in several places. One loop serves them all, so each caller only says what it
looks for and what its errors say. Kept free of heavy imports (httpx only).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def poll(probe: Callable[[], T | None], timeout: float, *, every: float = 0.2,
         abort: Callable[[], str | None] | None = None) -> T | None:
    """``probe``'s first answer other than None or False, asked every ``every`` seconds.

    Args:
        probe: Looks once; None or False while what it waits for has not happened yet.
        timeout: Seconds to wait in all. ``probe`` is asked at least once.
        every: Seconds between two looks.
        abort: Asked after each look that found nothing; a message ends the wait at once
            (say, the server being waited for has exited, so its port will never answer).

    Returns:
        The answer, or None when ``timeout`` passed first.

    Raises:
        RuntimeError: With ``abort``'s message.
    """
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer is not None and answer is not False:
            return answer
        if abort is not None and (message := abort()) is not None:
            raise RuntimeError(message)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(every, left))


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               every: float = 0.05) -> float:
    """Poll ``check`` until true; return the seconds it took.

    Raises:
        TimeoutError: Naming ``what`` when it did not happen in time.
    """
    started = time.monotonic()
    if poll(check, timeout, every=every) is None:
        raise TimeoutError(f"{what} did not happen within {timeout:g} s")
    return time.monotonic() - started


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether ``GET url`` answers 200 (False when nothing answers)."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def process_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended, after collecting it if this process spawned it.

    A child that exited lingers as a zombie, which still looks alive, until collected. A
    pid now owned by another user (reused) counts as gone.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return True
    return False
