"""Feedback-store faults: ``kill -9`` during a burst of writes, and a full disk.

Each event carries a unique timestamp (its marker); an event counts as acknowledged only
when its request answered 200. Afterwards the store is read directly: every acknowledged
marker must be there (events stored but never acknowledged, because the process died
between commit and answer, are allowed and counted apart).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from movierec.polling import poll
from movierec.reliability.harness import FaultSizes
from movierec.reliability.service import ServiceProcess, stored_markers

TMPFS_SIZE = "2m"
FREE_AFTER_FILL = 192 * 1024  # bytes left free by the filler, so the store fills quickly


class _Sender:
    """Sends batches of uniquely marked watch events until stopped; records what was acked."""

    def __init__(self, url: str, batch: int, first_marker: int, user_id: int = 7,
                 movie_id: int = 1) -> None:
        self.url, self.batch, self.next = url, batch, first_marker
        self.user_id, self.movie_id = user_id, movie_id
        self.acked: list[int] = []
        self.statuses: dict[int, int] = {}
        self.transport_errors = 0
        self.messages: dict[int, str] = {}
        self.stop = threading.Event()

    def send_once(self, client: httpx.Client) -> int | None:
        """One batch; the HTTP status, or None on a transport error."""
        markers = list(range(self.next, self.next + self.batch))
        self.next += self.batch
        events = [{"user_id": self.user_id, "movie_id": self.movie_id, "event": "impression",
                   "timestamp": m} for m in markers]
        try:
            reply = client.post("/feedback", json={"events": events})
        except httpx.HTTPError:
            self.transport_errors += 1
            return None
        self.statuses[reply.status_code] = self.statuses.get(reply.status_code, 0) + 1
        if reply.status_code == 200:
            self.acked.extend(markers)
        else:
            with contextlib.suppress(ValueError):
                self.messages.setdefault(reply.status_code, str(reply.json().get("detail")))
        return reply.status_code

    def run(self) -> None:
        """Send until stopped or the server is gone."""
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while not self.stop.is_set():
                if self.send_once(client) is None:
                    return


def kill_during_feedback_burst(bundle: Path, workdir: Path, sizes: FaultSizes) -> dict[str, Any]:
    """``kill -9`` a service while two clients write feedback; count acked events lost."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = workdir / "feedback.db"
    service = ServiceProcess(bundle, db, workdir / "service.log")
    service.start()
    senders = [_Sender(service.url, sizes.feedback_batch, 10**9 * (i + 1)) for i in range(2)]
    threads = [threading.Thread(target=s.run, daemon=True) for s in senders]
    try:
        for thread in threads:
            thread.start()
        poll(lambda: sum(len(s.acked) for s in senders) >= sizes.feedback_min_acked, 60,
             every=0.01)
        service.kill9()  # the senders are still sending
        for sender in senders:
            sender.stop.set()
        for thread in threads:
            thread.join(10)
    finally:
        service.kill9()
    acked = {m for s in senders for m in s.acked}
    stored = stored_markers(db)
    lost = acked - stored
    result = {"requests": sum(sum(s.statuses.values()) + s.transport_errors for s in senders),
              "failed": sum(s.transport_errors for s in senders),
              "acknowledged": len(acked), "stored": len(stored), "lost": len(lost),
              "stored_not_acknowledged": len(stored - acked), "impact_s": 0.0,
              "statuses": _merged(s.statuses for s in senders)}
    problems = []
    if len(acked) < sizes.feedback_min_acked:
        problems.append(f"only {len(acked)} events acknowledged before the kill")
    if lost:
        problems.append(f"{len(lost)} acknowledged events are missing from the store")
    result["problems"], result["passed"] = problems, not problems
    return result


