"""The micro-batcher: batching, scatter, a model swap inside the queue, disabled mode."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from movierec.export.runtime import MAX_LEN_KEY
from movierec.serving.batcher import MicroBatcher, OverloadedError, ShuttingDownError
from movierec.serving.catalog import BundleError
from movierec.serving.engine import (
    LoadedBundle,
    OnnxModel,
    load_bundle,
    top_k,
    top_k_rows,
)
from movierec.serving.metrics import ServingMetrics
from tests.unit.test_serving_bundle import MAX_LEN, N_ITEMS, make_bundle, rewrite_metadata


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedBundle, LoadedBundle]:
    root = tmp_path_factory.mktemp("engine")
    return (load_bundle(make_bundle(root / "a", seed=0), threads=1),
            load_bundle(make_bundle(root / "b", seed=1), threads=1))


def _requests(n: int) -> list[tuple[int, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(int(rng.integers(0, 12)), rng.integers(1, N_ITEMS + 1, size=int(rng.integers(1, 20))))
            for _ in range(n)]


def test_pad_left_pads_and_keeps_the_newest(two: tuple[LoadedBundle, LoadedBundle]) -> None:
    model = two[0].model
    seqs = model.pad([np.array([3, 4]), np.arange(1, 20)])
    assert seqs.shape == (2, MAX_LEN)
    assert seqs[0].tolist() == [0] * (MAX_LEN - 2) + [3, 4]
    assert seqs[1].tolist() == list(range(20 - MAX_LEN, 20))


async def _scores(batcher: MicroBatcher, model: OnnxModel, user: int,
                  seq: np.ndarray) -> np.ndarray:
    """The request's scores of items 1..N_ITEMS, rebuilt from a top-k of every item."""
    best, values = await batcher.top_k(model, user, seq, N_ITEMS, None)
    row = np.full(N_ITEMS + 1, np.nan)
    row[best] = values
    return row[1:]


def _direct(model: OnnxModel, user: int, seq: np.ndarray) -> np.ndarray:
    return model.run(np.array([user]), [seq])[0]


