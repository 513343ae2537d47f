"""movierec.machine reads /proc/cpuinfo: fields by exact name, cores without hyperthreads."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
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


REUSE_SCRIPT = """
import resource
import numpy as np
from movierec import machine

def faults_to_fill(mib):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(mib << 17)  # allocated, every page written, freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

limit = machine.keep_freed_memory()
faults_to_fill(16)
print(limit, faults_to_fill(16), faults_to_fill(256))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="sets glibc's malloc")
def test_freed_memory_is_reused_not_faulted_in_again() -> None:
    own = {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"}
    plain = {k: v for k, v in os.environ.items() if k not in own}

    def run(**env: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", REUSE_SCRIPT], capture_output=True,
                             text=True, check=True, env={**plain, **env})
        return [int(word) for word in out.stdout.split()]

    limit, again, larger = run()
    assert limit in (1 << 30, 32 << 20)  # 32 MiB where glibc refuses 1 GiB
    # 16 MiB freed and allocated again: the same pages, none faulted in anew (of 4,096).
    assert again <= 8
    assert larger > 8  # the count does see fresh memory: 256 MiB was never held
    # The user's own malloc settings win: nothing is changed.
    assert run(MALLOC_TRIM_THRESHOLD_="131072")[0] == 0
    assert run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")[0] == 0
    assert run(GLIBC_TUNABLES="glibc.pthread.rseq=0")[0] > 0  # not a malloc setting
