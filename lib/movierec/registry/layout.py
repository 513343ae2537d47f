"""The bundle layout and its file-level verification: torch-free, shared by export and serving.

Layout (``format`` 1)::

    model.onnx          fp32 scorer: users int64 [B], seqs int64 [B, max_len] -> scores [B, n+1]
    model.int8.onnx     the same, weights dynamically quantised to int8 (optional: left
                        out when it fails its checks; ``parity.int8_reasons`` says why)
    items.parquet       the prepared folder's item table (ids, titles, genres, train_count)
    users.parquet       the prepared folder's user table (ids, demographics)
    histories.parquet   user_idx int32, items list[int32]: each user's whole known sequence;
                        tie_tail int32: how many of its newest items share one timestamp
                        (bundles written before it lack it, and their service reads 0)
    metadata.json       model, data and run identity, metrics, parity report, sha256 of files

``read_verified_metadata`` checks what can be checked without loading a model (metadata,
listed files, checksums, no stray files); the exporter adds table and ONNX Runtime checks,
and the server adds its own load-and-warm-up before it reports ready.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from movierec.data.columns import (
    GENRES_COL,
    ITEM_COL,
    ITEM_IDX_COL,
    TITLE_COL,
    USER_COL,
    USER_IDX_COL,
    YEAR_COL,
)
from movierec.data.sources import sha256_file

FORMAT = 1
NAME = "movierec"
METADATA_FILE = "metadata.json"
MODEL_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
MODEL_FILES: dict[str, str] = {"fp32": MODEL_FILE, "int8": INT8_FILE}
ITEMS_FILE, USERS_FILE, HISTORIES_FILE = "items.parquet", "users.parquet", "histories.parquet"
TABLE_FILES = (ITEMS_FILE, USERS_FILE, HISTORIES_FILE)
TIE_TAIL_COL = "tie_tail"
# The columns the service reads from each table: the exporter refuses a bundle without
# them, so a registered bundle never fails to load for want of one.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    ITEMS_FILE: (ITEM_IDX_COL, ITEM_COL, TITLE_COL, YEAR_COL, GENRES_COL, "train_count"),
    USERS_FILE: (USER_IDX_COL, USER_COL),
    HISTORIES_FILE: (USER_IDX_COL, "items"),
}
REQUIRED_KEYS = ("format", "name", "model_kind", "max_len", "n_users", "n_items",
                 "data_version", "git_commit", "run_id", "trained_at", "metrics", "parity",
                 "files")
Precision = Literal["fp32", "int8"]


class BundleError(ValueError):
    """A bundle is missing, incomplete, corrupted or inconsistent; the message names the fix."""


def _load_metadata(path: Path) -> dict[str, Any]:
    meta_path = path / METADATA_FILE
    if not path.is_dir():
        raise BundleError(f"bundle {path}: not a folder (pass the folder that holds "
                          f"{METADATA_FILE})")
    if not meta_path.is_file():
        raise BundleError(f"bundle {path}: {METADATA_FILE} missing (not a bundle; export one "
                          "with `movierec export`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {path}: {METADATA_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise BundleError(f"bundle {path}: {METADATA_FILE} must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise BundleError(f"bundle {path}: {METADATA_FILE} lacks keys {missing} "
                          "(rebuild the bundle with the current exporter)")
    if meta["format"] != FORMAT:
        raise BundleError(f"bundle {path}: format {meta['format']!r} is not supported "
                          f"(this movierec reads format {FORMAT})")
    for key in ("max_len", "n_users", "n_items"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            raise BundleError(f"bundle {path}: {key}={meta[key]!r} must be a positive integer")
    if not isinstance(meta["files"], dict):
        raise BundleError(f"bundle {path}: 'files' must map file names to sha256 digests")
    return meta


def _why_int8_is_missing(meta: dict[str, Any], unlisted: list[str]) -> str:
    """The exporter's reason for leaving the int8 model out, as a message suffix."""
    parity = meta.get("parity")
    if INT8_FILE not in unlisted or not isinstance(parity, dict):
        return ""
    reasons = parity.get("int8_reasons")
    if isinstance(reasons, list) and reasons:
        return (f": the exporter left the int8 model out ({'; '.join(map(str, reasons))});"
                " serve with --precision fp32")
    return ": the bundle was exported without an int8 model; serve with --precision fp32"


def read_verified_metadata(path: Path, models: Iterable[str] = (MODEL_FILE,)) -> dict[str, Any]:
    """Check a bundle's metadata and files and return the metadata.

    Checks: ``metadata.json`` parses, has every required key and ``format == 1``; the tables
    and the ``models`` asked for are listed in ``files``; every listed file is a plain name,
    exists and matches its sha256; the folder holds no unlisted file.

    Raises:
        BundleError: Naming the file, the problem and the fix.
    """
    path = Path(path)
    meta = _load_metadata(path)
    files: dict[str, Any] = meta["files"]
    unlisted = [name for name in (*models, *TABLE_FILES) if name not in files]
    if unlisted:
        raise BundleError(f"bundle {path}: {unlisted} not listed in {METADATA_FILE} 'files'"
                          + _why_int8_is_missing(meta, unlisted))
    for name, expected in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", "..",
                                                                           METADATA_FILE):
            raise BundleError(f"bundle {path}: file name {name!r} must be a plain file name")
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle {path}: {name} is listed but missing "
                              "(copy the whole bundle folder)")
        actual = sha256_file(file)
        if not isinstance(expected, str) or actual != expected.lower():
            raise BundleError(f"bundle {path}: {name} sha256 {actual[:12]}... does not match "
                              f"metadata {str(expected)[:12]}... (the file is corrupted or was "
                              "changed after export; re-download or rebuild the bundle)")
    extra = sorted(p.name for p in path.iterdir() if p.name not in files
                   and p.name != METADATA_FILE and not p.name.startswith("."))
    if extra:
        raise BundleError(f"bundle {path}: holds files the metadata does not list: {extra}")
    return meta


def bundle_tie_orders(meta: dict[str, Any]) -> int:
    """How many orders of a history's tied newest items the model is scored over.

    ``model_config.tie_orders`` (``data.tie_orders``); 1 for bundles written before it, so
    they are served as they were evaluated.
    """
    return int((meta.get("model_config") or {}).get("tie_orders", 1))