def test_batched_results_match_single_runs(two: tuple[LoadedBundle, LoadedBundle]) -> None:
    model = two[0].model
    metrics = ServingMetrics()
    requests = _requests(40)

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(max_batch_size=16, max_queue_delay_ms=20, metrics=metrics)
        await batcher.start()
        try:
            return await asyncio.gather(*(_scores(batcher, model, u, s) for u, s in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for (user, seq), got in zip(requests, results, strict=True):
        np.testing.assert_allclose(got, _direct(model, user, seq)[1:], rtol=1e-5, atol=1e-5)
    count = metrics.registry.get_sample_value("movierec_batch_size_count")
    total = metrics.registry.get_sample_value("movierec_batch_size_sum")
    assert total == 40 and count is not None and count <= 5  # 40 requests, batches of <=16
    assert metrics.registry.get_sample_value("movierec_queue_wait_seconds_count") == 40


def test_batched_top_k_matches_ranking_each_request_alone(
        two: tuple[LoadedBundle, LoadedBundle]) -> None:
    model = two[0].model
    requests = _requests(30)
    ks = [1 + i % 12 for i in range(30)]

    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        batcher = MicroBatcher(max_batch_size=8, max_queue_delay_ms=20)
        await batcher.start()
        try:
            return await asyncio.gather(*(
                batcher.top_k(model, u, s, k, s if i % 2 else None)
                for i, ((u, s), k) in enumerate(zip(requests, ks, strict=True))))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for i, ((user, seq), k, (best, values)) in enumerate(zip(requests, ks, results, strict=True)):
        expected_best, expected_values = top_k(_direct(model, user, seq), k,
                                               seq if i % 2 else None)
        assert best.tolist() == expected_best.tolist()
        np.testing.assert_allclose(values, expected_values, rtol=1e-5)
        if i % 2:
            assert not set(best.tolist()) & set(seq.tolist())  # seen movies excluded


def test_a_swap_inside_the_queue_never_mixes_models(
        two: tuple[LoadedBundle, LoadedBundle]) -> None:
    first, second = two[0].model, two[1].model
    requests = _requests(12)
    models = [first if i % 3 else second for i in range(12)]

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(max_batch_size=32, max_queue_delay_ms=20)
        await batcher.start()
        try:
            return await asyncio.gather(*(_scores(batcher, m, u, s) for m, (u, s) in
                                          zip(models, requests, strict=True)))
        finally:
            await batcher.stop()

    for model, (user, seq), got in zip(models, requests, asyncio.run(main()), strict=True):
        np.testing.assert_allclose(got, _direct(model, user, seq)[1:], rtol=1e-5, atol=1e-5)


def test_disabled_batching_runs_alone(two: tuple[LoadedBundle, LoadedBundle]) -> None:
    metrics = ServingMetrics()
    model = two[0].model

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(max_batch_size=1, metrics=metrics)
        await batcher.start()
        assert not batcher.running
        out = await asyncio.gather(*(_scores(batcher, model, 1, np.array([i + 1]))
                                     for i in range(5)))
        await batcher.stop()
        return out

    assert len(asyncio.run(main())) == 5
    assert metrics.registry.get_sample_value("movierec_batch_size_sum") == 5
    assert metrics.registry.get_sample_value("movierec_batch_size_count") == 5


class _SlowModel:
    """A real model, slowed down so the model thread stays busy."""

    def __init__(self, real: OnnxModel) -> None:
        self.real = real

    def rank(self, *batch: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        time.sleep(0.3)
        return self.real.rank(*batch)


def test_stop_fails_queued_requests_clearly(two: tuple[LoadedBundle, LoadedBundle]) -> None:
    real = two[0].model
    model = _SlowModel(real)

    async def main() -> tuple[list[BaseException | np.ndarray], bool, np.ndarray]:
        batcher = MicroBatcher(max_batch_size=8, max_queue_delay_ms=500)
        await batcher.start()
        running = asyncio.create_task(_scores(batcher, model, 1, np.array([1])))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the model is busy with the first request
        pending = asyncio.create_task(_scores(batcher, model, 1, np.array([2])))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # queued, waiting for company while the model is busy
        await batcher.stop()
        finished = running.done()  # stop() let the batch with the model finish
        results = await asyncio.gather(pending, running, return_exceptions=True)
        await batcher.start()  # a second start gets a fresh model thread
        again = await _scores(batcher, model, 1, np.array([3]))  # type: ignore[arg-type]
        await batcher.stop()
        return results, finished, again

    (queued, ran), finished, again = asyncio.run(main())
    assert isinstance(queued, ShuttingDownError) and "shutting down" in str(queued)
    assert finished and isinstance(ran, np.ndarray)
    np.testing.assert_allclose(again, _direct(real, 1, np.array([3]))[1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [2, 1])  # 1: batching off, no queue, same bound
def test_a_full_queue_refuses_at_once(two: tuple[LoadedBundle, LoadedBundle],
                                      batch_size: int) -> None:
    model = _SlowModel(two[0].model)

    async def main() -> list[BaseException | np.ndarray]:
        batcher = MicroBatcher(max_batch_size=batch_size, max_queue_delay_ms=500,
                               max_queued=2)
        await batcher.start()
        tasks = []
        for user in range(1, 10):  # far more than the model, its next batch and 2 queued
            tasks.append(asyncio.create_task(
                _scores(batcher, model, user, np.array([user]))))  # type: ignore[arg-type]
            await asyncio.sleep(0.01)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return results

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, OverloadedError)]
    answered = [r for r in results if isinstance(r, np.ndarray)]
    assert refused and answered and len(refused) + len(answered) == len(results)
    assert "overloaded (2 requests queued)" in str(refused[0])


def test_a_lone_request_does_not_wait_for_company(two: tuple[LoadedBundle, LoadedBundle]) -> None:
    model = two[0].model

    async def main() -> float:
        batcher = MicroBatcher(max_batch_size=8, max_queue_delay_ms=500)
        await batcher.start()
        started = time.perf_counter()
        await _scores(batcher, model, 1, np.array([1]))
        elapsed = time.perf_counter() - started
        await batcher.stop()
        return elapsed

    assert asyncio.run(main()) < 0.25  # the model was idle: no 500 ms wait


# --- Dynamic sequence length (current exports): trimming and length groups -----------------

def _dynamic_copy(src: Path, dst: Path, max_len: str | None = str(MAX_LEN)) -> Path:
    """``src`` with a dynamic ``seqs`` length (and, unless None, its recorded max_len)."""
    shutil.copytree(src, dst)
    for name in ("model.onnx", "model.int8.onnx"):
        proto = onnx.load(dst / name)
        seqs = next(i for i in proto.graph.input if i.name == "seqs")
        seqs.type.tensor_type.shape.dim[1].dim_param = "seq"
        if max_len is not None:
            onnx.helper.set_model_props(proto, {MAX_LEN_KEY: max_len})
        onnx.save(proto, dst / name)
    meta = json.loads((dst / "metadata.json").read_text())
    meta["files"] = {n: hashlib.sha256((dst / n).read_bytes()).hexdigest() for n in meta["files"]}
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory: pytest.TempPathFactory) -> OnnxModel:
    root = tmp_path_factory.mktemp("dynamic")
    return load_bundle(_dynamic_copy(make_bundle(root / "a"), root / "dyn"), threads=1).model


def test_a_dynamic_model_pads_a_batch_only_to_its_longest_sequence(dynamic: OnnxModel) -> None:
    assert dynamic.dynamic and dynamic.max_len == MAX_LEN
    assert dynamic.pad([np.array([3, 4]), np.array([5])]).tolist() == [[3, 4], [0, 5]]
    assert dynamic.pad([np.zeros(0, np.int64)]).shape == (1, 1)  # never a zero-width input
    assert dynamic.pad([np.arange(1, 30)]).tolist() == [list(range(30 - MAX_LEN, 30))]


def test_length_groups_give_the_same_scores_as_one_row_at_a_time(dynamic: OnnxModel) -> None:
    lengths = [0, 1, 2, 3, 5, 7, 8, 8, 12, 30, 4, 1]  # empty, short, max_len and longer
    rng = np.random.default_rng(3)
    seqs = [rng.integers(1, N_ITEMS + 1, size=n) for n in lengths]
    users = rng.integers(0, 12, size=len(seqs))
    batched = dynamic.run(users, seqs)
    assert batched.shape == (len(seqs), N_ITEMS + 1)
    for row, (user, seq) in enumerate(zip(users, seqs, strict=True)):
        np.testing.assert_allclose(batched[row], _direct(dynamic, int(user), seq), rtol=1e-5,
                                   atol=1e-5)
    calls = []
    original = dynamic.session.run

    def counting(*args: object, **kwargs: object) -> list[np.ndarray]:
        calls.append(args[1]["seqs"].shape)  # type: ignore[index]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    dynamic.session.run = counting  # type: ignore[method-assign]
    try:
        dynamic.run(users, seqs)
    finally:
        dynamic.session.run = original  # type: ignore[method-assign]
    assert 1 < len(calls) < len(seqs)  # a few groups, not one call per row
    assert sum(shape[0] for shape in calls) == len(seqs)
    assert max(width for _, width in calls) == MAX_LEN  # the longer ones cut to max_len
    assert min(width for _, width in calls) == 1  # the shortest group is not padded up


def test_a_dynamic_model_without_max_len_is_refused(tmp_path: Path) -> None:
    folder = _dynamic_copy(make_bundle(tmp_path / "a"), tmp_path / "dyn", max_len=None)
    with pytest.raises(BundleError, match="re-export"):
        load_bundle(folder, threads=1)


def test_a_recorded_max_len_that_disagrees_with_metadata_is_refused(tmp_path: Path) -> None:
    folder = _dynamic_copy(make_bundle(tmp_path / "a"), tmp_path / "dyn", max_len="99")
    with pytest.raises(BundleError, match="max_len"):
        load_bundle(folder, threads=1)


def _reference_top_k(row: np.ndarray, k: int, exclude: np.ndarray | None) -> list[int]:
    """Sort every eligible index by (score descending, index ascending): slow and obvious."""
    banned = set() if exclude is None else set(exclude.tolist())
    eligible = [i for i in range(1, row.size) if np.isfinite(row[i]) and i not in banned]
    return sorted(eligible, key=lambda i: (-float(row[i]), i))[:k]


def test_top_k_rows_matches_a_full_sort_with_ties_nan_and_exclusions() -> None:
    rng = np.random.default_rng(7)
    for trial in range(400):
        rows, columns = int(rng.integers(1, 6)), int(rng.integers(2, 40))
        # Small integers make ties common, also across the k-th position.
        scores = rng.integers(-3, 4, (rows, columns)).astype(
            np.float32 if trial % 2 else np.float64)
        scores[rng.random(scores.shape) < 0.1] = np.nan
        scores[rng.random(scores.shape) < 0.05] = np.inf
        scores[rng.random(scores.shape) < 0.05] = -np.inf
        ks = rng.integers(0, columns + 3, rows).tolist()
        excludes = [rng.integers(0, columns, int(rng.integers(0, 4))) if rng.random() < 0.7
                    else None for _ in range(rows)]
        before = scores.copy()
        for row, (best, values) in enumerate(top_k_rows(scores, ks, excludes)):
            expected = _reference_top_k(scores[row], ks[row], excludes[row])
            assert best.tolist() == expected
            assert values.tolist() == [float(scores[row, i]) for i in expected]
        np.testing.assert_array_equal(scores, before)  # the caller's rows are untouched


def test_top_k_skips_padding_seen_and_non_finite_and_breaks_ties_by_index() -> None:
    scores = np.array([9.0, 1.0, np.nan, 3.0, 3.0, np.inf, -np.inf, 2.0], dtype=np.float32)
    best, values = top_k(scores, 3, exclude=np.array([7]))
    assert best.tolist() == [3, 4, 1] and values.tolist() == [3.0, 3.0, 1.0]
    assert scores[2] != scores[2] and scores[0] == 9.0  # the caller's row is not modified
    assert top_k(scores, 10)[0].tolist() == [3, 4, 7, 1]


def test_tied_newest_items_are_scored_over_their_orders(tmp_path: Path) -> None:
    folder = make_bundle(tmp_path / "a")
    rewrite_metadata(folder, model_config={"max_len": MAX_LEN, "tie_orders": 8})
    loaded = load_bundle(folder, threads=1)
    model = loaded.model
    assert isinstance(model, OnnxModel) and model.tie_orders == 8
    users, seqs = np.array([1, 2]), [np.array([1, 2, 3]), np.array([4, 5])]
    # The tiny model sums its inputs, so every order scores alike and so does their mean;
    # the child process (ties sent over its pipe) answers as the model in this process.
    np.testing.assert_allclose(model.scores(users, seqs, [3, 2]), model.run(users, seqs),
                               rtol=1e-5, atol=1e-5)
    isolated = load_bundle(folder, threads=1, isolate=True)
    try:
        for (items, _), (want, _) in zip(
                isolated.model.rank(users, seqs, [5, 5], [None, seqs[1]], [3, 2]),
                model.rank(users, seqs, [5, 5], [None, seqs[1]], [3, 2]), strict=True):
            assert items.tolist() == want.tolist()
    finally:
        isolated.model.close()

    def newest_item_only(users: np.ndarray, sequences: list[np.ndarray]) -> np.ndarray:
        return np.eye(N_ITEMS + 1)[[seq[-1] for seq in sequences]]

    model.run = newest_item_only  # type: ignore[method-assign]
    averaged = model.scores(users, seqs, [3, 0])
    np.testing.assert_allclose(averaged[0, 1:4], [1 / 3] * 3)  # each tied item last once
    np.testing.assert_array_equal(averaged[1], newest_item_only(users, seqs)[1])  # no tie
    (first, values), _ = model.rank(users, seqs, [2, 2], [None, None], [3, 0])
    assert first.tolist() == [1, 2] and np.allclose(values, 1 / 3)
    assert model.scores(users, seqs, None)[0, 3] == 1.0  # no ties given: as it is

    async def through_the_batcher() -> list[tuple[np.ndarray, np.ndarray]]:
        batcher = MicroBatcher(max_batch_size=8, max_queue_delay_ms=20)
        await batcher.start()
        try:
            return list(await asyncio.gather(
                batcher.top_k(model, 1, seqs[0], 3, None, ties=3),
                batcher.top_k(model, 1, seqs[0], 3, None)))
        finally:
            await batcher.stop()

    (tied, tied_values), (plain, plain_values) = asyncio.run(through_the_batcher())
    assert tied.tolist() == [1, 2, 3] and np.allclose(tied_values, 1 / 3)
    assert plain.tolist()[0] == 3 and plain_values[0] == 1.0
