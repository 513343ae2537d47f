"""bench/data_pipeline.py's pandas baseline writes what ``movierec data prepare`` writes.

The benchmark's speed-up only means something if both sides do the same work, so the
baseline is checked here table by table, and the check itself is shown to catch a change.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from data_pipeline_workers import (
    work_movierec,
    work_pandas,
    work_synth,
    work_verify,
    workdir_paths,
)

SIZE = 5_000


def test_the_pandas_baseline_matches_the_library_and_a_changed_value_is_caught(
        tmp_path: Path) -> None:
    work_synth(SIZE, tmp_path)
    ours, theirs = work_movierec(SIZE, tmp_path), work_pandas(SIZE, tmp_path)
    assert ours["counts"] == theirs["counts"]
    assert ours["counts"]["interactions"] == SIZE
    assert ours["data_version"] == theirs["data_version"]
    verdict = work_verify(SIZE, tmp_path)
    assert {table: v["identical"] for table, v in verdict.items()} == {
        "interactions": True, "items": True, "users": True}

    pandas_out = workdir_paths(tmp_path, SIZE)["pandas"] / "interactions.parquet"
    table = pl.read_parquet(pandas_out)
    table.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(pl.col("rating") + 0.5)
                       .otherwise(pl.col("rating")).alias("rating")).write_parquet(pandas_out)
    verdict = work_verify(SIZE, tmp_path)
    assert verdict["interactions"] == {"identical": False, "diffs": ["column rating differs"],
                                       "rows": SIZE}
    assert verdict["items"]["identical"]
