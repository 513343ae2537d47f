"""bench/serve.py's verdict: the targets judged on the measured report, and its markdown."""

from __future__ import annotations

from typing import Any

# Targets (ml-100k SSE-PT, max_len 200, the 2-core machine).
TARGET_ONNX_SPEEDUP_B1 = 2.0      # eager ms / ONNX fp32 ms at batch 1
TARGET_CONNECTIONS = 32
TARGET_P99_MS = 50.0
TARGET_VS_EAGER = 5.0             # service req/s / eager server req/s
TARGET_VS_CEILING = 0.5           # service req/s / constant server req/s
TARGET_SERVER = "service_batched"  # the default configuration is the one judged


def _point(report: dict[str, Any], server: str, connections: int) -> dict[str, Any] | None:
    """The load point of ``server`` at ``connections``, or None when it was not measured."""
    return report["http"]["points"].get(server, {}).get(str(connections))


def evaluate_targets(report: dict[str, Any]) -> dict[str, Any]:
    """Pass/fail per target as measured; a target whose data was not measured fails."""
    targets: dict[str, Any] = {}
    b1 = report.get("latency", {}).get("batches", {}).get("1")
    if b1:
        speedup = b1["speedup_vs_eager"]["onnx_fp32"]
        targets["onnx_fp32_speedup_batch1"] = {
            "target": f">= {TARGET_ONNX_SPEEDUP_B1:g}x eager (1 thread)",
            "value": f"{speedup}x ({b1['eager']['median_ms']} ms -> "
                     f"{b1['onnx_fp32']['median_ms']} ms)",
            "pass": speedup >= TARGET_ONNX_SPEEDUP_B1}
    c = TARGET_CONNECTIONS
    ours = _point(report, TARGET_SERVER, c)
    eager, ceiling = _point(report, "eager", c), _point(report, "constant", c)
    if ours is None:
        return {**targets, "http": {"target": f"{c} connections measured", "value": "not run",
                                    "pass": False}}
    targets["errors_at_32"] = {"target": f"0 errors at {c} connections",
                               "value": ours["errors"], "pass": ours["errors"] == 0}
    targets["p99_at_32"] = {"target": f"p99 < {TARGET_P99_MS:g} ms at {c} connections",
                            "value": ours["p99_ms"], "pass": ours["p99_ms"] < TARGET_P99_MS}
    if eager:
        ratio = ours["requests_per_sec"] / eager["requests_per_sec"]
        targets["throughput_vs_eager_at_32"] = {
            "target": f">= {TARGET_VS_EAGER:g}x the eager server's req/s at {c} connections",
            "value": f"{ratio:.2f}x ({ours['requests_per_sec']:.0f} vs "
                     f"{eager['requests_per_sec']:.0f} req/s)",
            "pass": ratio >= TARGET_VS_EAGER}
    if ceiling:
        ratio = ours["requests_per_sec"] / ceiling["requests_per_sec"]
        targets["throughput_vs_ceiling_at_32"] = {
            "target": f">= {TARGET_VS_CEILING:.0%} of the constant-answer ceiling at {c} "
                      "connections",
            "value": f"{ratio:.0%} ({ours['requests_per_sec']:.0f} vs "
                     f"{ceiling['requests_per_sec']:.0f} req/s)",
            "pass": ratio >= TARGET_VS_CEILING}
    return targets


def markdown(report: dict[str, Any]) -> str:
    """Latency table, HTTP table and targets."""
    lines: list[str] = []
    latency = report.get("latency")
    if latency:
        lines += ["Model latency, `score_all`, 1 thread, median ms (speedup vs eager); "
                  "fp32/int8 on the same max_len-padded input as eager, served = the "
                  "service's call on unpadded histories:", "",
                  "| batch | eager | ONNX fp32 | ONNX int8 | fp32 served | fp32 per row | "
                  "served per row |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for batch, cell in latency["batches"].items():
            s = cell["speedup_vs_eager"]
            served = cell.get("onnx_fp32_served")
            lines.append(f"| {batch} | {cell['eager']['median_ms']:.2f} | "
                         f"{cell['onnx_fp32']['median_ms']:.2f} ({s['onnx_fp32']:.2f}x) | "
                         f"{cell['onnx_int8']['median_ms']:.2f} ({s['onnx_int8']:.2f}x) | "
                         + (f"{served['median_ms']:.2f} ({s['onnx_fp32_served']:.2f}x) | "
                            if served else "- | ")
                         + f"{cell['onnx_fp32']['per_row_ms']:.3f} | "
                         + (f"{served['per_row_ms']:.3f} |" if served else "- |"))
        lines.append("")
    http = report.get("http", {}).get("points", {})
    if http:
        lines += [f"HTTP load, wrk {report['http']['seconds']:g} s per point, POST /recommend "
                  "(top 10, known users):", "",
                  "| server | conns | req/s | p50 ms | p99 ms | errors | mean batch | "
                  "server cores | wrk cores | other cores |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, by_connections in http.items():  # in the order the servers started
            for conns, p in sorted(by_connections.items(), key=lambda kv: int(kv[0])):
                batch = p.get("engine", {}).get("mean_batch_size", "")
                lines.append(f"| {name} | {conns} | {p['requests_per_sec']:.0f} | "
                             f"{p['p50_ms']:.1f} | {p['p99_ms']:.1f} | {p['errors']} | {batch} | "
                             f"{p['cpu']['server_cores']:.2f} | {p['cpu']['wrk_cores']:.2f} | "
                             f"{p['cpu']['other_cores']:.2f} |")
        lines.append("")
    targets = report.get("targets", {})
    if targets:
        lines += [f"Targets (judged on {TARGET_SERVER}; load average "
                  f"{report['load_before'][0]:.2f} before, "
                  f"{report.get('load_after', [float('nan')])[0]:.2f} after):", ""]
        for name, t in targets.items():
            lines.append(f"- {name}: {t['target']}: {t['value']} -> "
                         f"{'PASS' if t['pass'] else 'FAIL'}")
    return "\n".join(lines)
