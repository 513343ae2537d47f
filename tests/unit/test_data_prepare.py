import json
from pathlib import Path

import polars as pl
import pytest

from movierec.data.prepare import PrepareConfig, kcore, load_card, prepare, sequence_and_split
from movierec.data.synth import SynthConfig, generate, write_synthetic
from tests.unit.data_fixtures import write_ml100k


def _frame(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                         "rating": [4.0] * len(rows), "timestamp": [r[2] for r in rows],
                         "line": list(range(1, len(rows) + 1))})


def test_sequences_are_time_ordered_with_ties_in_file_order() -> None:
    rows = [(7, 30, 50), (7, 10, 10), (7, 20, 50), (7, 40, 5), (3, 30, 1)]
    seq = sequence_and_split(_frame(rows))
    user7 = seq.filter(pl.col("user_id") == 7)
    assert user7["item_id"].to_list() == [40, 10, 30, 20]  # 30 before 20: file order at t=50
    assert user7["position"].to_list() == [0, 1, 2, 3]


def test_dense_remap_is_ordered_by_original_id_and_round_trips() -> None:
    rows = [(50, 300, 1), (50, 100, 2), (9, 200, 3), (9, 300, 4), (9, 100, 5)]
    seq = sequence_and_split(_frame(rows))
    users = dict(zip(seq["user_id"], seq["user_idx"], strict=True))
    items = dict(zip(seq["item_id"], seq["item_idx"], strict=True))
    assert users == {9: 1, 50: 2}
    assert items == {100: 1, 200: 2, 300: 3}
    back = {v: k for k, v in items.items()}
    assert [back[i] for i in seq["item_idx"]] == seq["item_id"].to_list()


def test_leave_one_out_split_and_short_users_train_only() -> None:
    rows = [(1, i, i) for i in range(1, 6)] + [(2, 1, 1), (2, 2, 2)] + [(3, 1, 1), (3, 2, 2),
                                                                      (3, 3, 3)]
    seq = sequence_and_split(_frame(rows))
    by_user = {u: g.sort("position")["split"].to_list()
               for (u,), g in seq.group_by("user_id")}
    assert by_user[1] == ["train", "train", "train", "valid", "test"]
    assert by_user[2] == ["train", "train"]
    assert by_user[3] == ["train", "valid", "test"]


def test_kcore_is_iterative() -> None:
    # user 3 has 1 interaction -> removed; then item 30 drops to 1 user -> removed; then
    # user 2 has 1 interaction -> removed.
    rows = [(1, 10, 1), (1, 20, 2), (2, 10, 1), (2, 30, 2), (3, 30, 1), (4, 10, 1),
            (4, 20, 2)]
    out, passes = kcore(_frame(rows), min_user=2, min_item=2)
    assert sorted(set(out["user_id"])) == [1, 4]
    assert sorted(set(out["item_id"])) == [10, 20]
    assert passes >= 2
    unchanged, _ = kcore(_frame(rows), 0, 0)
    assert unchanged.height == len(rows)


def test_prepare_writes_card_tables_and_stable_version(tmp_path: Path) -> None:
    ratings = [f"{u}\t{i}\t{3 + (u + i) % 3}\t{100 * i + u}" for u in (1, 2) for i in (1, 2, 3)]
    src = write_ml100k(tmp_path / "ml-100k", ratings)
    card = prepare(PrepareConfig(dataset="ml-100k"), tmp_path / "out", source=src)
    again = prepare(PrepareConfig(dataset="ml-100k"), tmp_path / "out2", source=src)
    implicit = prepare(PrepareConfig(dataset="ml-100k", min_rating=4), tmp_path / "o3",
                       source=src)
    assert card["data_version"] == again["data_version"] != implicit["data_version"]
    assert len(card["data_version"]) == 16
    # The demographics feed the evaluation's slices: another age is another version.
    users = (src / "u.user").read_text()
    (src / "u.user").write_text(users.replace("1|24|", "1|25|", 1))
    assert users != (src / "u.user").read_text()
    older = prepare(PrepareConfig(dataset="ml-100k"), tmp_path / "o4", source=src)
    assert older["data_version"] != card["data_version"]
    assert load_card(tmp_path / "out") == json.loads((tmp_path / "out/dataset.json").read_text())
    for key in ("users", "items", "interactions", "train_interactions", "valid_users",
                "test_users"):
        assert key in card
    assert (card["users"], card["items"], card["interactions"]) == (2, 3, 6)
    assert (card["valid_users"], card["test_users"], card["train_interactions"]) == (2, 2, 2)
    assert card["source"]["sha256"] and card["source"]["layout"] == "ml-100k"
    items = pl.read_parquet(tmp_path / "out/items.parquet")
    assert items["item_idx"].to_list() == [1, 2, 3]
    assert items["train_count"].sum() == card["train_interactions"]
    users = pl.read_parquet(tmp_path / "out/users.parquet")
    assert users["occupation"].to_list() == ["technician", "other"]
    assert implicit["filtering"]["below_rating"] > 0


