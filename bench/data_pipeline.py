"""Benchmark ``movierec data prepare`` against a plain pandas implementation of its steps.

Both run on the same synthetic canonical folders, each in a fresh subprocess, so that wall
time and peak RSS belong to one implementation. Writes JSON (``--out``) and prints a
markdown table. ``python bench/data_pipeline.py --help`` lists the options; README.md
beside this file says what is measured.

The parts: ``data_pipeline_workers.py`` (what runs in the subprocesses) and
``pandas_prepare.py`` (the pandas baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/_common.py

from _common import machine_info as _machine_info  # noqa: E402
from _common import run_worker as _run_worker  # noqa: E402
from _common import write_json  # noqa: E402
from data_pipeline_workers import WORKERS, proc_status_mib, workdir_paths  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "data_pipeline.json"
DEFAULT_SIZES = "1000000,10000000,25000000"
DEFAULT_WORKDIR = Path("/tmp/movierec-bench")
IMPLS = ("movierec", "pandas")

# Targets at ml-25m scale (evaluated at the largest size run; flagged when that is < 25M).
TARGET_SIZE = 25_000_000
TARGET_SPEEDUP = 3.0          # pandas seconds / movierec seconds
TARGET_SECONDS = 20.0         # movierec wall time inside the worker
TARGET_LINEARITY = 1.5        # seconds per million rows, largest size / smallest size

LIB_FILES = ("data/prepare.py", "data/validate.py", "data/movielens.py", "data/sources.py")


# ---------------------------------------------------------------------------------------
# Parent: data, subprocesses, summary, targets, report
# ---------------------------------------------------------------------------------------

def run_worker(impl: str, size: int, workdir: Path) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; add its wall time and its own peak RSS."""
    os.sync()  # the previous run's output must not be written back during this one
    return _run_worker(Path(__file__).resolve(), [impl, str(size), "--workdir", str(workdir)],
                       workdir / f".result-{impl}-{size}.json")


def ensure_data(size: int, workdir: Path) -> dict[str, Any]:
    """Generate the synthetic folder for ``size`` unless a complete one is already there."""
    folder = workdir_paths(workdir, size)["data"]
    if all((folder / f"{t}.parquet").exists() for t in ("interactions", "items", "users")):
        return {"folder": str(folder), "reused": True}
    print(f"generating {size:,} synthetic interactions in {folder} ...", flush=True)
    made = run_worker("synth", size, workdir)
    return {"folder": str(folder), "reused": False, "seconds": round(made["seconds"], 2),
            "peak_rss_mib": made["peak_rss_mib"]}


def warm_page_cache(folder: Path) -> None:
    """Read the input once so that neither implementation pays for a cold disk."""
    for file in folder.glob("*.parquet"):
        with file.open("rb") as handle:
            while handle.read(1 << 24):
                pass


