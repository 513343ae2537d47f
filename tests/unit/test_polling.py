"""The one waiting loop: first answer, deadline, early end, and the HTTP check."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from movierec.polling import http_ok, poll, process_gone, wait_until
from movierec.serving.loadtest import free_port


def _counter(answers: list[object]) -> tuple[list[int], object]:
    calls = [0]

    def probe() -> object:
        calls[0] += 1
        return answers[min(calls[0], len(answers)) - 1]

    return calls, probe


def test_poll_returns_the_first_answer_that_is_not_none_or_false() -> None:
    calls, probe = _counter([None, False, {}, "later"])
    assert poll(probe, 5, every=0.0) == {}  # an empty body is an answer
    assert calls[0] == 3
    calls, probe = _counter([None, 0])
    assert poll(probe, 5, every=0.0) == 0


def test_poll_gives_none_at_the_deadline_after_looking_at_least_once() -> None:
    calls, probe = _counter([None])
    assert poll(probe, 0, every=0.0) is None
    assert calls[0] == 1
    started = time.monotonic()
    assert poll(lambda: False, 0.3, every=0.05) is None
    assert 0.3 <= time.monotonic() - started < 2


def test_poll_ends_at_once_with_the_abort_message() -> None:
    calls, probe = _counter([None])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="server exited with code 1"):
        poll(probe, 60, every=0.01,
             abort=lambda: "server exited with code 1" if calls[0] >= 2 else None)
    assert calls[0] == 2
    assert time.monotonic() - started < 5
    # A probe that succeeds wins over an abort asked in the same round.
    assert poll(lambda: True, 60, abort=lambda: "exited") is True


def test_wait_until_times_out_naming_what_it_waited_for() -> None:
    assert wait_until(lambda: True, 1, "nothing") < 1
    with pytest.raises(TimeoutError, match=r"the flag did not happen within 0\.1 s"):
        wait_until(lambda: False, 0.1, "the flag", every=0.02)


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            bodies = {"/version": b'{"version": 7}', "/html/version": b"<html>proxy</html>",
                      "/health": b""}
            self.send_response(200 if self.path in bodies else 503)
            self.end_headers()
            self.wfile.write(bodies.get(self.path, b""))

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_ok_is_true_only_for_a_200(http_server: str) -> None:
    assert http_ok(f"{http_server}/health")
    assert not http_ok(f"{http_server}/ready")  # 503
    assert not http_ok(f"http://127.0.0.1:{free_port()}/health", timeout=0.5)  # nobody there


def test_reported_version_is_none_unless_a_version_comes_back(http_server: str) -> None:
    from movierec.lifecycle.backends import reported_version

    assert reported_version(http_server, timeout=2.0) == "7"
    assert reported_version(f"{http_server}/html", timeout=2.0) is None  # 200, not JSON
    assert reported_version(f"{http_server}/down", timeout=2.0) is None  # 503
    assert reported_version(f"http://127.0.0.1:{free_port()}", timeout=0.5) is None


def test_process_gone_collects_an_exited_child_that_would_look_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not process_gone(child.pid)
        child.kill()
        # Killed but not yet waited for, it is a zombie: os.kill(pid, 0) still succeeds.
        assert poll(lambda: process_gone(child.pid), 5.0, every=0.05)
    finally:
        child.kill()  # a no-op once collected: Popen sees the child is gone
        child.wait()


def _sleeper() -> subprocess.Popen[bytes]:
    """A process in a session of its own, as the platform starts its services."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)


def test_a_pid_file_names_its_process_and_never_a_stranger_with_the_same_pid(
        tmp_path: Path) -> None:
    from movierec.polling import process_start, read_pid_file, write_pid_file

    child = _sleeper()
    try:
        path = tmp_path / "stage.pid"
        write_pid_file(path, child.pid)
        assert read_pid_file(path) == child.pid
        # The same pid with another start time: the recorded process ended and the pid
        # was given to another one (after a reboot, say).
        start = process_start(child.pid)
        assert start is not None and start.isdigit()
        path.write_text(f"{child.pid} {int(start) - 1}\n")
        assert read_pid_file(path) is None
        path.write_text(f"{child.pid}\n")  # a file of the old format: the pid alone
        assert read_pid_file(path) == child.pid
    finally:
        child.kill()
        child.wait()
    assert read_pid_file(path) is None  # the process ended
    assert read_pid_file(tmp_path / "missing.pid") is None
    (tmp_path / "garbage.pid").write_text("not a pid")
    assert read_pid_file(tmp_path / "garbage.pid") is None


def test_platform_down_stops_orphaned_stages_and_leaves_strangers_alone(
        tmp_path: Path) -> None:
    from movierec.lifecycle.backends.local import LocalPlatform
    from movierec.polling import process_start, write_pid_file

    platform = LocalPlatform(home=tmp_path)
    platform.folder.mkdir(parents=True)
    orphan, stranger = _sleeper(), _sleeper()
    try:
        # A stage whose supervisor was killed; a supervisor pid file naming a reused pid.
        write_pid_file(platform.folder / "canary.pid", orphan.pid)
        (platform.folder / "supervisor.pid").write_text(
            f"{stranger.pid} {int(process_start(stranger.pid) or 1) - 1}\n")
        assert platform.down() == ["canary"]
        assert orphan.wait(timeout=10) is not None
        assert stranger.poll() is None  # not ours: never signalled
        assert not list(platform.folder.glob("*.pid"))
    finally:
        for process in (orphan, stranger):
            process.kill()
            process.wait()


def test_a_service_that_keeps_failing_is_restarted_ever_more_slowly() -> None:
    from movierec.lifecycle.backends.supervisor import MAX_BACKOFF_S, POLL_S, restart_delay

    assert restart_delay(0, 1.0) == POLL_S
    assert restart_delay(3, 1.0) == 8 * POLL_S
    assert restart_delay(50, 1.0) == MAX_BACKOFF_S
    assert restart_delay(50, 3600.0) == 0.0  # it ran an hour: restarted at once


def test_the_supervisor_waits_out_a_crash_loop_but_not_for_a_new_version(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from movierec.lifecycle.backends import supervisor as module

    started: list[tuple[str, int]] = []
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()

    def start(stage: str, spec: dict[str, str], restarts: int = 0) -> module.Service:
        started.append((spec["version"], restarts))
        return module.Service(stage, spec["version"], spec["bundle"], dead,
                              started_at=clock[0], restarts=restarts)

    clock = [1000.0]
    monkeypatch.setattr(module.time, "time", lambda: clock[0])
    sup = module.Supervisor(tmp_path, "127.0.0.1", {"staging": 8001})
    monkeypatch.setattr(sup, "_start", start)
    desired = tmp_path / "stages.json"
    desired.write_text(json.dumps({"staging": {"version": "1", "bundle": "b1"}}))
    sup.reconcile()  # started; it dies at once, over and over
    for _ in range(3):
        sup.reconcile()  # notices the exit: restart after restart_delay, not at once
        clock[0] += module.restart_delay(sup.services["staging"].restarts, 0.0)
        sup.reconcile()
    assert started == [("1", 0), ("1", 1), ("1", 2), ("1", 3)]
    sup.reconcile()  # dead again, now in a backoff of 8 polls
    desired.write_text(json.dumps({"staging": {"version": "2", "bundle": "b2"}}))
    sup.reconcile()  # a new version starts at once, with a clean slate
    assert started[-1] == ("2", 0)
