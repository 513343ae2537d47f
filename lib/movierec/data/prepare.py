"""Prepare a dataset: validate, filter, order, remap, split, and write a versioned folder.

Output folder (``movierec data prepare --out DIR``):

- ``interactions.parquet``: ``user_idx``, ``item_idx`` (dense 1..N; 0 is padding),
  original ``user_id`` and ``item_id``, ``rating``, ``timestamp``, ``position`` (0-based,
  time order within the user, ties kept in file order) and ``split`` (train/valid/test).
- ``items.parquet``: ``item_idx``, ``item_id``, ``title``, ``year``, ``genres``,
  ``train_count`` (popularity in the training part).
- ``users.parquet``: ``user_idx``, ``user_id`` and demographics when the source has them.
- ``dataset.json``: the dataset card (counts, source and sha256, parameters, validation
  report, ``data_version``).

Leave-one-out as in SASRec / SSE-PT: each user's last interaction is test, the one before
is validation, the rest is training; users with fewer than 3 interactions are train-only.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from movierec import __version__
from movierec.config import Settings, get_settings
from movierec.data.columns import (
    ITEM_COL,
    ITEM_IDX_COL,
    POSITION_COL,
    RATING_COL,
    SPLIT_COL,
    TEST,
    TIMESTAMP_COL,
    TRAIN,
    USER_COL,
    USER_IDX_COL,
    VALID,
)
from movierec.data.movielens import parse_folder, unpack
from movierec.data.ordering import sort_in_time
from movierec.data.sources import Source, resolve_source
from movierec.data.validate import ValidationReport, validate
from movierec.files import replaceable_folder, staged_folder

# Bump when the prepared layout or the preparation logic changes what a version means.
PREPARED_FORMAT = 1
CARD_FILE = "dataset.json"
MIN_SPLIT_LENGTH = 3
SPLIT_DTYPE = pl.Enum([TRAIN, VALID, TEST])


class PrepareConfig(BaseModel):
    """Parameters of ``prepare``; all of them enter ``data_version``."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="release name (ml-100k, ...) or 'canonical'")
    min_rating: float | None = Field(None, description="keep ratings >= this (implicit data)")
    min_user: int = Field(0, ge=0, description="k-core: minimum interactions per user")
    min_item: int = Field(0, ge=0, description="k-core: minimum interactions per item")
    strict: bool = Field(True, description="fail on bad rows (False drops and reports them)")


def kcore(inter: pl.DataFrame, min_user: int, min_item: int) -> tuple[pl.DataFrame, int]:
    """Iteratively drop users and items below the thresholds until both hold.

    Returns:
        The filtered interactions and the number of passes it took.
    """
    passes = 0
    while min_user > 1 or min_item > 1:
        passes += 1
        kept = inter.filter((pl.len().over(USER_COL) >= min_user)
                            & (pl.len().over(ITEM_COL) >= min_item))
        if kept.height == inter.height:
            break
        inter = kept
    return inter, passes


