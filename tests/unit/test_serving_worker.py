"""The model process: wire format, same answers as in process, failures, and clean exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.serving.catalog import BundleError
from movierec.serving.engine import OnnxModel
from movierec.serving.worker import (
    ModelProcess,
    ModelProcessError,
    _child_environment,
    decode_batch,
    decode_ranked,
    encode_batch,
    encode_ranked,
)
from tests.unit.test_serving_bundle import MAX_LEN, N_ITEMS, make_bundle

histories = st.lists(st.integers(1, 10**6), max_size=30).map(lambda h: np.array(h, np.int64))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), histories, st.integers(0, 100),
                          st.sampled_from(["none", "history", "other"]), histories,
                          st.integers(0, 40)),
                min_size=1, max_size=20), st.booleans())
def test_a_batch_survives_the_wire(rows: list[tuple[int, np.ndarray, int, str,
                                                    np.ndarray, int]], with_ties: bool) -> None:
    users = np.array([row[0] for row in rows], np.int64)
    seqs = [row[1] for row in rows]
    excludes = [None if how == "none" else seq if how == "history" else other
                for (_, seq, _, how, other, _) in rows]
    ties = [row[5] for row in rows]
    got_users, got_seqs, got_ks, got_excludes, got_ties = decode_batch(
        encode_batch(users, seqs, [row[2] for row in rows], excludes,
                     ties if with_ties else None))
    assert got_users.tolist() == users.tolist() and got_ks == [row[2] for row in rows]
    assert got_ties == (ties if with_ties else [0] * len(rows))
    for seq, exclude, got_seq, got_exclude in zip(seqs, excludes, got_seqs, got_excludes,
                                                  strict=True):
        assert got_seq.tolist() == seq.tolist()
        assert (got_exclude is None) == (exclude is None)
        if exclude is not None:
            assert got_exclude is not None and got_exclude.tolist() == exclude.tolist()


def test_ranked_rows_survive_the_wire() -> None:
    ranked = [(np.array([5, 2, 9]), np.array([0.5, 0.25, -1e-9], np.float32)),
              (np.zeros(0, np.int64), np.zeros(0)), (np.array([7]), np.array([3.0]))]
    for (items, scores), (got_items, got_scores) in zip(
            ranked, decode_ranked(encode_ranked(ranked)), strict=True):
        assert got_items.tolist() == items.tolist()
        assert got_scores.tolist() == scores.astype(np.float64).tolist()  # exact values


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("worker") / "b")


@pytest.fixture(scope="module")
def remote(bundle: Path) -> Iterator[ModelProcess]:
    model = ModelProcess(bundle / "model.onnx", MAX_LEN, N_ITEMS, threads=1)
    yield model
    model.close()


def _batch(seed: int, n: int = 12) -> tuple[np.ndarray, list[np.ndarray], list[int],
                                            list[np.ndarray | None]]:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, N_ITEMS + 1, size=int(rng.integers(0, 3 * MAX_LEN)))
            for _ in range(n)]
    excludes = [seq if row % 3 else None for row, seq in enumerate(seqs)]
    return rng.integers(0, 12, size=n), seqs, [1 + row % 15 for row in range(n)], excludes


def test_the_process_ranks_exactly_as_in_process(bundle: Path, remote: ModelProcess) -> None:
    local = OnnxModel(bundle / "model.onnx", MAX_LEN, N_ITEMS, threads=1)
    for seed in range(5):
        batch = _batch(seed)
        for (items, scores), (want_items, want_scores) in zip(
                remote.rank(*batch), local.rank(*batch), strict=True):
            assert items.tolist() == want_items.tolist()
            assert scores.tolist() == want_scores.astype(np.float64).tolist()


def test_concurrent_callers_get_their_own_answers(remote: ModelProcess) -> None:
    batches = [_batch(seed, n=1 + seed % 7) for seed in range(24)]
    alone = [remote.rank(*batch) for batch in batches]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda batch: remote.rank(*batch), batches))
    for want, got in zip(alone, together, strict=True):
        assert [items.tolist() for items, _ in got] == [items.tolist() for items, _ in want]


def test_a_model_that_cannot_load_is_a_bundle_error(tmp_path: Path) -> None:
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(BundleError, match="cannot load the model"):
        ModelProcess(broken, MAX_LEN, N_ITEMS, threads=1)


def test_a_child_that_dies_at_once_is_named_by_its_exit_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import movierec.serving.worker as worker

    crash = tmp_path / "python"
    crash.write_text("#!/bin/sh\nexit 3\n")
    crash.chmod(0o755)
    monkeypatch.setattr(worker.sys, "executable", str(crash))  # the child exits at once
    for _ in range(5):  # its pipe often closes before it is reaped
        with pytest.raises(BundleError, match="exited with code 3 while loading"):
            ModelProcess(tmp_path / "model.onnx", MAX_LEN, N_ITEMS, threads=1)


def test_a_failed_batch_leaves_the_process_serving(remote: ModelProcess) -> None:
    out_of_range = np.array([N_ITEMS + 50])  # ONNX Runtime's Gather refuses it
    with pytest.raises(ModelProcessError, match="failed a batch") as failed:
        remote.rank(np.array([0]), [out_of_range], [3], [None])
    assert failed.value.gone is False and remote.alive
    assert len(remote.rank(*_batch(1))) == len(_batch(1)[0])


@pytest.mark.parametrize("caller", ["thread", "event loop"])
def test_a_hung_process_is_stopped_instead_of_waited_for(
        bundle: Path, caller: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.serving import worker

    monkeypatch.setattr(worker, "BATCH_TIMEOUT_S", 0.5)
    model = ModelProcess(bundle / "model.onnx", MAX_LEN, N_ITEMS, threads=1)
    try:
        assert model.pid is not None
        os.kill(model.pid, signal.SIGSTOP)  # alive, but it will never answer
        started = time.monotonic()
        with pytest.raises(ModelProcessError, match=r"did not answer a batch within 0\.5 s"
                           ) as hung:
            if caller == "thread":
                model.rank(*_batch(0))
            else:
                asyncio.run(model.rank_async(*_batch(0)))
        assert hung.value.gone is True and time.monotonic() - started < 10
        deadline = time.monotonic() + 10
        while model.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not model.alive  # killed, so /health turns 503 and it gets restarted
    finally:
        model.close()


def test_a_dead_process_fails_calls_clearly_and_close_ends_it(bundle: Path) -> None:
    model = ModelProcess(bundle / "model.onnx", MAX_LEN, N_ITEMS, threads=1)
    assert model.alive and model.pid is not None
    os.kill(model.pid, signal.SIGKILL)
    with pytest.raises(ModelProcessError, match="gone") as gone:
        model.rank(*_batch(0))
    assert gone.value.gone is True
    deadline = time.monotonic() + 10  # its sockets close a moment before it can be reaped
    while model.alive and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not model.alive
    model.close()
    healthy = ModelProcess(bundle / "model.onnx", MAX_LEN, N_ITEMS, threads=1)
    healthy.close()
    assert not healthy.alive


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_child_exits_when_its_parent_is_killed(bundle: Path) -> None:
    code = ("import sys, time; from pathlib import Path; "
            "from movierec.serving.worker import ModelProcess; "
            f"m = ModelProcess(Path({str(bundle / 'model.onnx')!r}), {MAX_LEN}, {N_ITEMS}, 1); "
            "print(m.pid, flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()  # SIGKILL: no atexit, no cleanup in the parent
        parent.wait(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _running(child):
            time.sleep(0.05)
        assert not _running(child), "the model process outlived its server"
    finally:
        parent.kill()


def test_the_child_imports_the_same_movierec_as_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import movierec

    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    first, *rest = _child_environment()["PYTHONPATH"].split(os.pathsep)
    assert Path(first) / "movierec" == Path(movierec.__file__).resolve().parent
    assert rest == ["/elsewhere"]


def test_a_cancelled_call_leaves_no_reply_for_the_next(bundle: Path) -> None:
    model = ModelProcess(bundle / "model.onnx", MAX_LEN, N_ITEMS, threads=1)
    seeds = (2, 3, 4, 5)

    async def main() -> list[list[tuple[np.ndarray, np.ndarray]]]:
        cancelled = asyncio.create_task(model.rank_async(*_batch(1)))
        await asyncio.sleep(0)  # the batch is sent, its reply not yet read
        cancelled.cancel()
        return [await model.rank_async(*_batch(seed)) for seed in seeds]

    try:
        got = asyncio.run(main())
        want = [model.rank(*_batch(seed)) for seed in seeds]
    finally:
        model.close()
    for answer, expected in zip(got, want, strict=True):
        assert [items.tolist() for items, _ in answer] == [i.tolist() for i, _ in expected]
