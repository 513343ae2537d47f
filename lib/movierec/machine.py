"""What CPU this is, read from ``/proc/cpuinfo`` (Linux), and how its allocator is set.

Kept free of heavy imports: the library asks it which dropout mask is fast
(``models.dropout``) and the benchmarks, which must not import torch in their parent
process, record it beside their results.
"""

from __future__ import annotations

import ctypes
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


# glibc's mallopt parameters (malloc.h), and the settings a user can give it themselves.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_USER_MALLOC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
# 1 GiB; glibc before 2.35 accepts an mmap threshold of at most 32 MiB on 64-bit systems,
# which still covers ml-100k's 21 MB blocks.
_KEEP_LIMITS = (1 << 30, 32 << 20)


def _user_set_malloc() -> bool:
    return any(name in os.environ for name in _USER_MALLOC_VARIABLES) or (
        "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""))


@functools.cache
def keep_freed_memory() -> int:
    """Let glibc's malloc keep freed blocks for reuse instead of returning them, process-wide.

    A CPU training step allocates several [positions, n_items] float tensors (21 MB each for
    ml-100k) and frees them again. By default glibc serves such blocks with fresh ``mmap``
    or trims them off the heap when freed, so every step faults the same memory in again,
    page by page: 4 default epochs on ml-100k (2 AMD cores) took 610,000-720,000 page
    faults and 2.1-2.5 s of system time, against 127,000-141,000 and 0.6-0.8 s with the
    blocks kept, whose epochs were 6-16% shorter (medians of three paired runs). Both
    thresholds are raised together: either alone turns off glibc's own adaptive threshold
    and makes it worse (up to 4.2 million faults). The price: up to the limit of freed
    memory stays with the process, which ``fit`` accepts for a training run. Results do
    not change, only where memory comes from.

    Does nothing where the user set glibc's malloc variables themselves (they win), and off
    glibc (macOS, musl). Cached: the first call decides.

    Returns:
        The limit set, in bytes: 1 GiB, or 32 MiB where glibc (before 2.35) refuses more;
        0 where nothing was changed.
    """
    if _user_set_malloc():
        return 0
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError off glibc
    except (OSError, AttributeError):
        return 0
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    for limit in _KEEP_LIMITS:
        # The mmap threshold first: where glibc refuses it, nothing has changed yet.
        if libc.mallopt(_M_MMAP_THRESHOLD, limit):
            return limit if libc.mallopt(_M_TRIM_THRESHOLD, limit) else 0
    return 0