def sequence_and_split(inter: pl.DataFrame, time_sorted: bool = False) -> pl.DataFrame:
    """Order each user's interactions in time, remap ids densely, and assign the split.

    Ties in time keep file order (``line``). Users are numbered by original id, items too,
    so the same input always gives the same mapping. ``time_sorted`` says ``inter`` is
    already in that order (``validate`` returns it so), which skips the sort.
    """
    ordered = (inter if time_sorted else sort_in_time(inter)).select(
        USER_COL, ITEM_COL, RATING_COL, TIMESTAMP_COL)
    # Sorted by user: a new user starts wherever the id changes, so a running count of
    # changes is the dense index without another sort.
    new_user = pl.col(USER_COL) != pl.col(USER_COL).shift(1, fill_value=-1)
    item_ids = ordered[ITEM_COL].unique().sort()
    item_idx = pl.int_range(1, item_ids.len() + 1, dtype=pl.Int32, eager=True)
    # Each window once, as a column: an eager select evaluates an expression at every use.
    with_user = ordered.with_columns(new_user.cum_sum().cast(pl.Int32).alias(USER_IDX_COL))
    with_pos = with_user.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int32).over(USER_IDX_COL).alias(POSITION_COL),
        pl.len().over(USER_IDX_COL).cast(pl.Int32).alias("_length"))
    from_end = pl.col("_length") - 1 - pl.col(POSITION_COL)
    # 0 train, 1 valid, 2 test: the last two of every user with at least 3 interactions.
    code = (pl.when(pl.col("_length") < MIN_SPLIT_LENGTH).then(0)
            .otherwise((2 - from_end).clip(0, 2)))
    return with_pos.select(
        pl.col(USER_IDX_COL),
        pl.col(ITEM_COL).replace_strict(item_ids, item_idx, return_dtype=pl.Int32)
        .alias(ITEM_IDX_COL),
        pl.col(USER_COL), pl.col(ITEM_COL),
        pl.col(RATING_COL).cast(pl.Float32), pl.col(TIMESTAMP_COL), pl.col(POSITION_COL),
        pl.lit(pl.Series([TRAIN, VALID, TEST], dtype=SPLIT_DTYPE)).gather(code)
        .alias(SPLIT_COL),
    )


