"""movierec.machine reads /proc/cpuinfo: fields by exact name, cores without hyperthreads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from movierec import machine

# Two packages with two cores each, each core listed twice (hyperthreads).
CPUINFO = "\n".join(
    f"processor\t: {n}\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
    f"model\t\t: 1\nphysical id\t: {n // 4}\ncore id\t\t: {(n // 2) % 2}\n"
    for n in range(8)).splitlines()


@pytest.fixture
def fresh_vendor() -> Iterator[None]:
    """cpu_vendor is cached: clear it around a test that fakes /proc/cpuinfo."""
    machine.cpu_vendor.cache_clear()
    yield
    machine.cpu_vendor.cache_clear()


def test_fields_cores_and_a_machine_without_cpuinfo(monkeypatch: pytest.MonkeyPatch,
                                                     fresh_vendor: None) -> None:
    monkeypatch.setattr(machine, "_cpuinfo_lines", lambda: tuple(CPUINFO))
    assert machine.cpu_vendor() == "AuthenticAMD"
    # "model" is its own field, not a prefix of "model name".
    assert machine.cpuinfo_field("model") == "1"
    assert machine.cpuinfo_field("model name") == "AMD EPYC 7B13"
    assert machine.cpuinfo_field("flags") is None
    assert machine.physical_cores() == 4

    monkeypatch.setattr(machine, "_cpuinfo_lines", lambda: ())
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 3)
    assert machine.cpu_vendor() == "AuthenticAMD"  # read once per process
    machine.cpu_vendor.cache_clear()
    assert machine.cpu_vendor() == ""
    assert machine.physical_cores() == 3


def test_this_machine_answers() -> None:
    assert machine.physical_cores() >= 1
    assert isinstance(machine.cpu_vendor(), str)
