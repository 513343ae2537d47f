"""Write model bundles (the folder serving loads) and verify them completely.

The layout and the file-level checks live in ``movierec.registry.layout`` (torch-free, so
serving shares them). A bundle is built in a hidden sibling folder, checked (parity,
checksums, ONNX Runtime loads every model) and only then renamed into place, so a failed
export never leaves a partial bundle nor damages the previous one.
"""

from __future__ import annotations

import copy
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from movierec.data.columns import (
    ITEM_IDX_COL,
    POSITION_COL,
    TEST,
    TIMESTAMP_COL,
    USER_IDX_COL,
    VALID,
)
from movierec.data.dataset import load_sequences
from movierec.data.sources import sha256_file
from movierec.evaluation.compare import unflatten_metrics
from movierec.export.onnx import PADDING_CEILING, ExportConfig, OrtScorer
from movierec.export.parity import export_and_check
from movierec.files import replaceable_folder, staged_folder
from movierec.models import SSEPT, PopularityModel
from movierec.registry.layout import (
    FORMAT,
    HISTORIES_FILE,
    ITEMS_FILE,
    METADATA_FILE,
    MODEL_FILE,
    NAME,
    REQUIRED_COLUMNS,
    TIE_TAIL_COL,
    USERS_FILE,
    BundleError,
    read_verified_metadata,
)
from movierec.training.config import TrainConfig
from movierec.training.loop import evaluate_split
from movierec.training.runner import load_run_model
from movierec.training.tracking import configure
from movierec.training.tracking import git_commit as current_git_commit

MODEL_KINDS = ("sse-pt", "sasrec", "pop")


def write_histories(interactions: Path, users: pl.DataFrame, path: Path) -> None:
    """Every user's whole sequence (train + valid + test item_idx, oldest first).

    ``tie_tail`` is how many of its newest items share its newest timestamp, which the
    service needs to score the sequence over their orders (``data.tie_orders``); positions
    follow time, so those are all the items of that timestamp.
    """
    inter = pl.read_parquet(interactions,
                            columns=[USER_IDX_COL, ITEM_IDX_COL, POSITION_COL, TIMESTAMP_COL])
    newest = pl.col(TIMESTAMP_COL) == pl.col(TIMESTAMP_COL).last()
    sequences = (inter.sort([USER_IDX_COL, POSITION_COL])
                 .group_by(USER_IDX_COL, maintain_order=True)
                 .agg(pl.col(ITEM_IDX_COL).cast(pl.Int32).alias("items"),
                      newest.sum().cast(pl.Int32).alias(TIE_TAIL_COL)))
    table = (users.select(pl.col(USER_IDX_COL).cast(pl.Int32))
             .join(sequences.with_columns(pl.col(USER_IDX_COL).cast(pl.Int32)),
                   on=USER_IDX_COL, how="left")
             .with_columns(pl.col("items").fill_null(pl.lit([], dtype=pl.List(pl.Int32))),
                           pl.col(TIE_TAIL_COL).fill_null(0))
             .sort(USER_IDX_COL))
    table.write_parquet(path)


def _model_kind(model: nn.Module, train_config: TrainConfig) -> str:
    kind = "pop" if train_config.baseline == "pop" else train_config.model.kind
    is_pop = isinstance(model, PopularityModel)
    if is_pop != (kind == "pop") or (isinstance(model, SSEPT) and model.config.kind != kind):
        raise BundleError(f"model {type(model).__name__} does not match the training config "
                          f"(baseline={train_config.baseline!r}, kind="
                          f"{train_config.model.kind!r}); pass the config it was trained with")
    return kind


def write_bundle(model: nn.Module, train_config: TrainConfig, data_dir: Path, out: Path,
                 run_id: str | None = None,
                 run_metrics: dict[str, Any] | None = None,
                 git_commit: str | None = None,
                 export_config: ExportConfig | None = None,
                 trained_at: str | None = None) -> dict[str, Any]:
    """Export, check and write a bundle of ``model`` to ``out``; return its metadata.

    Args:
        model: A trained ``SSEPT`` or ``PopularityModel``.
        train_config: The config it was trained with (kind, ``max_len``).
        data_dir: The prepared folder it was trained on.
        out: The bundle folder; an existing bundle there is replaced only after success.
        run_id: The MLflow run, when there is one.
        run_metrics: ``{"valid": {...}, "test": {...}}``; computed here when None.
        git_commit: Commit the model was trained from; the current one when None.
        export_config: Parity thresholds and opset.
        trained_at: ISO time of training; now when None.

    Raises:
        BundleError: The model does not fit the data, or ``out`` is not a bundle folder.
        ExportError: fp32 parity failed (nothing is written to ``out``); a failed int8
            model is only left out (``metadata['parity']['int8_reasons']``).
    """
    export_config = export_config or ExportConfig()
    data_dir, out = Path(data_dir), Path(out)
    if not replaceable_folder(out, METADATA_FILE):
        raise BundleError(f"{out} exists and is not a bundle: refusing to replace it "
                          "(choose an empty or new folder)")
    kind = _model_kind(model, train_config)
    model = copy.deepcopy(model).cpu().eval()
    data = load_sequences(data_dir)
    model_users = getattr(model, "n_users", data.n_users)
    if (model.n_items, model_users) != (data.n_items, data.n_users):
        raise BundleError(f"model has {model.n_items} items and {model_users} users but "
                          f"{data_dir} has {data.n_items} and {data.n_users}: pass the "
                          "prepared folder the model was trained on")
    max_len = train_config.model.max_len
    if run_metrics is None:
        run_metrics = {split: evaluate_split(model, data, train_config, torch.device("cpu"), split)
                       for split in (VALID, TEST)}
    with staged_folder(out) as tmp:
        parity = export_and_check(model, max_len, tmp, data, export_config)
        shutil.copyfile(data_dir / ITEMS_FILE, tmp / ITEMS_FILE)
        shutil.copyfile(data_dir / USERS_FILE, tmp / USERS_FILE)
        write_histories(data_dir / "interactions.parquet", data.users, tmp / HISTORIES_FILE)
        model_config = ({"max_len": max_len} if kind == "pop"
                        else train_config.model.model_dump(mode="json"))
        metadata = {
            "format": FORMAT, "name": NAME, "model_kind": kind, "model_config": model_config,
            "max_len": max_len, "n_users": data.n_users, "n_items": data.n_items,
            "data_version": data.data_version,
            "git_commit": git_commit or current_git_commit(), "run_id": run_id,
            "trained_at": trained_at or datetime.now(UTC).isoformat(timespec="seconds"),
            "metrics": {"valid": run_metrics.get("valid"), "test": run_metrics.get("test")},
            "parity": parity,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir())},
        }
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=_json_default))
        verify_bundle(tmp)
    return metadata


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _run_finished_at(run_id: str) -> str | None:
    """ISO end (or start) time of an MLflow run."""
    info = configure().get_run(run_id).info
    millis = info.end_time or info.start_time
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