def test_prepare_failure_leaves_previous_output_intact(tmp_path: Path) -> None:
    src = write_ml100k(tmp_path / "ml-100k", ["1\t1\t5\t1", "1\t2\t5\t2", "1\t3\t5\t3"])
    prepare(PrepareConfig(dataset="ml-100k"), tmp_path / "out", source=src)
    before = (tmp_path / "out/dataset.json").read_text()
    (src / "u.data").write_text("1\t1\t5\t1\n1\t2\t50\t2\n")
    with pytest.raises(ValueError, match="rating"):
        prepare(PrepareConfig(dataset="ml-100k"), tmp_path / "out", source=src)
    assert (tmp_path / "out/dataset.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_prepare_never_replaces_a_folder_that_is_not_a_prepared_dataset(
        tmp_path: Path) -> None:
    import os
    import stat
    import zipfile

    src = write_ml100k(tmp_path / "ml-100k", ["1\t1\t5\t1", "1\t2\t5\t2", "1\t3\t5\t3"])
    precious = tmp_path / "datasets"
    (precious / "mine").mkdir(parents=True)
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not a prepared dataset"):
        prepare(PrepareConfig(dataset="ml-100k"), precious, source=src)
    assert (precious / "notes.txt").read_text() == "keep me" and (precious / "mine").is_dir()
    # New, empty and earlier prepared folders are fine; the result honours the umask.
    (tmp_path / "empty").mkdir()
    old = os.umask(0o022)
    try:
        for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "new"):
            prepare(PrepareConfig(dataset="ml-100k"), out, source=src)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # Another zip of the same name is extracted on its own, not served from the first.
    archives = []
    for n, ratings in enumerate((["1\t1\t5\t1", "1\t2\t5\t2", "1\t3\t5\t3"],
                                 ["1\t1\t5\t3", "1\t2\t5\t2", "1\t3\t5\t1"])):
        folder = write_ml100k(tmp_path / f"v{n}" / "ml-100k", ratings)
        archive = tmp_path / f"v{n}" / "ml-100k.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for file in folder.iterdir():
                zipped.write(file, f"ml-100k/{file.name}")
        archives.append(archive)
    cards = [prepare(PrepareConfig(dataset="ml-100k"), tmp_path / f"z{n}", source=archive)
             for n, archive in enumerate(archives)]
    assert cards[0]["data_version"] != cards[1]["data_version"]  # the second zip's order
    again = prepare(PrepareConfig(dataset="ml-100k"), tmp_path / "z2", source=archives[0])
    assert again["data_version"] == cards[0]["data_version"]


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        PrepareConfig(dataset="ml-100k", min_ratings=4)  # type: ignore[call-arg]


def test_synthetic_data_is_canonical_and_seeded(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = SynthConfig(interactions=5_000, seed=3)
    a, b = generate(config), generate(config)
    assert a["interactions"].equals(b["interactions"])
    assert a["interactions"].height == 5_000
    sizes = write_synthetic(config, tmp_path / "syn")
    card = prepare(PrepareConfig(dataset="canonical"), tmp_path / "out", source=tmp_path / "syn")
    assert card["interactions"] == sizes["interactions"] == 5_000
    assert card["validation"]["rows_dropped"] == 0
    assert card["test_users"] == card["users"] == sizes["users"]
    # Zipf popularity: the most popular item is far above the median item.
    counts = a["interactions"]["item_id"].value_counts()["count"]
    assert counts.max() > 5 * counts.median()
    # Written whole over an earlier synthetic folder; a folder of other files is refused.
    assert write_synthetic(SynthConfig(interactions=600, seed=1), tmp_path / "syn")["users"] == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a canonical folder"):
        write_synthetic(config, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    with pytest.raises(ValueError, match="not the current directory"):
        write_synthetic(config, Path("."))
