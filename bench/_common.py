"""What every benchmark writes alike: the machine it ran on, and its JSON report."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without `pip install -e .`

from movierec.machine import cpuinfo_field  # noqa: E402  (no torch: parents stay light)

# /proc/cpuinfo flags of the vector and matrix extensions that PyTorch's CPU kernels (ATen's
# dispatch, oneDNN, MKL) choose by; not the whole rule, enough to tell machines apart.
VECTOR_FLAGS = frozenset({
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8"})


def machine_info(packages: Iterable[str], lib_files: Iterable[str],
                 threads: int | None = None) -> dict[str, Any]:
    """CPU, memory, platform, package versions, git head and the measured library files.

    Call it once, before the first run, not when the report is written: the library files
    may be edited while an hour-long benchmark goes on with the code it imported.

    Args:
        packages: Distributions whose versions to record (None when not installed).
        lib_files: Files under ``lib/movierec`` whose sha256 pins the code that was measured
            (others may edit the library while a benchmark runs).
        threads: The torch threads the runs use, recorded as ``threads`` when given (a
            ``--resume`` keeps only runs made with as many).
    """
    model = cpuinfo_field("model name") or platform.processor()
    # The vendor decides which kernels PyTorch's CPU build takes (MKL's dropout masks on
    # Intel only; movierec.models.dropout draws its own elsewhere), so results differ by it.
    vendor = cpuinfo_field("vendor_id")
    # One "model name" covers several generations ("AMD EPYC": Zen 3 and Zen 4 were both
    # lent as that), and the vector extensions decide PyTorch's kernels and so the figures.
    generation = "/".join(cpuinfo_field(f) or "?" for f in ("cpu family", "model"))
    flags = set((cpuinfo_field("flags") or "").split())
    mem_kib = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal:"))
    versions: dict[str, str | None] = {}
    for pkg in packages:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()
    lib = ROOT / "lib" / "movierec"
    info = {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "cpu_model": model, "cpu_vendor": vendor, "cpu_family_model": generation,
            "cpu_vector_flags": sorted(flags & VECTOR_FLAGS),
            "memory_gib": round(mem_kib / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions, "git_head": git or None,
            "lib_sha256": {f: hashlib.sha256((lib / f).read_bytes()).hexdigest()[:12]
                           for f in lib_files}}
    return info if threads is None else {**info, "threads": threads}


# What must match for runs of an earlier report to be kept by --resume (git_head may move
# with documentation commits; these decide the figures and the times).
SAME_MEASUREMENT = ("cpu_model", "cpu_family_model", "cpu_vector_flags", "versions",
                    "lib_sha256", "threads")


def resumable_runs(out: Path, machine: dict[str, Any], data_version: str | None) -> list[dict]:
    """The runs of the report at ``out``, if it measured what this process would measure.

    Args:
        out: An earlier report with ``machine`` and ``runs`` (and ``data_version`` when the
            benchmark records one).
        machine: This process's ``machine_info`` (with ``threads`` where the report has it).
        data_version: The data this process trains on (None: not compared).

    Raises:
        SystemExit: When the earlier runs were made on other code, another CPU or data.
    """
    earlier = json.loads(out.read_text())
    differ = [key for key in SAME_MEASUREMENT
              if earlier.get("machine", {}).get(key) != machine.get(key)]
    if data_version is not None and earlier.get("data_version") != data_version:
        differ.append("data_version")
    if differ:
        raise SystemExit(f"{Path(sys.argv[0]).name}: --resume: the runs in {out} were "
                         f"measured with other {', '.join(differ)}; write to a new --out")
    return earlier["runs"]


def write_json(report: dict[str, Any], out: Path) -> None:
    """Write atomically (``*.tmp`` then rename) so a killed run leaves the last good file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)


def run_worker(script: Path, args: list[str], result: Path) -> dict[str, Any]:
    """Run ``script --_worker ARGS --_result RESULT`` in a fresh interpreter.

    Returns:
        The JSON the worker wrote to ``result``, plus its wall time (``subprocess_seconds``),
        its own peak RSS (``peak_rss_mib``: wait4 gives this child's rusage, where
        RUSAGE_CHILDREN would be the maximum over all children) and the load average before.

    Raises:
        RuntimeError: The worker failed (the message has the command to rerun).
    """
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), "--_worker", *args, "--_result", str(result)]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed with exit code {code}: rerun "
                           f"`{' '.join(cmd)}` to see why")
    data: dict[str, Any] = json.loads(result.read_text())
    result.unlink()
    data.update(subprocess_seconds=round(elapsed, 3),
                peak_rss_mib=round(usage.ru_maxrss / 1024, 1), load_before=round(load_before, 2))
    return data
