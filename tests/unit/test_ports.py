"""Ports for local servers: drawn outside the kernel's ephemeral range, and a server that
cannot bind its port is reported at once."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from movierec.lifecycle.backends.local import LocalPlatform
from movierec.lifecycle.config import PlatformConfig
from movierec.serving import loadtest
from movierec.serving.loadtest import free_port


def test_free_port_is_bindable_below_the_ephemeral_range_and_never_repeats() -> None:
    low, _ = loadtest._ephemeral_ports()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(low - loadtest.FREE_PORT_SPAN <= port < low for port in ports)
    with socket.socket() as sock:  # still free: nothing bound it
        sock.bind(("127.0.0.1", ports[-1]))


def test_free_port_reads_the_kernel_range(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("40000\t60999\n")
    monkeypatch.setattr(loadtest, "EPHEMERAL_RANGE_FILE", ranges)
    assert 40000 - loadtest.FREE_PORT_SPAN <= free_port() < 40000
    ranges.write_text("1024 65000\n")  # no room below it: the OS picks
    assert free_port() > 0
    monkeypatch.setattr(loadtest, "EPHEMERAL_RANGE_FILE", tmp_path / "missing")
    assert loadtest._ephemeral_ports() == loadtest.DEFAULT_EPHEMERAL_PORTS


def test_free_port_gives_up_with_a_clear_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("30010 60999\n")
    monkeypatch.setattr(loadtest, "EPHEMERAL_RANGE_FILE", ranges)
    monkeypatch.setattr(loadtest, "FREE_PORT_SPAN", 5)
    monkeypatch.setattr(loadtest, "_handed_out", set(range(30005, 30010)))
    with pytest.raises(OSError, match=r"no free TCP port .* 30005-30009"):
        free_port()


def test_platform_up_reports_an_mlflow_that_could_not_bind_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:  # listens but never answers, so it is no MLflow
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        platform = LocalPlatform(PlatformConfig(mlflow_port=port), home=tmp_path)
        # The wait ends on the exit, not on its deadline (that would be a TimeoutError).
        with pytest.raises(RuntimeError, match=r"MLflow exited .*address already in use"):
            platform.up()
