"""Run notebooks/04_optimize_and_serve.ipynb with papermill on MovieLens 100K.

A one-epoch, one-block model keeps training and export short; the point is the path
(train, export with parity, time, serve, load test, stop), not the model's quality. A second
run on the same MLflow run fails on purpose after the service started: the kernel's exit
must still stop it.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import papermill
import pytest

from movierec.reliability.security import scan_notebook_outputs
from movierec.serving.loadtest import free_port
from tests.notebooks.executed import NOTEBOOKS, count_images

SMALL = {"epochs": 1, "batch_size": 64, "threads": 1,
         "model": {"max_len": 50, "d_item": 16, "d_user": 16, "n_blocks": 1}}

pytestmark = [pytest.mark.notebook, pytest.mark.slow]


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (Linux /proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended while we looked
            continue
    return pids


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_optimize_and_serve_notebook(tmp_path: Path, notebook_home: Path) -> None:
    home = notebook_home
    output = tmp_path / "04_optimize_and_serve.out.ipynb"

    papermill.execute_notebook(
        str(NOTEBOOKS / "04_optimize_and_serve.ipynb"), str(output),
        kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters={"TRAIN_OVERRIDES": SMALL, "LOAD_SECONDS": 2, "LOAD_CONCURRENCY": 4,
                    "RESULTS_PATH": "04_serve_results.json"})
    results = json.loads((tmp_path / "04_serve_results.json").read_text())
    assert not scan_notebook_outputs(output)
    bundle = home / "bundles" / "notebook"
    assert Path(results["bundle_dir"]) == bundle
    assert Path(results["data_dir"]) == home / "data" / "ml-100k"
    parity = results["parity"]
    assert parity["passed"], parity["reasons"]
    assert parity["fp32_max_abs_diff"] < 1e-4
    assert set(parity["batches"]) == {"1", "8", "64", "edge", "all"}
    # int8 ships unless it failed its checks, and then the report says why.
    shipped = "int8" in parity["models"]
    assert shipped == (not parity["int8_reasons"])
    assert (bundle / "model.onnx").exists()
    assert (bundle / "model.int8.onnx").exists() == shipped

    latency = results["latency_ms"]
    assert set(latency) == {"pytorch eager", "onnx fp32"} | ({"onnx int8"} if shipped else set())
    for name, per_batch in latency.items():
        assert set(per_batch) == {"1", "8", "64"}, name
        assert all(ms > 0 for ms in per_batch.values()), (name, per_batch)

    load = results["load_test"]
    assert load["errors"] == 0, load["error_samples"]
    assert load["concurrency"] == 4
    assert load["requests"] > 0 and load["throughput_rps"] > 0
    assert 0 < load["p50_ms"] <= load["p99_ms"]

    assert count_images(output) == 2, "expected the latency bars and the load-test histogram"
    # The last cell stopped the service: no process serves this test's bundle any more.
    assert not _processes_mentioning(str(bundle)), "the service is still running"

    # RUN_ID skips training; concurrency 0 makes the load-test cell raise while the
    # service runs, and only the atexit hook can stop it.
    failing = tmp_path / "failing"
    port = free_port()
    with pytest.raises(papermill.PapermillExecutionError, match="concurrency=0"):
        papermill.execute_notebook(
            str(NOTEBOOKS / "04_optimize_and_serve.ipynb"), str(tmp_path / "failing.ipynb"),
            kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
            parameters={"RUN_ID": results["run_id"], "BUNDLE_DIR": str(failing),
                        "PORT": port, "LOAD_CONCURRENCY": 0})
    assert "Application startup complete" in (tmp_path / "failing.serve.log").read_text()
    assert not _processes_mentioning(str(failing)), "a failed cell left the service running"
    assert not _listening(port)
