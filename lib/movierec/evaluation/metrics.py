"""Ranking metrics as pure functions: arrays in, numbers (or per-user arrays) out.

A *rank* here is 0-based and pessimistic: the number of competing candidates that score
at least as high as the held-out item. A tie therefore counts against the model, so a
model that scores everything equally gets the worst rank, not a lucky one.
"""

from __future__ import annotations

import numpy as np

ACCURACY_METRICS = ("ndcg@10", "hr@10", "mrr", "ndcg@20", "hr@20")


def pessimistic_ranks(positive: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Rank of each positive among its row of competing candidate scores.

    Args:
        positive: Score of the held-out item per user, shape [U].
        candidates: Scores of the competing items per user, shape [U, C]; ``-inf`` marks
            excluded candidates (never counted).

    Returns:
        Integer ranks, shape [U]: how many candidates score >= the positive. NaN counts
        against the model too: a NaN candidate outranks the positive, and a NaN positive
        is outranked by every candidate not excluded (a diverged model must not score 1.0).
    """
    outranks = (candidates >= positive[:, None]) | np.isnan(candidates)
    lost = np.isnan(positive)
    if lost.any():
        outranks[lost] = candidates[lost] != -np.inf
    return outranks.sum(axis=1)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with one relevant item: 1 / log2(rank + 2) inside the top k."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def hit_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user hit rate@k: 1 when the held-out item is in the top k."""
    return (ranks < k).astype(np.float64)


def reciprocal_rank(ranks: np.ndarray) -> np.ndarray:
    """Per-user reciprocal rank 1 / (rank + 1)."""
    return 1.0 / (ranks + 1.0)


def accuracy_per_user(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """All accuracy metrics per user, keyed as in ``ACCURACY_METRICS``."""
    return {"ndcg@10": ndcg_at_k(ranks, 10), "hr@10": hit_at_k(ranks, 10),
            "mrr": reciprocal_rank(ranks), "ndcg@20": ndcg_at_k(ranks, 20),
            "hr@20": hit_at_k(ranks, 20)}


def bootstrap_ci(values: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean over users."""
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # Resamples in chunks of about 2^22 draws: one [n_resamples, n_users] index matrix
    # would take GBs for ml-25m's 160k users. The draws are those of one matrix, in order.
    values = np.asarray(values)
    chunk = max(1, (1 << 22) // len(values))
    means = np.concatenate([
        values[rng.integers(0, len(values), size=(min(chunk, n_resamples - start),
                                                  len(values)))].mean(axis=1)
        for start in range(0, n_resamples, chunk)])
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def catalogue_coverage(top_k: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one top-k list."""
    return float(len(np.unique(top_k)) / n_items)


def novelty(top_k: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean self-information −log2 p(item) of recommended items (p from training counts)."""
    probability = np.maximum(item_counts[top_k], 1) / max(item_counts.sum(), 1)
    return float(np.mean(-np.log2(probability)))


def mean_popularity(top_k: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean training interaction count of recommended items."""
    return float(np.mean(item_counts[top_k]))


def intra_list_diversity(top_k: np.ndarray, genres: np.ndarray) -> float:
    """Mean pairwise genre dissimilarity (1 − Jaccard) within each list.

    Args:
        top_k: Recommended item indices, shape [U, k].
        genres: Boolean item-by-genre matrix, shape [n_items + 1, G].
    """
    g = genres[top_k].astype(np.float64)                     # [U, k, G]
    inter = np.einsum("ukg,ulg->ukl", g, g)
    sizes = g.sum(axis=2)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    jaccard = np.divide(inter, union, out=np.ones_like(inter), where=union > 0)
    k = top_k.shape[1]
    if k < 2:
        return 0.0
    off_diagonal = ~np.eye(k, dtype=bool)
    return float(np.mean((1.0 - jaccard)[:, off_diagonal]))
