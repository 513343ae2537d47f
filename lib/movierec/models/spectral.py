"""Spectral initialisation of item embeddings from the training interactions.

A transformer trained from random item vectors must learn from scratch that, say, two
sequels go together. The leading singular vectors of the user-item matrix already say so,
so starting the item embeddings there (the rest of the network stays random) gives the
training a head start that it keeps: see ``ModelConfig.item_init`` for the measurements.

The matrix is the symmetrically normalised one of graph recommenders (LightGCN, SVD-GCN):
``A = D_u^-1/2 X D_i^-1/2`` with ``X`` the binary user-item matrix of the training items,
so popular items and heavy users do not dominate the leading directions. Item ``i`` gets
``v_i * sqrt(s)`` over the leading singular values ``s``, rescaled to the spread of the
random initialisation it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Up to this many matrix entries (users x items) the SVD is a dense, exact one (ml-100k:
# 1.6M entries, under a second; ml-1m: 22M); larger ones take a randomised low-rank SVD
# of the sparse matrix, whose cost grows with the number of interactions instead.
DENSE_SVD_MAX_ENTRIES = 50_000_000
LOW_RANK_OVERSAMPLING = 10
LOW_RANK_POWER_ITERATIONS = 4


def normalized_interactions(sequences: Sequence[np.ndarray], n_items: int) -> torch.Tensor:
    """Sparse ``D_u^-1/2 X D_i^-1/2`` [users, n_items + 1] of binary interactions.

    Row ``u`` is ``sequences[u]`` (repeats count once); column 0 (padding) stays empty.
    """
    rows, cols = [], []
    for user, items in enumerate(sequences):
        unique = np.unique(np.asarray(items, dtype=np.int64))
        rows.append(np.full(unique.size, user, dtype=np.int64))
        cols.append(unique)
    row, col = np.concatenate(rows), np.concatenate(cols)
    user_degree = np.bincount(row, minlength=len(sequences)).astype(np.float64)
    item_degree = np.bincount(col, minlength=n_items + 1).astype(np.float64)
    values = 1.0 / np.sqrt(user_degree[row] * item_degree[col])
    return torch.sparse_coo_tensor(np.stack([row, col]), values.astype(np.float32),
                                   (len(sequences), n_items + 1),
                                   check_invariants=True).coalesce()


def spectral_item_vectors(sequences: Sequence[np.ndarray], n_items: int, width: int,
                          seed: int = 0) -> torch.Tensor:
    """Item vectors [n_items + 1, width] from the leading singular vectors (row 0 zero).

    Columns beyond the matrix's rank are zero. ``seed`` drives the randomised SVD of
    large catalogues (the dense SVD of small ones needs none).
    """
    return _leading_item_vectors(normalized_interactions(sequences, n_items), width, seed)


def _leading_item_vectors(matrix: torch.Tensor, width: int, seed: int) -> torch.Tensor:
    """``spectral_item_vectors`` of an already normalised matrix [users, n_items + 1]."""
    users, columns = matrix.shape
    rank = min(width, users, columns)
    if users * columns <= DENSE_SVD_MAX_ENTRIES:
        _, values, vh = torch.linalg.svd(matrix.to_dense().double(), full_matrices=False)
        right = vh.T[:, :rank]
    else:
        with torch.random.fork_rng(devices=[]):  # leaves the caller's random stream alone
            torch.manual_seed(seed)
            _, values, right = torch.svd_lowrank(
                matrix, q=min(rank + LOW_RANK_OVERSAMPLING, users, columns),
                niter=LOW_RANK_POWER_ITERATIONS)
        right = right[:, :rank].double()
    vectors = torch.zeros(columns, width, dtype=torch.float64)
    vectors[:, :rank] = right * values[:rank].double().sqrt()
    vectors[0] = 0.0
    return vectors.float()


def init_item_embeddings(embedding: torch.nn.Embedding, sequences: Sequence[np.ndarray],
                         seed: int = 0) -> None:
    """Overwrite ``embedding`` [n_items + 1, d] with spectral vectors of ``sequences``.

    Items absent from ``sequences`` keep their random vectors (a zero vector would leave
    them nothing to learn from), and the spectral vectors are scaled to the standard
    deviation of the random ones they replace, so the learning rate keeps its meaning.
    """
    weight = embedding.weight
    n_items, width = weight.shape[0] - 1, weight.shape[1]
    matrix = normalized_interactions(sequences, n_items)
    vectors = _leading_item_vectors(matrix, width, seed)
    # An item is seen when its column has an entry (column 0, padding, never has one).
    seen = torch.bincount(matrix.indices()[1], minlength=n_items + 1) > 0
    if not seen.any():
        return
    with torch.no_grad():
        spread = vectors[seen].std()
        if spread > 0:
            target = weight[1:].std().to(vectors.dtype)
            weight[seen.to(weight.device)] = (vectors[seen] * (target / spread)).to(weight)
