import math

import numpy as np
import pytest

from movierec.evaluation.metrics import (
    accuracy_per_user,
    bootstrap_ci,
    catalogue_coverage,
    intra_list_diversity,
    mean_popularity,
    novelty,
    pessimistic_ranks,
)


def test_pessimistic_ranks_count_ties_against_the_model() -> None:
    positive = np.array([0.5, 0.5, 0.9, 0.1])
    candidates = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 0.1], [-np.inf, 1.0, 0.9],
                           [0.1, 0.1, 0.1]])
    assert pessimistic_ranks(positive, candidates).tolist() == [0, 2, 2, 3]


def test_nan_scores_count_against_the_model() -> None:
    inf = np.inf
    positive = np.array([np.nan, 1.0, np.nan])
    candidates = np.array([[0.5, 2.0, -inf], [np.nan, 0.0, -inf], [np.nan, np.nan, np.nan]])
    # A NaN positive is outranked by every candidate not excluded; a NaN candidate
    # outranks any positive. A diverged model scores worst, not a perfect 1.0.
    assert pessimistic_ranks(positive, candidates).tolist() == [2, 1, 3]


def test_accuracy_metrics_by_hand() -> None:
    ranks = np.array([0, 1, 9, 10, 19, 25])
    m = accuracy_per_user(ranks)
    assert m["ndcg@10"].tolist() == pytest.approx(
        [1.0, 1 / math.log2(3), 1 / math.log2(11), 0.0, 0.0, 0.0])
    assert m["hr@10"].tolist() == [1, 1, 1, 0, 0, 0]
    assert m["hr@20"].tolist() == [1, 1, 1, 1, 1, 0]
    assert m["ndcg@20"][4] == pytest.approx(1 / math.log2(21))
    assert m["mrr"].tolist() == pytest.approx([1, 1 / 2, 1 / 10, 1 / 11, 1 / 20, 1 / 26])


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_users() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.random(50), rng.random(5000)
    lo, hi = bootstrap_ci(small, seed=1)
    assert lo < small.mean() < hi
    lo2, hi2 = bootstrap_ci(large, seed=1)
    assert hi2 - lo2 < (hi - lo) / 5
    assert bootstrap_ci(small, seed=1) == (lo, hi)  # seeded
    # Drawn in chunks for many users, the same resamples as one index matrix would take.
    many = rng.random(20_000)
    means = many[np.random.default_rng(2).integers(0, len(many), (1000, len(many)))].mean(axis=1)
    assert bootstrap_ci(many, seed=2) == (float(np.quantile(means, 0.025)),
                                          float(np.quantile(means, 0.975)))


def test_beyond_accuracy_by_hand() -> None:
    top = np.array([[1, 2], [2, 3]])
    counts = np.array([0, 6, 2, 0])  # item 3 never seen in training: counted as 1
    assert catalogue_coverage(top, n_items=3) == 1.0
    assert catalogue_coverage(np.array([[1, 2], [1, 2]]), n_items=4) == 0.5
    assert mean_popularity(top, counts) == pytest.approx((6 + 2 + 2 + 0) / 4)
    expected = np.mean([-math.log2(6 / 8), -math.log2(2 / 8), -math.log2(2 / 8),
                        -math.log2(1 / 8)])
    assert novelty(top, counts) == pytest.approx(expected)
    genres = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=bool)
    # list 1: {A} vs {A,B} -> jaccard 1/2; list 2: {A,B} vs {B} -> 1/2: diversity 1/2.
    assert intra_list_diversity(top, genres) == pytest.approx(0.5)
    assert intra_list_diversity(np.array([[1, 1]]), genres) == 0.0
