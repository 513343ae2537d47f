"""Load a prepared folder into the arrays that training and evaluation consume."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from movierec.data.columns import (
    ITEM_IDX_COL,
    POSITION_COL,
    SPLIT_COL,
    TEST,
    TIMESTAMP_COL,
    TRAIN,
    USER_IDX_COL,
    VALID,
)
from movierec.data.prepare import load_card


@dataclass
class SequenceData:
    """Per-user sequences of a prepared dataset, indexed by ``user_idx`` (entry 0 unused).

    Attributes:
        folder: The prepared folder.
        card: Its ``dataset.json``.
        n_users: Number of users (indices 1..n_users).
        n_items: Number of items (indices 1..n_items; 0 is padding).
        train: Training item sequences in time order, one array per user.
        valid_item: Validation target per user (0: none).
        test_item: Test target per user (0: none).
        items: The items table (titles, genres, ``train_count``).
        users: The users table (demographics when present).
        train_times: Timestamps of ``train``'s items, one array per user (None: unknown).
        valid_time: Timestamp of each user's validation item (None: unknown).
    """

    folder: Path
    card: dict[str, Any]
    n_users: int
    n_items: int
    train: list[np.ndarray]
    valid_item: np.ndarray
    test_item: np.ndarray
    items: pl.DataFrame
    users: pl.DataFrame
    train_times: list[np.ndarray] | None = None
    valid_time: np.ndarray | None = None
    _train_counts: np.ndarray | None = field(default=None, repr=False)

    @property
    def data_version(self) -> str:
        """The content hash of the prepared data."""
        return str(self.card["data_version"])

    def history(self, user: int, split: str) -> np.ndarray:
        """The input history before ``split``'s target: train, plus the valid item for test."""
        if split == VALID:
            return self.train[user]
        if split == TEST:
            valid = self.valid_item[user]
            return np.append(self.train[user], valid) if valid else self.train[user]
        raise ValueError(f"split must be {VALID!r} or {TEST!r}, not {split!r}")

    def history_times(self, user: int, split: str) -> np.ndarray | None:
        """Timestamps of ``history(user, split)``'s items (None when the data has none)."""
        if self.train_times is None or self.valid_time is None:
            return None
        if split == TEST and self.valid_item[user]:
            return np.append(self.train_times[user], self.valid_time[user])
        if split in (VALID, TEST):
            return self.train_times[user]
        raise ValueError(f"split must be {VALID!r} or {TEST!r}, not {split!r}")

    def targets(self, split: str) -> np.ndarray:
        """Target item per user for ``split`` (0 where the user has none)."""
        return {VALID: self.valid_item, TEST: self.test_item}[split]

    def eval_users(self, split: str) -> np.ndarray:
        """Users with a target in ``split``, ascending."""
        return np.flatnonzero(self.targets(split))

    def item_train_counts(self) -> np.ndarray:
        """Training interactions per item index (entry 0 is padding, 0)."""
        if self._train_counts is None:
            self._train_counts = np.bincount(np.concatenate(self.train),
                                             minlength=self.n_items + 1)
        return self._train_counts


def load_sequences(folder: Path) -> SequenceData:
    """Read ``interactions.parquet`` of a prepared folder into per-user arrays."""
    folder = Path(folder)
    card = load_card(folder)
    inter = pl.read_parquet(folder / "interactions.parquet",
                            columns=[USER_IDX_COL, ITEM_IDX_COL, TIMESTAMP_COL, POSITION_COL,
                                     SPLIT_COL])
    inter = inter.sort([USER_IDX_COL, POSITION_COL])
    n_users, n_items = int(card["users"]), int(card["items"])
    train = inter.filter(pl.col(SPLIT_COL) == TRAIN)
    users = train[USER_IDX_COL].to_numpy()
    items = train[ITEM_IDX_COL].to_numpy().astype(np.int64)
    times = train[TIMESTAMP_COL].to_numpy().astype(np.int64)
    bounds = np.searchsorted(users, np.arange(n_users + 2))
    sequences = [items[bounds[u]:bounds[u + 1]] for u in range(n_users + 1)]
    train_times = [times[bounds[u]:bounds[u + 1]] for u in range(n_users + 1)]
    targets = {}
    valid_time = np.zeros(n_users + 1, dtype=np.int64)  # the test item's time is never an input
    for split in (VALID, TEST):
        rows = inter.filter(pl.col(SPLIT_COL) == split)
        array = np.zeros(n_users + 1, dtype=np.int64)
        array[rows[USER_IDX_COL].to_numpy()] = rows[ITEM_IDX_COL].to_numpy()
        targets[split] = array
        if split == VALID:
            valid_time[rows[USER_IDX_COL].to_numpy()] = rows[TIMESTAMP_COL].to_numpy()
    return SequenceData(folder=folder, card=card, n_users=n_users, n_items=n_items,
                        train=sequences, valid_item=targets[VALID], test_item=targets[TEST],
                        items=pl.read_parquet(folder / "items.parquet"),
                        users=pl.read_parquet(folder / "users.parquet"),
                        train_times=train_times, valid_time=valid_time)


def left_pad(histories: list[np.ndarray], max_len: int) -> np.ndarray:
    """Stack the last ``max_len`` items of each history, left padded with 0."""
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, seq in enumerate(histories):
        tail = seq[-max_len:]
        if len(tail):
            out[row, max_len - len(tail):] = tail
    return out
