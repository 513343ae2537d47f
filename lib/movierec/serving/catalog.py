"""The served bundle's tables: verification (checksums, keys) and the in-memory catalogue.

Serving never trusts a bundle it has not verified: the file-level checks come from
``movierec.registry.layout`` (torch-free, shared with the exporter), so the serving image
needs neither torch nor the training side of the package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq

from movierec.registry.layout import (
    ITEMS_FILE,
    MODEL_FILES,
    REQUIRED_COLUMNS,
    TIE_TAIL_COL,
    USERS_FILE,
    BundleError,
    Precision,
    read_verified_metadata,
)

__all__ = ["MODEL_FILES", "BundleError", "Catalog", "Movie", "Precision", "load_catalog",
           "verify_bundle_files"]


def verify_bundle_files(path: Path, precision: Precision = "fp32") -> dict[str, Any]:
    """Check a bundle's metadata, listed files and checksums for serving ``precision``.

    Raises:
        BundleError: Naming the file, the problem and the fix.
    """
    return read_verified_metadata(path, models=(MODEL_FILES[precision],))


@dataclass(frozen=True)
class Movie:
    """One catalogue entry as the API shows it."""

    movie_id: int
    title: str
    year: int | None
    genres: list[str]


def movie_json_prefix(movie: Movie) -> str:
    """A recommended movie's JSON object up to its score: ``{"movie_id": ..., "score": ``."""
    return json.dumps(asdict(movie))[:-1] + ', "score": '


class Catalog:
    """Items, users and stored histories of one bundle, indexed for serving.

    Item and user indices are the bundle's dense indices (0 is padding / "no user").
    """

    def __init__(self, items: pl.DataFrame, users: pl.DataFrame,
                 histories: dict[int, np.ndarray], n_items: int,
                 tie_tails: dict[int, int] | None = None) -> None:
        size = n_items + 1
        idx = items["item_idx"].to_numpy().astype(np.int64)
        if idx.size and (idx.min() < 1 or idx.max() > n_items):
            raise BundleError(f"items.parquet: item_idx outside 1..{n_items}")
        self.n_items = n_items
        self.item_ids = np.zeros(size, dtype=np.int64)
        self.item_ids[idx] = items["item_id"].to_numpy()
        self.train_count = np.zeros(size, dtype=np.int64)
        self.train_count[idx] = items["train_count"].fill_null(0).to_numpy()
        self.movies: list[Movie | None] = [None] * size
        for row in items.select("item_idx", "item_id", "title", "year", "genres").iter_rows():
            self.movies[row[0]] = Movie(movie_id=int(row[1]), title=row[2] or "",
                                        year=None if row[3] is None else int(row[3]),
                                        genres=list(row[4] or []))
        # Each movie's JSON up to its score, rendered once: answering /recommend then costs
        # string joins instead of a pydantic round trip per item (~0.1 ms per request).
        self.json_prefix: list[str] = ["" if m is None else movie_json_prefix(m)
                                       for m in self.movies]
        self.idx_by_movie: dict[int, int] = {int(m): int(i) for i, m in
                                             zip(idx, self.item_ids[idx], strict=True)}
        # Most popular first; ties broken by index so the order is deterministic.
        order = np.lexsort((np.arange(size), -self.train_count))
        self.popularity_order = order[order != 0]
        rank = np.empty(size, dtype=np.float64)
        rank[self.popularity_order] = np.arange(self.popularity_order.size)
        rank[0] = np.nan
        # Popularity percentile of an item: 0 = the most popular, 1 = the least.
        self.popularity_pct = rank / max(self.popularity_order.size - 1, 1)
        self.user_idx_by_id: dict[int, int] = dict(
            zip(users["user_id"].to_list(), users["user_idx"].to_list(), strict=True))
        self.histories = histories
        # user_idx -> how many of the stored history's newest items share one timestamp.
        self.tie_tails = tie_tails or {}

    def to_indices(self, movie_ids: list[int]) -> tuple[np.ndarray, list[int]]:
        """Map MovieLens ids to item indices, keeping order; return (indices, unknown ids)."""
        known: list[int] = []
        unknown: list[int] = []
        for movie_id in movie_ids:
            item = self.idx_by_movie.get(movie_id)
            if item is None:
                unknown.append(movie_id)
            else:
                known.append(item)
        return np.asarray(known, dtype=np.int64), unknown

    def movie(self, item_idx: int) -> Movie:
        """The catalogue entry of an item index (a placeholder when the table lacks it)."""
        movie = self.movies[item_idx]
        if movie is None:
            return Movie(movie_id=int(self.item_ids[item_idx]), title="", year=None, genres=[])
        return movie


def _read_histories(path: Path) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """``histories.parquet`` as two maps from user_idx.

    Returns:
        The int64 item indices of each user, oldest first, and each user's ``tie_tail``
        where above 1 (empty for bundles written before that column).
    """
    columns = pq.read_schema(path).names
    table = pq.read_table(path, columns=["user_idx", "items",
                                         *([TIE_TAIL_COL] if TIE_TAIL_COL in columns else [])])
    users = table.column("user_idx").to_numpy()
    lists = table.column("items").combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    parts = np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []
    histories = {int(user): part for user, part in zip(users, parts, strict=True)}
    if TIE_TAIL_COL not in columns:
        return histories, {}
    tails = pc.fill_null(table.column(TIE_TAIL_COL), 0).to_numpy(zero_copy_only=False)
    return histories, {int(user): int(tail) for user, tail in zip(users, tails, strict=True)
                       if tail > 1}


def load_catalog(path: Path, meta: dict[str, Any]) -> Catalog:
    """Read the three tables of a verified bundle into a :class:`Catalog`.

    Raises:
        BundleError: When a table lacks a column or disagrees with the metadata.
    """
    try:
        items = pl.read_parquet(path / "items.parquet")
        users = pl.read_parquet(path / "users.parquet")
        histories, tie_tails = _read_histories(path / "histories.parquet")
    except (OSError, pl.exceptions.PolarsError, KeyError, ValueError) as exc:
        raise BundleError(f"bundle {path}: cannot read its tables ({exc})") from exc
    for name, frame in ((ITEMS_FILE, items), (USERS_FILE, users)):
        lacking = [col for col in REQUIRED_COLUMNS[name] if col not in frame.columns]
        if lacking:
            raise BundleError(f"bundle {path}: {name} lacks columns {lacking}")
    n_items, n_users = int(meta["n_items"]), int(meta["n_users"])
    user_idx = users["user_idx"]
    if user_idx.len() and (user_idx.min() < 1 or user_idx.max() > n_users):  # type: ignore[operator]
        raise BundleError(f"bundle {path}: users.parquet user_idx outside 1..{n_users} "
                          "(metadata n_users)")
    if items.height != n_items:
        raise BundleError(f"bundle {path}: items.parquet has {items.height} rows but "
                          f"metadata n_items={n_items}")
    for user, hist in histories.items():
        if hist.size and (hist.min() < 1 or hist.max() > n_items):
            raise BundleError(f"bundle {path}: histories.parquet user_idx {user} holds an "
                              f"item index outside 1..{n_items}")
    return Catalog(items, users, histories, n_items, tie_tails)
