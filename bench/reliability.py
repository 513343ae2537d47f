"""Reliability and security report: fuzz, soak, faults, bad data, security -> one JSON file.

Serves the ml-100k SSE-PT bundle that ``bench/serve.py`` builds (reused from its workdir),
fuzzes the API with schemathesis (>= 2,000 requests), soaks it at 70% of its measured
maximum throughput (10 minutes; ``--soak-seconds``), runs the fault scenarios
(``movierec.reliability.faults``), the bad-data fuzzer and the security checks. ``--quick``
shortens everything (~2 minutes). Writes ``bench/results/reliability.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "lib"))  # run from a checkout without `pip install -e .`
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/serve.py, bench/_common.py

import serve as serve_bench  # noqa: E402  (its bundle, machine info and JSON writer)

from movierec.reliability import fuzz, security, soak  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "reliability.json"


def _section(name: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; an exception becomes an error entry instead of ending the report."""
    print(f"{name} ...", flush=True)
    started = time.perf_counter()
    try:
        result = step()
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()[-2000:]}
    result["section_seconds"] = round(time.perf_counter() - started, 1)
    print(f"{name}: ok={result.get('ok')} ({result['section_seconds']} s)", flush=True)
    return result


def run_faults() -> dict[str, Any]:
    """The fault scenarios (``movierec.reliability.faults``), imported lazily."""
    try:
        from movierec.reliability.faults import run_faults as faults
    except ImportError as exc:
        return {"ok": False, "error": f"movierec.reliability.faults is not available: {exc}"}
    results = dict(faults(quick=False))
    scenarios = [v for v in results.values() if isinstance(v, dict)]
    return {**results, "ok": bool(scenarios) and all(v.get("passed") for v in scenarios)}


def main(argv: list[str] | None = None) -> int:
    """Run every section and write the JSON report after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true",
                        help="short run: ~200 fuzz requests, 20 s soak, no fault scenarios")
    parser.add_argument("--soak-seconds", type=float,
                        help="soak duration (default 600, or 20 with --quick)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/movierec-bench-serve"),
                        help="bench/serve.py's workdir (the bundle is built there once)")
    args = parser.parse_args(argv)
    soak_seconds = args.soak_seconds or (20.0 if args.quick else 600.0)
    # x2 modes x the 6 operations with inputs (4 have none): ~200 / >= 2,000 requests
    examples = 16 if args.quick else 200
    bench = serve_bench
    report: dict[str, Any] = {"benchmark": "reliability", "quick": args.quick,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "machine": bench.machine_info(), "load_before": os.getloadavg()}

    def write() -> None:
        bench.write_json(report, args.out)

    report["build"] = bench.ensure_bundle(args.workdir, 2)
    bundle = args.workdir / "bundle"
    with tempfile.TemporaryDirectory(prefix="movierec-reliability-") as tmp:
        root = Path(tmp)

        def api_fuzz() -> dict[str, Any]:
            with fuzz.serve(bundle, root / "fuzz") as service:
                return fuzz.fuzz_api(service.url, examples)

        def soak_run() -> dict[str, Any]:
            with fuzz.serve(bundle, root / "soak") as service:
                return soak.run_soak(service, bundle, root / "soak-wrk", seconds=soak_seconds,
                                     probe_seconds=5 if args.quick else 15,
                                     segment_seconds=5 if args.quick else 30)

        def security_run() -> dict[str, Any]:
            parts = {"dependency_audit": security.audit_dependencies(),
                     "token_compare": security.token_compare_is_constant_time(),
                     "token_never_logged": security.token_never_logged(bundle, root / "tok"),
                     "input_limits": security.input_limits(bundle, root / "limits"),
                     "notebook_outputs": security.scan_committed_notebooks()}
            # An unreachable advisory database (ok None) is reported, not failed.
            return {**parts, "ok": all(p["ok"] is not False for p in parts.values())}

        report["fuzz"] = _section("fuzz", api_fuzz)
        write()
        report["soak"] = _section("soak", soak_run)
        write()
        report["faults"] = ({"ok": None, "skipped": "--quick"} if args.quick
                            else _section("faults", run_faults))
        write()
        report["bad_data"] = _section("bad_data", lambda: fuzz.fuzz_data(root))
        write()
        report["security"] = _section("security", security_run)
    report["load_after"] = os.getloadavg()
    report["ok"] = all(report[k].get("ok") is not False
                       for k in ("fuzz", "soak", "faults", "bad_data", "security"))
    write()
    print(json.dumps({k: report[k].get("ok") for k in ("fuzz", "soak", "faults", "bad_data",
                                                        "security")}))
    print(f"wrote {args.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
