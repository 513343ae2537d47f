from pathlib import Path

import polars as pl

from movierec.cli.main import main
from movierec.data.prepare import load_card


def test_prepare_ml100k_matches_the_published_counts(tmp_path: Path, ml100k_dir: Path) -> None:
    out = tmp_path / "ml-100k"
    assert main(["data", "prepare", "--dataset", "ml-100k", "--source", str(ml100k_dir),
                 "--out", str(out)]) == 0
    card = load_card(out)
    assert (card["users"], card["items"], card["interactions"]) == (943, 1682, 100_000)
    assert (card["valid_users"], card["test_users"]) == (943, 943)
    assert card["train_interactions"] == 100_000 - 2 * 943
    assert card["validation"]["rows_dropped"] == 0
    inter = pl.read_parquet(out / "interactions.parquet")
    # Test is each user's latest interaction, valid the one before.
    last = inter.group_by("user_idx").agg(pl.col("split").sort_by("position").last())
    assert set(last["split"].cast(str)) == {"test"}
    assert inter["user_idx"].max() == 943 and inter["item_idx"].max() == 1682
    assert inter["user_idx"].min() == 1 and inter["item_idx"].min() == 1
    # Same input, same version, whatever the output folder.
    assert main(["data", "prepare", "--dataset", "ml-100k", "--source", str(ml100k_dir),
                 "--out", str(tmp_path / "again")]) == 0
    assert load_card(tmp_path / "again")["data_version"] == card["data_version"]
