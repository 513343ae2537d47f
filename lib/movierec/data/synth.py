"""MovieLens-shaped synthetic data of any size, in the canonical Parquet layout.

Items have Zipf popularity and belong to taste clusters (genres). Each user has a favourite
cluster that they walk through in small steps, mixed with popular picks from anywhere, so
both the user ("what they like") and the sequence ("what comes next") carry signal that a
sequential recommender can learn. Everything is vectorised numpy: 25M rows in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from movierec.data.columns import (
    GENRES_COL,
    ITEM_COL,
    RATING_COL,
    TIMESTAMP_COL,
    TITLE_COL,
    USER_COL,
    YEAR_COL,
)
from movierec.files import replaceable_folder, staged_folder

GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
          "Thriller", "War", "Western")
START_TIME = 946_684_800  # 2000-01-01


class SynthConfig(BaseModel):
    """Size and shape of a synthetic dataset."""

    model_config = ConfigDict(extra="forbid")

    interactions: int = Field(100_000, ge=100)
    users: int | None = Field(None, ge=10, description="default: interactions / 100")
    items: int | None = Field(None, ge=20, description="default: 4 * sqrt(interactions)")
    clusters: int = Field(len(GENRES), ge=1, le=len(GENRES))
    in_cluster_share: float = Field(0.7, ge=0, le=1, description="picks from the walk")
    zipf_exponent: float = Field(1.0, gt=0)
    shuffle_rows: bool = Field(True, description="store rows in random order, like a log")
    seed: int = 0


def _lengths(n_users: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Per-user history lengths: heavy-tailed, at least 5, summing exactly to ``total``."""
    raw = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    spare = total - 5 * n_users
    lengths = 5 + np.floor(raw / raw.sum() * spare).astype(np.int64)
    lengths[: total - int(lengths.sum())] += 1  # hand out the rounding remainder
    return lengths


def generate(config: SynthConfig) -> dict[str, pl.DataFrame]:
    """Generate canonical ``interactions``, ``items`` and ``users`` tables."""
    rng = np.random.default_rng(config.seed)
    n = config.interactions
    n_users = config.users or max(10, n // 100)
    n_items = config.items or max(20, int(4 * np.sqrt(n)))
    if n < 5 * n_users:
        raise ValueError(f"{n} interactions cannot give {n_users} users 5 each; "
                         "lower --users or raise --interactions")
    lengths = _lengths(n_users, n, rng)
    user = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    # Items 1..n_items ranked by popularity; cluster c holds every item with i % k == c.
    k = config.clusters
    per_cluster = n_items // k
    popularity = 1.0 / np.arange(1, n_items + 1) ** config.zipf_exponent
    popular_pick = rng.choice(n_items, size=n, p=popularity / popularity.sum()) + 1
    favourite = rng.integers(0, k, size=n_users)
    walk_start = rng.integers(0, per_cluster, size=n_users)
    steps = rng.integers(1, 4, size=n)
    walk = np.cumsum(steps) - np.repeat(np.cumsum(steps)[starts] - steps[starts], lengths)
    slot = (np.repeat(walk_start, lengths) + walk) % per_cluster
    walk_pick = slot * k + np.repeat(favourite, lengths) + 1
    item = np.where(rng.random(n) < config.in_cluster_share, walk_pick, popular_pick)

    # Strictly increasing times per user: no (user, item, timestamp) duplicates by design.
    gaps = 1 + rng.exponential(3600.0, size=n).astype(np.int64)
    first = rng.integers(0, 5 * 365 * 86400, size=n_users)
    cum = np.cumsum(gaps)
    timestamp = START_TIME + np.repeat(first, lengths) + cum - np.repeat(cum[starts], lengths)
    rating = np.clip(np.round(rng.normal(3.6, 1.0, size=n)), 1, 5).astype(np.float64)

    order = rng.permutation(n) if config.shuffle_rows else np.arange(n)
    interactions = pl.DataFrame({USER_COL: user[order], ITEM_COL: item[order],
                                 RATING_COL: rating[order], TIMESTAMP_COL: timestamp[order]})
    ids = np.arange(1, n_items + 1)
    items = pl.DataFrame({
        ITEM_COL: ids,
        TITLE_COL: [f"Synthetic Movie {i}" for i in ids],
        YEAR_COL: rng.integers(1930, 2024, size=n_items).astype(np.int32),
        GENRES_COL: [[GENRES[(i - 1) % k]] for i in ids],
    })
    users = pl.DataFrame({
        USER_COL: np.arange(1, n_users + 1),
        "age": rng.integers(18, 70, size=n_users).astype(np.int32),
        "gender": rng.choice(["F", "M"], size=n_users),
        "occupation": rng.choice(["student", "engineer", "artist", "other"], size=n_users),
        "zip_code": [f"{z:05d}" for z in rng.integers(0, 99999, size=n_users)],
    })
    return {"interactions": interactions, "items": items, "users": users}


def write_synthetic(config: SynthConfig, out: Path) -> dict[str, int]:
    """Generate and write a canonical folder whole (never half of one); return its sizes.

    Raises:
        FileExistsError: ``out`` holds something other than a canonical folder, which
            writing would replace; nothing was written or deleted.
    """
    if not replaceable_folder(out, "interactions.parquet"):
        raise FileExistsError(f"{out} exists and is not a canonical folder (it has no "
                              "interactions.parquet), and writing would replace it: choose "
                              "a new or empty --out folder (nothing was written or deleted)")
    tables = generate(config)
    with staged_folder(out) as staged:
        for name, frame in tables.items():
            frame.write_parquet(staged / f"{name}.parquet")
    return {name: frame.height for name, frame in tables.items()}
