"""The wrk driver: script generation and parsing of wrk's output (no wrk run here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from movierec.serving.wrk import parse_wrk, write_recommend_script
from tests.unit.test_serving_bundle import make_bundle

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8000/recommend
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    11.76ms    1.24ms  29.61ms   69.90%
  Latency Distribution
     50%   11.66ms
     75%   12.05ms
     90%   13.13ms
     99%  14.95ms
  13592 requests in 5.01s, 19.78MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   2714.38
Transfer/sec:      3.95MB
WRK_JSON {"requests": 13592, "p999_us": 25294}
"""


def test_parse_wrk_reads_throughput_latency_and_errors() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed["requests_per_sec"] == 2714.38 and parsed["requests"] == 13592
    assert parsed["duration_ms"] == pytest.approx(5010.0)
    assert parsed["p50_ms"] == 11.66 and parsed["p99_ms"] == 14.95
    assert parsed["latency_max_ms"] == 29.61
    assert parsed["socket_errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert parsed["non_2xx"] == 4 and parsed["lua"]["p999_us"] == 25294


def test_parse_wrk_refuses_an_unknown_latency_unit() -> None:
    with pytest.raises(ValueError, match="unknown unit"):
        parse_wrk("  Latency    11.76xs    1.24ms  29.61ms   69.90%\n")


def test_recommend_script_posts_every_user_and_paces_when_asked(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    plain, paced = tmp_path / "plain.lua", tmp_path / "paced.lua"
    users = write_recommend_script(bundle, plain, top_k=7)
    assert write_recommend_script(bundle, paced, pace_ms=12) == users > 0
    text = plain.read_text()
    assert '"top_k": 7}' in text and "function delay()" not in text
    assert text.count(",") >= users - 1
    assert "local pace_ms = 12" in paced.read_text()