def bundle_from_run(run_id: str, data_dir: Path, out: Path,
                    export_config: ExportConfig | None = None) -> dict[str, Any]:
    """Rebuild a tracked run's model from its artifacts and write its bundle to ``out``.

    Raises:
        BundleError: The run's artifacts are incomplete, or its ``data_version`` differs
            from ``data_dir``'s (a bundle must ship the tables the model was trained on).
    """
    data_dir = Path(data_dir)
    try:
        model, config, metrics, tags = load_run_model(run_id, data_dir)
    except ValueError as error:
        raise BundleError(str(error)) from error
    return write_bundle(model, config, data_dir, out, run_id=run_id,
                        run_metrics={split: unflatten_metrics(metrics, split)
                                     for split in ("valid", "test")},
                        git_commit=tags.get("git_commit"), export_config=export_config,
                        trained_at=_run_finished_at(run_id))


def _check_tables(folder: Path, n_items: int) -> None:
    for name, columns in REQUIRED_COLUMNS.items():
        try:
            schema = pl.read_parquet_schema(folder / name)
        except Exception as error:  # polars raises several error types for bad files
            raise BundleError(f"{folder / name} is not a readable parquet file: {error}") \
                from error
        missing = [c for c in columns if c not in schema]
        if missing:
            raise BundleError(f"{folder / name} lacks columns {missing}")
    rows = pl.scan_parquet(folder / ITEMS_FILE).select(pl.len()).collect().item()
    if rows != n_items:
        raise BundleError(f"{folder / ITEMS_FILE} has {rows} items, metadata says {n_items}")


def _check_model(path: Path, max_len: int, n_users: int, n_items: int) -> None:
    """ONNX Runtime loads ``path`` and scores a dummy batch with the right shape."""
    try:
        scorer = OrtScorer(path)
        if scorer.max_len != max_len:
            raise BundleError(f"{path}: seqs input has length {scorer.max_len}, metadata "
                              f"max_len is {max_len}")
        users = np.array([1, max(n_users, 1)], dtype=np.int64)
        seqs = np.zeros((2, max_len), dtype=np.int64)
        seqs[:, -1] = [1, n_items]
        scores = scorer(users, seqs)
    except BundleError:
        raise
    except Exception as error:  # onnxruntime and onnx raise their own exception types
        raise BundleError(f"{path} does not load or run in ONNX Runtime: {error}") from error
    if scores.shape != (2, n_items + 1) or scores.dtype != np.float32:
        raise BundleError(f"{path} returned {scores.dtype} {scores.shape}, expected float32 "
                          f"(2, {n_items + 1})")
    if not (np.all(scores[:, 0] <= PADDING_CEILING) and np.all(np.isfinite(scores[:, 1:]))):
        raise BundleError(f"{path} returned non-finite item scores or a padding column that "
                          "is not excluded")


def verify_bundle(folder: Path) -> dict[str, Any]:
    """Check a bundle completely and return its metadata.

    Checks: ``metadata.json`` has every key and format 1; every file exists and matches its
    sha256; no unlisted files; the tables have their key columns; every ONNX model loads in
    ONNX Runtime and maps a dummy batch of 2 to float32 [2, n_items + 1].

    Raises:
        BundleError: Naming the first file that fails and why.
    """
    folder = Path(folder)
    metadata = read_verified_metadata(folder, models=(MODEL_FILE,))
    if metadata["model_kind"] not in MODEL_KINDS:
        raise BundleError(f"bundle {folder}: model_kind {metadata['model_kind']!r} is not one "
                          f"of {MODEL_KINDS}")
    _check_tables(folder, int(metadata["n_items"]))
    for name in sorted(metadata["files"]):
        if name.endswith(".onnx"):
            _check_model(folder / name, int(metadata["max_len"]), int(metadata["n_users"]),
                         int(metadata["n_items"]))
    return metadata