def summarise(runs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """Median times and the highest peak RSS over the repeats of one implementation."""
    seconds = statistics.median(r["seconds"] for r in runs)
    return {"seconds": round(seconds, 3),
            "subprocess_seconds": round(statistics.median(r["subprocess_seconds"]
                                                          for r in runs), 3),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "seconds_per_million": round(seconds / (size / 1e6), 3),
            "runs": runs}


def machine_info() -> dict[str, Any]:
    """The machine and the versions of the data libraries compared here."""
    return _machine_info(("polars", "pandas", "pyarrow", "numpy"), LIB_FILES)


def evaluate_targets(sizes: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Pass/fail per target, at the largest size measured."""
    largest, smallest = max(sizes), min(sizes)
    ours, theirs = sizes[largest]["movierec"], sizes[largest]["pandas"]
    speedup = theirs["seconds"] / ours["seconds"]
    targets: dict[str, Any] = {
        "evaluated_at": largest, "at_target_scale": largest >= TARGET_SIZE,
        "speedup": {"target": f">= {TARGET_SPEEDUP}x pandas", "value": round(speedup, 2),
                    "pass": speedup >= TARGET_SPEEDUP},
        "peak_rss": {"target": "movierec <= pandas",
                     "value": f"{ours['peak_rss_mib']:.0f} vs {theirs['peak_rss_mib']:.0f} MiB",
                     "pass": ours["peak_rss_mib"] <= theirs["peak_rss_mib"]},
        "wall_time": {"target": f"< {TARGET_SECONDS:g} s", "value": ours["seconds"],
                      "pass": ours["seconds"] < TARGET_SECONDS},
    }
    if largest != smallest:
        ratio = (ours["seconds_per_million"]
                 / sizes[smallest]["movierec"]["seconds_per_million"])
        targets["linearity"] = {
            "target": f"s/M rows at {largest:,} <= {TARGET_LINEARITY}x s/M at {smallest:,}",
            "value": round(ratio, 2), "pass": ratio <= TARGET_LINEARITY,
            "seconds_per_million": {str(s): sizes[s]["movierec"]["seconds_per_million"]
                                    for s in sorted(sizes)}}
    return targets


def markdown(report: dict[str, Any]) -> str:
    """A short markdown summary of the sizes, the targets and the step profile."""
    lines = ["| rows | movierec s | pandas s | speedup | movierec peak MiB | "
             "pandas peak MiB | movierec s/M | pandas s/M | same output |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for size, entry in sorted((int(k), v) for k, v in report["sizes"].items()):
        ours, theirs = entry["movierec"], entry["pandas"]
        same = entry["same_data_version"] and all(t["identical"]
                                                  for t in entry["verify"].values())
        lines.append(f"| {size:,} | {ours['seconds']:.2f} | {theirs['seconds']:.2f} | "
                     f"{theirs['seconds'] / ours['seconds']:.2f}x | {ours['peak_rss_mib']:.0f} | "
                     f"{theirs['peak_rss_mib']:.0f} | {ours['seconds_per_million']:.3f} | "
                     f"{theirs['seconds_per_million']:.3f} | {'yes' if same else 'NO'} |")
    probes = ", ".join(f"{int(k):,}: {v['calibration']['touch_1gib_seconds']:.2f} s touch 1 GiB"
                       f" / {v['calibration']['sort_10m_seconds']:.2f} s sort 10M"
                       for k, v in report["sizes"].items())
    lines += ["", f"Machine probe before each size ({probes})."]
    targets = report.get("targets", {})
    if targets:
        lines += ["", f"Targets at {targets['evaluated_at']:,} rows"
                  + ("" if targets["at_target_scale"] else " (below 25M: indicative only)")
                  + ":", ""]
        for name in ("speedup", "peak_rss", "wall_time", "linearity"):
            if name in targets:
                t = targets[name]
                lines.append(f"- {name}: {t['target']}: {t['value']} -> "
                             f"{'PASS' if t['pass'] else 'FAIL'}")
    for size, entry in sorted((int(k), v) for k, v in report["sizes"].items()):
        if "profile" not in entry:
            continue
        prof = entry["profile"]
        lines += ["", f"movierec prepare steps at {size:,} rows "
                  f"(total {prof['total_seconds']:.2f} s, peak {prof['peak_rss_mib']:.0f} MiB):",
                  "", "| step | s | RSS after MiB |", "|---|---:|---:|"]
        lines += [f"| {s['step']} | {s['seconds']:.2f} | {s['rss_mib']:.0f} |"
                  for s in prof["steps"]]
        lines += [f"| &nbsp;&nbsp;{name} | {sec:.2f} | |" for name, sec in prof["pieces"].items()]
    return "\n".join(lines)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Every size: data, both implementations (alternating order), verify, optional profile."""
    sizes = sorted(int(s) for s in args.sizes.split(","))
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "data_pipeline", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False, "repeats": args.repeats, "workdir": str(workdir),
        "machine": machine_info(), "load_before": os.getloadavg(), "sizes": {}}
    measured: dict[int, dict[str, Any]] = {}
    for size in sizes:
        data = ensure_data(size, workdir)
        warm_page_cache(Path(data["folder"]))
        calibration = run_worker("calibrate", size, workdir)
        runs: dict[str, list[dict[str, Any]]] = {impl: [] for impl in IMPLS}
        for repeat in range(args.repeats):
            for impl in IMPLS if repeat % 2 == 0 else IMPLS[::-1]:
                print(f"{size:>12,} {impl:<9} run {repeat + 1}/{args.repeats} ...", flush=True)
                runs[impl].append(run_worker(impl, size, workdir))
        counts = [r["counts"] for impl in IMPLS for r in runs[impl]]
        if any(c != counts[0] for c in counts):
            raise AssertionError(f"{size:,}: movierec and pandas disagree (users, items, "
                                 f"split counts), the comparison is not fair: {counts}")
        versions = {r["data_version"] for impl in IMPLS for r in runs[impl]}
        entry = {"data": data, "counts": counts[0], "calibration": calibration,
                 "same_data_version": len(versions) == 1,
                 **{impl: summarise(runs[impl], size) for impl in IMPLS},
                 "verify": run_worker("verify", size, workdir)}
        entry["verify"] = {k: v for k, v in entry["verify"].items() if isinstance(v, dict)}
        if args.profile_steps:
            print(f"{size:>12,} profiling prepare's steps ...", flush=True)
            entry["profile"] = run_worker("profile", size, workdir)
        measured[size] = entry
        report["sizes"][str(size)] = entry
        write_json(report, args.out)  # partial results survive a later failure
    report["targets"] = evaluate_targets(measured)
    report["load_after"] = os.getloadavg()
    report["complete"] = True
    write_json(report, args.out)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--_worker`` and ``--_result`` are internal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="comma-separated interaction counts")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="synthetic data (reused) and prepared outputs")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per implementation and size (median time, max RSS)")
    parser.add_argument("--profile-steps", action="store_true",
                        help="also time prepare's steps one by one at each size")
    parser.add_argument("--_worker", nargs=2, metavar=("IMPL", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--_result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, or one worker when called by it."""
    args = parse_args(argv)
    if args._worker:
        impl, size = args._worker
        result = WORKERS[impl](int(size), args.workdir)
        result.setdefault("self_peak_rss_mib", proc_status_mib("VmHWM"))
        args._result.write_text(json.dumps(result))
        return 0
    report = run_benchmark(args)
    print()
    print(markdown(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