def side_tables(seq: pl.DataFrame, items_meta: pl.DataFrame,
                users_meta: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The prepared ``items`` (metadata + train_count) and ``users`` (+ demographics) tables.

    One pass over ``seq`` per table: no 25M-row ``unique()`` of id pairs.
    """
    meta = [c for c in items_meta.columns if c != ITEM_COL]
    items = (seq.group_by(ITEM_IDX_COL)
             .agg(pl.col(ITEM_COL).first(),
                  (pl.col(SPLIT_COL) == TRAIN).sum().cast(pl.Int32).alias("train_count"))
             .join(items_meta, on=ITEM_COL).sort(ITEM_IDX_COL)
             .select(ITEM_IDX_COL, ITEM_COL, *meta, "train_count"))
    users = seq.filter(pl.col(POSITION_COL) == 0).select(USER_IDX_COL, USER_COL)
    if users_meta is not None:
        # In user_idx order, as the table was: data_version hashes it row by row.
        users = users.join(users_meta.unique(USER_COL, keep="first"), on=USER_COL, how="left",
                           maintain_order="left")
    return items, users


def content_version(seq: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame,
                    params: dict[str, Any]) -> str:
    """A short content hash of the prepared data: same input and parameters, same version.

    It hashes what the model and the evaluation see (original ids, ratings, timestamps,
    split, item metadata, user demographics for the slices) rather than the source bytes,
    so the same data from GroupLens or a local copy agree.
    """
    digest = hashlib.sha256(json.dumps({"format": PREPARED_FORMAT, "params": params},
                                       sort_keys=True).encode())
    for col in (USER_COL, ITEM_COL, TIMESTAMP_COL, RATING_COL):
        digest.update(seq[col].to_numpy())  # the buffer itself: no 200 MB copy per column
    digest.update(seq[SPLIT_COL].to_physical().to_numpy())
    digest.update(items.write_json().encode())
    digest.update(users.write_json().encode())
    return digest.hexdigest()[:16]


def check_output_folder(out: Path) -> None:
    """Refuse an output that is not new, empty or an earlier prepared folder.

    Preparing replaces the folder, so anything else there (``--out ~/datasets``, ``.``)
    would be deleted.

    Raises:
        FileExistsError: Naming the folder; nothing was written or deleted.
    """
    if not replaceable_folder(out, CARD_FILE):
        raise FileExistsError(f"{out} exists and is not a prepared dataset (it has no "
                              f"{CARD_FILE}), and preparing would replace it: choose a new "
                              "or empty --out folder (nothing was written or deleted)")


def _write_atomically(out: Path, tables: dict[str, pl.DataFrame], card: dict[str, Any]) -> None:
    """Write everything to a sibling temp folder, then swap it in: no half-written output."""
    check_output_folder(out)
    with staged_folder(out) as staged:
        for name, frame in tables.items():
            frame.write_parquet(staged / f"{name}.parquet", compression="lz4")
        (staged / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")


def prepare(config: PrepareConfig, out: Path, source: Path | None = None,
            settings: Settings | None = None) -> dict[str, Any]:
    """Run the whole preparation and return the dataset card (also in ``out/dataset.json``).

    Raises:
        FetchError: The dataset cannot be found or verified.
        ParseError: A file cannot be read.
        DataValidationError: Strict validation failed.
    """
    settings = settings or get_settings()
    check_output_folder(out)  # before the work, not after it
    started = time.perf_counter()
    resolved: Source = resolve_source(config.dataset, source, settings)
    folder = unpack(resolved.path, settings.home / "extracted", resolved.sha256)
    tables = parse_folder(folder, lenient=not config.strict)
    clean, report = validate(tables, strict=config.strict)
    filtered = clean
    if config.min_rating is not None:
        filtered = filtered.filter(pl.col(RATING_COL) >= config.min_rating)
    below_rating = clean.height - filtered.height
    cored, kcore_passes = kcore(filtered, config.min_user, config.min_item)
    if cored.is_empty():
        raise ValueError(f"no interactions are left of {clean.height:,} after the filters "
                         f"(min_rating={config.min_rating}, min_user={config.min_user}, "
                         f"min_item={config.min_item}): loosen them")
    seq = sequence_and_split(cored, time_sorted=True)  # validate and filters keep order
    items, users = side_tables(seq, tables.items, tables.users)
    params = config.model_dump(exclude={"strict"})
    card = build_card(config, resolved, tables.layout, report, seq, items, users, params,
                      below_rating=below_rating, kcore_removed=filtered.height - cored.height,
                      kcore_passes=kcore_passes)
    card["seconds"] = round(time.perf_counter() - started, 3)
    _write_atomically(out, {"interactions": seq, "items": items, "users": users}, card)
    return card


def build_card(config: PrepareConfig, source: Source, layout: str, report: ValidationReport,
               seq: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame,
               params: dict[str, Any], **filters: int) -> dict[str, Any]:
    """Assemble ``dataset.json``: what a reader needs to trust and reproduce the data."""
    split_counts = dict(seq.group_by(SPLIT_COL).len().iter_rows())
    lengths = seq.group_by(USER_IDX_COL).len()["len"]
    return {
        "name": config.dataset,
        "data_version": content_version(seq, items, users, params),
        "users": users.height,
        "items": items.height,
        "interactions": seq.height,
        "train_interactions": int(split_counts.get(TRAIN, 0)),
        "valid_users": int(split_counts.get(VALID, 0)),
        "test_users": int(split_counts.get(TEST, 0)),
        "train_only_users": int((lengths < MIN_SPLIT_LENGTH).sum()),
        "sequence_length": {"min": int(lengths.min()), "median": float(lengths.median()),
                            "mean": round(float(lengths.mean()), 2), "max": int(lengths.max())},
        "time_range": [int(seq[TIMESTAMP_COL].min()), int(seq[TIMESTAMP_COL].max())],
        "has_demographics": users.width > 2,
        "source": {"origin": source.origin, "path": str(source.path), "sha256": source.sha256,
                   "layout": str(layout)},
        "parameters": config.model_dump(),
        "filtering": filters,
        "validation": report.model_dump(),
        "movierec_version": __version__,
        "prepared_format": PREPARED_FORMAT,
    }


def load_card(folder: Path) -> dict[str, Any]:
    """Read ``dataset.json`` from a prepared folder, with a clear error when it is missing."""
    path = Path(folder) / CARD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} is not a prepared dataset (no {CARD_FILE}): make one "
                                f"with `movierec data prepare --dataset ml-100k --out {folder}`")
    return json.loads(path.read_text())
