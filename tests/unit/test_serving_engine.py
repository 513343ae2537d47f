"""The micro-batcher: batching, scatter, a model swap inside the queue, disabled mode."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from movierec.serving.engine import LoadedBundle, MicroBatcher, OnnxModel, load_bundle
from movierec.serving.metrics import ServingMetrics
from tests.unit.test_serving_bundle import MAX_LEN, N_ITEMS, make_bundle


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
            return await asyncio.gather(*(batcher.score(model, u, s) for u, s in requests))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    for (user, seq), got in zip(requests, results, strict=True):
        np.testing.assert_allclose(got, _direct(model, user, seq), rtol=1e-5, atol=1e-5)
    count = metrics.registry.get_sample_value("movierec_batch_size_count")
    total = metrics.registry.get_sample_value("movierec_batch_size_sum")
    assert total == 40 and count is not None and count <= 5  # 40 requests, batches of <=16
    assert metrics.registry.get_sample_value("movierec_queue_wait_seconds_count") == 40


def test_a_swap_inside_the_queue_never_mixes_models(
        two: tuple[LoadedBundle, LoadedBundle]) -> None:
    first, second = two[0].model, two[1].model
    requests = _requests(12)
    models = [first if i % 3 else second for i in range(12)]

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(max_batch_size=32, max_queue_delay_ms=20)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.score(m, u, s) for m, (u, s) in
                                          zip(models, requests, strict=True)))
        finally:
            await batcher.stop()

    for model, (user, seq), got in zip(models, requests, asyncio.run(main()), strict=True):
        np.testing.assert_allclose(got, _direct(model, user, seq), rtol=1e-5, atol=1e-5)


def test_disabled_batching_runs_alone(two: tuple[LoadedBundle, LoadedBundle]) -> None:
    metrics = ServingMetrics()
    model = two[0].model

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(max_batch_size=1, metrics=metrics)
        await batcher.start()
        assert not batcher.running
        out = await asyncio.gather(*(batcher.score(model, 1, np.array([i + 1]))
                                     for i in range(5)))
        await batcher.stop()
        return out

    assert len(asyncio.run(main())) == 5
    assert metrics.registry.get_sample_value("movierec_batch_size_sum") == 5
    assert metrics.registry.get_sample_value("movierec_batch_size_count") == 5


def test_stop_fails_queued_requests_clearly(two: tuple[LoadedBundle, LoadedBundle]) -> None:
    model = two[0].model

    async def main() -> BaseException | np.ndarray:
        batcher = MicroBatcher(max_batch_size=8, max_queue_delay_ms=500)
        await batcher.start()
        pending = asyncio.create_task(batcher.score(model, 1, np.array([1])))
        await asyncio.sleep(0.05)  # in the batch, waiting for company
        await batcher.stop()
        results = await asyncio.gather(pending, return_exceptions=True)
        return results[0]

    outcome = asyncio.run(main())
    assert isinstance(outcome, RuntimeError) and "shutting down" in str(outcome)