def _merged(counts: Iterable[dict[int, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for status, n in count.items():
            total[str(status)] = total.get(str(status), 0) + n
    return total


def _mount_small_fs(target: Path) -> str:
    """Mount a 2 MiB file system at ``target``: tmpfs, else a loop-mounted ext4 file.

    Raises:
        PermissionError: Neither can be mounted (needs root or CAP_SYS_ADMIN).
    """
    target.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                            str(target)], capture_output=True, text=True, check=False)
    if tmpfs.returncode == 0:
        return "tmpfs"
    image = target.with_suffix(".img")
    with image.open("wb") as handle:
        handle.truncate(4 * 1024 * 1024)
    steps = (["mkfs.ext4", "-q", "-F", str(image)],
             ["mount", "-o", "loop", str(image), str(target)])
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            done = subprocess.CompletedProcess(argv, 127, "", f"{argv[0]} not found")
        if done.returncode != 0:
            raise PermissionError(
                f"cannot mount a small file system at {target}: tmpfs said "
                f"{tmpfs.stderr.strip()!r}, {argv[0]} said {done.stderr.strip()!r}; run as "
                "root (or with CAP_SYS_ADMIN), as CI does")
    return "loop ext4"


def _unmount(target: Path) -> None:
    done = subprocess.run(["umount", str(target)], capture_output=True, check=False)
    if done.returncode != 0:  # still busy (a child holding a file): detach it lazily
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def disk_full_feedback(bundle: Path, workdir: Path, sizes: FaultSizes) -> dict[str, Any]:
    """Fill the file system holding the feedback store during writes, then free space.

    Expected: 503 with a clear message (never 500) while full, every acknowledged event
    stored, and 200 again once space returns.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    mount = workdir / "small-fs"
    kind = _mount_small_fs(mount)
    service: ServiceProcess | None = None
    try:
        db = mount / "feedback.db"
        service = ServiceProcess(bundle, db, workdir / "service.log")
        service.start()
        stat = os.statvfs(mount)
        filler = mount / "filler.bin"
        with filler.open("wb") as handle:  # leave only a little room for the store
            handle.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - FREE_AFTER_FILL))
        sender = _Sender(service.url, sizes.feedback_batch * 10, 10**9)
        started = time.monotonic()
        with httpx.Client(base_url=service.url, timeout=10.0) as client:
            full = poll(lambda: sender.send_once(client) != 200, 60, every=0.0)
            full_at = time.monotonic() if full else None
            refused = [sender.send_once(client) for _ in range(3)]  # still full: 503 each
            filler.unlink()
            freed_at = time.monotonic()
            recovered = poll(lambda: sender.send_once(client) == 200, 30, every=0.1)
            recovered_at = time.monotonic() if recovered else None
            for _ in range(3):  # and it keeps working
                sender.send_once(client)
        service.stop()
        stored = stored_markers(db)
    finally:
        if service is not None:
            service.kill9()
        _unmount(mount)
        shutil.rmtree(mount, ignore_errors=True)
    lost = set(sender.acked) - stored
    message = sender.messages.get(503, "")
    result = {"filesystem": kind, "size": TMPFS_SIZE,
              "requests": sum(sender.statuses.values()) + sender.transport_errors,
              "statuses": {str(k): v for k, v in sender.statuses.items()},
              "message_503": message, "acknowledged": len(sender.acked),
              "stored": len(stored), "lost": len(lost),
              "seconds_until_full": round(full_at - started, 2) if full_at else None,
              "impact_s": round(recovered_at - full_at, 2) if full_at and recovered_at
              else None,
              "recovery_s": round(recovered_at - freed_at, 2) if recovered_at else None,
              "refused_while_full": refused}
    problems = []
    if full_at is None:
        problems.append("the store never filled up")
    if sender.statuses.get(500) or sender.transport_errors:
        problems.append(f"500s or dropped connections: {result['statuses']}")
    if not sender.statuses.get(503) or "full" not in message:
        problems.append(f"no clear 503 while full: {result['statuses']} {message!r}")
    if recovered_at is None:
        problems.append("writes did not succeed again after space was freed")
    if lost:
        problems.append(f"{len(lost)} acknowledged events are missing from the store")
    result["problems"], result["passed"] = problems, not problems
    return result
