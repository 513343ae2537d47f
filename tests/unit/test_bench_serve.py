"""bench/serve.py's verdict and options: targets judged on what was measured, and only that."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from serve import QUICK_CONNECTIONS, parse_args
from serve_report import evaluate_targets, markdown


def _point(rps: float, p99_ms: float, errors: int = 0) -> dict[str, Any]:
    return {"requests_per_sec": rps, "p50_ms": p99_ms / 3, "p99_ms": p99_ms, "errors": errors,
            "cpu": {"server_cores": 1.0, "wrk_cores": 0.5, "other_cores": 0.1}}


def _report(service: dict[str, Any], eager_rps: float = 100.0,
            ceiling_rps: float = 1000.0) -> dict[str, Any]:
    latency = {"1": {"eager": {"median_ms": 3.0, "per_row_ms": 3.0},
                     "onnx_fp32": {"median_ms": 1.0, "per_row_ms": 1.0},
                     "onnx_int8": {"median_ms": 0.8, "per_row_ms": 0.8},
                     "speedup_vs_eager": {"onnx_fp32": 3.0, "onnx_int8": 3.75}}}
    # Insertion order is the servers' start order; the table must keep it.
    points = {"service_batched": {"32": service, "1": _point(200.0, 5.0)},
              "eager": {"32": _point(eager_rps, 80.0)},
              "constant": {"32": _point(ceiling_rps, 10.0)}}
    return {"latency": {"batches": latency}, "http": {"seconds": 3.0, "points": points},
            "load_before": [0.1, 0.1, 0.1], "load_after": [1.9, 1.0, 0.5]}


def test_targets_pass_and_fail_on_the_measured_values() -> None:
    good = evaluate_targets(_report(_point(600.0, 40.0)))
    assert all(t["pass"] for t in good.values()), good
    assert set(good) == {"onnx_fp32_speedup_batch1", "errors_at_32", "p99_at_32",
                         "throughput_vs_eager_at_32", "throughput_vs_ceiling_at_32"}

    # 499 req/s: 4.99x eager and 49.9% of the ceiling, both just short; p99 50 ms is not < 50.
    bad = evaluate_targets(_report(_point(499.0, 50.0, errors=3)))
    assert {name for name, t in bad.items() if not t["pass"]} == {
        "errors_at_32", "p99_at_32", "throughput_vs_eager_at_32", "throughput_vs_ceiling_at_32"}
    assert bad["throughput_vs_eager_at_32"]["value"].startswith("4.99x")


def test_an_unmeasured_load_point_fails_instead_of_passing_silently() -> None:
    report = _report(_point(600.0, 40.0))
    del report["http"]["points"]["service_batched"]["32"]
    targets = evaluate_targets(report)
    assert targets["http"] == {"target": "32 connections measured", "value": "not run",
                               "pass": False}
    # Without the baselines, their ratios are left out rather than judged.
    report = _report(_point(600.0, 40.0))
    del report["http"]["points"]["eager"]
    assert "throughput_vs_eager_at_32" not in evaluate_targets(report)


def test_markdown_keeps_the_server_order_and_sorts_connections_numerically() -> None:
    report = _report(_point(600.0, 40.0))
    report["targets"] = evaluate_targets(report)
    rows = [line for line in markdown(report).splitlines()
            if line.startswith(("| service_batched", "| eager", "| constant"))]
    assert [row.split(" | ")[0:2] for row in rows] == [
        ["| service_batched", "1"], ["| service_batched", "32"], ["| eager", "32"],
        ["| constant", "32"]]
    assert "- p99_at_32: p99 < 50 ms at 32 connections: 40.0 -> PASS" in markdown(report)


def test_quick_defaults_and_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--quick"])
    assert args.connections == ",".join(map(str, QUICK_CONNECTIONS))
    assert (args.seconds, args.warmup, args.latency_seconds) == (3.0, 1.0, 0.6)
    assert parse_args(["--seconds", "7"]).seconds == 7.0
    for bad, why in ((["--repeats", "0"], "--repeats"), (["--wrk-threads", "3"], "--wrk-threads")):
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert why in capsys.readouterr().err  # refused for that option, not a typo
