"""A plain pandas implementation of ``movierec data prepare`` for a canonical folder.

bench/data_pipeline.py times it against the library and checks that both write the same
tables, value by value: it mirrors the library's columns and rules, not its code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

# The columns and rules the pandas baseline mirrors (movierec.data.columns, validate.py).
USER, ITEM, RATING, TS, LINE = "user_id", "item_id", "rating", "timestamp", "line"
RATING_MIN, RATING_MAX = 0.5, 5.0
MIN_SPLIT_LENGTH = 3
SPLITS = ("train", "valid", "test")


def sha256_folder(folder: Path) -> str:
    """Sorted (relative name, file sha256) pairs, like ``movierec.data.sources.hash_path``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        file_digest = hashlib.sha256()
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                file_digest.update(chunk)
        digest.update(f"{file.relative_to(folder).as_posix()}\0{file_digest.hexdigest()}\n"
                      .encode())
    return digest.hexdigest()


def pandas_prepare(folder: Path, out: Path, strict: bool = True) -> dict[str, Any]:
    """The steps of ``movierec.data.prepare.prepare`` for a canonical folder, plain pandas.

    Read, validate (same rules), sort by user, time and file line, remap ids densely,
    leave-one-out split, item train counts, users, card with a content hash, Parquet (lz4).
    """
    import numpy as np
    import pandas as pd

    source_sha256 = sha256_folder(folder)
    inter = pd.read_parquet(folder / "interactions.parquet", columns=[USER, ITEM, RATING, TS])
    items = pd.read_parquet(folder / "items.parquet")
    users_path = folder / "users.parquet"
    users = pd.read_parquet(users_path) if users_path.exists() else None
    inter[RATING] = inter[RATING].astype("float64")
    inter[TS] = np.floor(inter[TS].astype("float64"))  # seconds; NaN until validated
    inter[LINE] = np.arange(1, len(inter) + 1)

    rules = {
        "bad_user_id": inter[USER].isna() | (inter[USER] <= 0),
        "bad_item_id": inter[ITEM].isna() | (inter[ITEM] <= 0),
        "rating_out_of_range": ~inter[RATING].between(RATING_MIN, RATING_MAX),
        "bad_timestamp": inter[TS].isna() | (inter[TS] < 0),
        "duplicate_interaction": inter.duplicated([USER, ITEM, TS]),
        "item_without_metadata": inter[ITEM].notna() & ~inter[ITEM].isin(items[ITEM]),
    }
    counts = {name: int(mask.sum()) for name, mask in rules.items()}
    if strict and any(counts.values()):
        raise ValueError(f"interactions.parquet: rules fired: {counts}")
    bad = np.logical_or.reduce([mask.to_numpy() for mask in rules.values()])
    inter = inter[~bad]
    inter[TS] = inter[TS].astype("int64")

    seq = inter.sort_values([USER, TS, LINE], kind="stable", ignore_index=True)
    user_idx = pd.factorize(seq[USER], sort=True)[0] + 1
    item_idx = pd.factorize(seq[ITEM], sort=True)[0] + 1
    seq["user_idx"] = user_idx.astype("int32")
    position = seq.groupby("user_idx").cumcount()
    length = seq.groupby("user_idx")["user_idx"].transform("size")
    from_end = length - 1 - position
    codes = np.select([length < MIN_SPLIT_LENGTH, from_end == 0, from_end == 1], [0, 2, 1],
                      default=0)
    seq = pd.DataFrame({
        "user_idx": seq["user_idx"], "item_idx": item_idx.astype("int32"),
        USER: seq[USER], ITEM: seq[ITEM], RATING: seq[RATING].astype("float32"),
        TS: seq[TS], "position": position.astype("int32"),
        "split": pd.Categorical.from_codes(codes, categories=list(SPLITS)),
    })

    train_counts = (seq.loc[seq["split"] == "train", "item_idx"].value_counts()
                    .rename("train_count"))
    items_out = (seq[["item_idx", ITEM]].drop_duplicates().merge(items, on=ITEM)
                 .merge(train_counts, left_on="item_idx", right_index=True, how="left"))
    items_out["train_count"] = items_out["train_count"].fillna(0).astype("int32")
    items_out = items_out.sort_values("item_idx", ignore_index=True)
    users_out = seq[["user_idx", USER]].drop_duplicates().sort_values("user_idx",
                                                                      ignore_index=True)
    if users is not None:
        users_out = users_out.merge(users.drop_duplicates(USER), on=USER, how="left")

    split_counts = seq["split"].value_counts()
    lengths = seq.groupby("user_idx").size()
    params = {"dataset": "canonical", "min_rating": None, "min_user": 0, "min_item": 0}
    digest = hashlib.sha256(json.dumps({"format": 1, "params": params}, sort_keys=True)
                            .encode())
    for col in (USER, ITEM, TS, RATING):
        digest.update(seq[col].to_numpy().tobytes())
    digest.update(seq["split"].cat.codes.to_numpy().tobytes())
    digest.update(items_out.to_json(orient="records").encode())
    digest.update(users_out.to_json(orient="records").encode())
    card = {
        "name": "canonical", "data_version": digest.hexdigest()[:16],
        "users": len(users_out), "items": len(items_out), "interactions": len(seq),
        "train_interactions": int(split_counts["train"]),
        "valid_users": int(split_counts["valid"]), "test_users": int(split_counts["test"]),
        "train_only_users": int((lengths < MIN_SPLIT_LENGTH).sum()),
        "sequence_length": {"min": int(lengths.min()), "median": float(lengths.median()),
                            "mean": round(float(lengths.mean()), 2),
                            "max": int(lengths.max())},
        "time_range": [int(seq[TS].min()), int(seq[TS].max())],
        "source": {"path": str(folder), "sha256": source_sha256},
        "validation": counts,
    }

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seq.to_parquet(out / "interactions.parquet", compression="lz4", index=False)
    items_out.to_parquet(out / "items.parquet", compression="lz4", index=False)
    users_out.to_parquet(out / "users.parquet", compression="lz4", index=False)
    (out / "dataset.json").write_text(json.dumps(card, indent=2) + "\n")
    return card
