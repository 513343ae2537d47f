"""Waiting for something to happen: a deadline, a pause between looks, an early end.

Servers started as child processes (MLflow, the stage services, the fault lab's) are
waited for in several places. One loop serves them all, so each caller only says what it
looks for and what its errors say. Kept free of heavy imports (httpx only).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
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


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in the kernel's clock ticks since boot (Linux).

    None when it does not run or the system has no ``/proc``. A pid and its start time
    name one process: a pid reused after the recorded process ended starts later.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name before ")" may hold spaces


def write_pid_file(path: Path, pid: int) -> None:
    """Record ``pid`` and its start time, so a later reader can tell a reused pid."""
    path.write_text(f"{pid} {process_start(pid) or '-'}\n")


def read_pid_file(path: Path) -> int | None:
    """The pid recorded in ``path`` while that very process runs, else None.

    None for a missing or unreadable file, a process that ended, and a pid that now names
    another process (after a reboot, say): signalling it would hit a stranger.
    """
    try:
        fields = path.read_text().split()
        pid = int(fields[0])
    except (OSError, ValueError, IndexError):
        return None
    if process_gone(pid):
        return None
    recorded = fields[1] if len(fields) > 1 else "-"
    started = process_start(pid)
    if recorded != "-" and started is not None and started != recorded:
        return None
    return pid


def stop_process_group(pid: int, timeout: float = 30.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if still there after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):  # it may exit meanwhile
        os.killpg(pid, signal.SIGTERM)
        if not poll(lambda: process_gone(pid), timeout):
            os.killpg(pid, signal.SIGKILL)
