"""What CPU this is, read from ``/proc/cpuinfo`` (Linux).

Kept free of heavy imports: the library asks it which dropout mask is fast
(``models.dropout``) and the benchmarks, which must not import torch in their parent
process, record it beside their results.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def _cpuinfo_lines() -> tuple[str, ...]:
    try:
        return tuple(Path("/proc/cpuinfo").read_text().splitlines())
    except OSError:  # not Linux, or /proc not mounted
        return ()


def cpuinfo_field(name: str) -> str | None:
    """The first value of ``name`` in /proc/cpuinfo ("vendor_id", "model name", ...).

    Returns:
        The value with surrounding spaces removed, or None where the field or the file is
        missing.
    """
    for line in _cpuinfo_lines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


@functools.cache  # asked by every dropout call in training (models.dropout)
def cpu_vendor() -> str:
    """The CPU vendor ("GenuineIntel", "AuthenticAMD", ...), or "" where unknown."""
    return cpuinfo_field("vendor_id") or ""


def physical_cores() -> int:
    """Distinct (package, core) pairs: the count ONNX Runtime's default threads follow.

    Falls back to ``os.cpu_count()`` where /proc/cpuinfo lists no cores.
    """
    cores, package = set(), "0"
    for line in _cpuinfo_lines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            package = value.strip()
        elif key.strip() == "core id":
            cores.add((package, value.strip()))
    return len(cores) or (os.cpu_count() or 1)
