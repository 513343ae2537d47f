"""Spectral initialisation of item embeddings (``movierec.models.spectral``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from movierec.data.dataset import load_sequences
from movierec.models import spectral
from movierec.models.spectral import (
    init_item_embeddings,
    normalized_interactions,
    spectral_item_vectors,
)
from movierec.training.config import TrainConfig
from movierec.training.loop import new_model, training_sequences

# Two communities with no item in common: users 1-6 watch items 1-4, users 7-9 items 5-7
# (user 0 is the unused padding row). Different sizes give distinct singular values.
BLOCKS = [np.array([], dtype=np.int64)] + [np.array([1, 2, 3, 4])] * 6 + [np.array([5, 6, 7])] * 3


def test_the_matrix_is_symmetrically_normalised() -> None:
    matrix = normalized_interactions([np.array([]), np.array([1, 2, 2]), np.array([2])], 3)
    dense = matrix.to_dense().numpy()
    # Degrees: user 1 has 2 distinct items (the repeat counts once), user 2 one; item 1 one
    # user, item 2 two.
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[1, 1] = 1 / np.sqrt(2 * 1)
    expected[1, 2] = 1 / np.sqrt(2 * 2)
    expected[2, 2] = 1 / np.sqrt(1 * 2)
    np.testing.assert_allclose(dense, expected, rtol=1e-6)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_items_watched_by_the_same_users_get_the_same_direction() -> None:
    vectors = spectral_item_vectors(BLOCKS, 7, width=4)
    assert vectors.shape == (8, 4)
    assert torch.all(vectors[0] == 0)  # padding
    assert _cosine(vectors[1], vectors[3]) == pytest.approx(1.0, abs=1e-5)
    assert _cosine(vectors[5], vectors[7]) == pytest.approx(1.0, abs=1e-5)
    assert _cosine(vectors[1], vectors[5]) == pytest.approx(0.0, abs=1e-5)
    # The matrix has rank 2: the columns past it are zero, not noise.
    assert torch.all(vectors[:, 2:].abs() < 1e-6)


def test_the_low_rank_path_agrees_with_the_dense_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three communities of different sizes (a clear gap after the third singular value),
    # each user with one item from anywhere as noise.
    rng = np.random.default_rng(0)
    sequences = [np.array([], dtype=np.int64)]
    for items, users in ((np.arange(1, 16), 40), (np.arange(16, 31), 25), (np.arange(31, 41), 15)):
        for _ in range(users):
            own = rng.choice(items, size=rng.integers(3, 10), replace=False)
            sequences.append(np.append(own, rng.integers(1, 41)))
    dense = spectral_item_vectors(sequences, 40, width=3)
    monkeypatch.setattr(spectral, "DENSE_SVD_MAX_ENTRIES", 0)
    low_rank = spectral_item_vectors(sequences, 40, width=3, seed=0)
    # Singular vectors are defined up to sign, so compare the Gram matrices V S V^T.
    np.testing.assert_allclose((low_rank @ low_rank.T).numpy(), (dense @ dense.T).numpy(),
                               atol=2e-3)
    again = spectral_item_vectors(sequences, 40, width=3, seed=0)
    assert torch.equal(low_rank, again)  # seeded, so reproducible


def test_init_keeps_the_random_scale_and_the_unseen_items() -> None:
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(10, 4, padding_idx=0)  # items 8 and 9 are never seen
    before = embedding.weight.detach().clone()
    init_item_embeddings(embedding, BLOCKS)
    after = embedding.weight.detach()
    assert torch.equal(after[8:], before[8:]) and torch.equal(after[0], before[0])
    assert not torch.equal(after[1:8], before[1:8])
    assert float(after[1:8].std()) == pytest.approx(float(before[1:].std()), rel=1e-5)


def test_the_refit_starts_from_the_validation_items_too(small_prepared: Path) -> None:
    data = load_sequences(small_prepared)
    config = TrainConfig.model_validate({"model": {"item_init": "spectral", "d_item": 8,
                                                   "d_user": 8, "max_len": 20}})

    def items(config: TrainConfig, refit: bool) -> torch.Tensor:
        torch.manual_seed(0)  # fit seeds before it builds a model
        sequences = training_sequences(data, refit)[0]
        return new_model(config, data, sequences).item_embedding.weight.detach()

    selection, refit = items(config, refit=False), items(config, refit=True)
    random = items(config.model_copy(update={"model": config.model.model_copy(
        update={"item_init": "random"})}), refit=False)
    trained = set(np.concatenate(data.train[1:]).tolist())
    only_valid = sorted(set(data.valid_item[data.valid_item > 0].tolist()) - trained)
    assert only_valid, "the fixture should have items that only appear as validation items"
    assert torch.equal(items(config, refit=False), selection)
    assert not torch.equal(selection, refit)  # the refit's matrix has the valid items
    for item in only_valid:  # never a training item: random in selection, spectral in refit
        assert torch.equal(selection[item], random[item])
        assert not torch.equal(refit[item], random[item])
