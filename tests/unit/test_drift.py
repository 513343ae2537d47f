"""Drift statistics on hand-made distributions."""

from __future__ import annotations

import numpy as np
import pytest

from movierec.monitoring.collect import length_histogram
from movierec.monitoring.drift import (
    DriftConfig,
    assess,
    cdf_at,
    hit_rate_windows,
    popularity_deciles,
    psi,
)


def test_psi_zero_for_equal_and_grows_with_shift() -> None:
    base = np.array([10, 20, 30, 40])
    assert psi(base, base * 3) == pytest.approx(0.0)
    small = psi(base, np.array([12, 20, 30, 38]))
    large = psi(base, np.array([40, 30, 20, 10]))
    assert 0 < small < 0.02 < 0.2 < large
    # hand-computed: shares (0.5, 0.5) vs (0.25, 0.75)
    assert psi(np.array([1, 1]), np.array([1, 3])) == pytest.approx(
        (0.25 - 0.5) * np.log(0.5) + (0.75 - 0.5) * np.log(1.5))


def test_popularity_deciles_split_interactions_evenly() -> None:
    counts = np.arange(1, 101)[::-1].astype(float)  # item 0 most popular
    deciles = popularity_deciles(counts)
    assert deciles[0] == 0 and deciles[-1] == 9
    per_decile = np.bincount(deciles, weights=counts, minlength=10) / counts.sum()
    assert per_decile.max() < 0.2
    # Ten equal items: one per decile (the item that reaches a tenth stays in its own).
    assert popularity_deciles(np.full(10, 7.0)).tolist() == list(range(10))


def test_cdf_and_hit_windows() -> None:
    assert cdf_at(np.array([1, 2, 2, 5]), np.array([0, 2, 10])).tolist() == [0, 0.75, 1.0]
    assert hit_rate_windows([True] * 200 + [False] * 200, window=200) == [1.0, 0.0]


def test_length_histogram_parses_prometheus_text() -> None:
    text = ("# TYPE movierec_sequence_length histogram\n"
            'movierec_sequence_length_bucket{le="1.0"} 2.0\n'
            'movierec_sequence_length_bucket{le="10.0"} 5.0\n'
            'movierec_sequence_length_bucket{le="+Inf"} 8.0\n'
            "movierec_sequence_length_count 8.0\nmovierec_sequence_length_sum 40.0\n")
    assert length_histogram(text) == {1.0: 2.0, 10.0: 5.0, float("inf"): 8.0}


def _assess(watched: np.ndarray, unknown: int, served_lengths: list[int]) -> object:
    counts = np.concatenate([[0], np.arange(1, 201)[::-1]]).astype(np.int64)
    train_lengths = np.full(300, 50)
    edges = [1.0, 10.0, 100.0, 1000.0]
    buckets = {e: float(np.sum(np.asarray(served_lengths) <= e)) for e in edges}
    buckets[float("inf")] = float(len(served_lengths))
    return assess(counts, train_lengths, watched, unknown, buckets, [True, False] * 100,
                  DriftConfig(min_events=50))


def test_assess_flags_drift_only_when_thresholds_are_crossed() -> None:
    rng = np.random.default_rng(0)
    counts = np.arange(1, 201)[::-1].astype(float)
    like_training = rng.choice(np.arange(1, 201), size=2000, p=counts / counts.sum())
    ok = _assess(like_training, 0, [50] * 500)
    assert ok.verdict == "ok" and ok.psi < 0.05 and ok.ks == 0.0
    tail_only = np.arange(150, 201).repeat(20)  # only the least popular items
    shifted = _assess(tail_only, 200, [3] * 500)
    assert shifted.verdict == "drift"
    assert {d.split()[0] for d in shifted.drifted} == {"psi", "ks", "unknown_rate"}
    few = _assess(like_training[:10], 0, [50])
    assert few.verdict.startswith("too little traffic")
    # Every request longer than the largest finite bucket: the largest drift, not none.
    longer = _assess(like_training, 0, [5000] * 500)
    assert longer.ks == 1.0 and "ks" in {d.split()[0] for d in longer.drifted}
