from pathlib import Path

import polars as pl
import pytest

from movierec.data.movielens import Layout, ParseError, detect_layout, parse_folder, unpack
from tests.unit.data_fixtures import write_atomic, write_csv, write_ml1m, write_ml100k, zip_folder

RATINGS_TAB = ["1\t1\t5\t100", "1\t2\t3\t200", "2\t3\t4\t150"]


def test_ml100k_parses_items_users_and_latin1(tmp_path: Path) -> None:
    tables = parse_folder(write_ml100k(tmp_path / "ml-100k", RATINGS_TAB))
    assert tables.layout is Layout.ML100K
    assert tables.interactions.select("user_id", "item_id", "rating", "timestamp").rows() == [
        (1, 1, 5.0, 100), (1, 2, 3.0, 200), (2, 3, 4.0, 150)]
    assert tables.interactions["line"].to_list() == [1, 2, 3]
    items = {r["item_id"]: r for r in tables.items.to_dicts()}
    assert items[1]["title"] == "Toy Story" and items[1]["year"] == 1995
    assert items[1]["genres"] == ["Animation", "Children's", "Comedy"]
    assert items[3]["title"] == "Café"
    assert tables.users is not None and tables.users["occupation"].to_list() == ["technician",
                                                                                 "other"]


def test_ml1m_double_colon_and_users(tmp_path: Path) -> None:
    tables = parse_folder(write_ml1m(tmp_path / "ml-1m", ["1::1::5::978300760",
                                                          "2::2::3::978302109"]))
    assert tables.layout is Layout.DAT
    assert tables.interactions["item_id"].to_list() == [1, 2]
    assert tables.items.filter(pl.col("item_id") == 2)["title"].item() == "Café Society"
    assert tables.users is not None and tables.users["age"].to_list() == [1, 56]


def test_csv_quoted_titles_and_no_genres(tmp_path: Path) -> None:
    tables = parse_folder(write_csv(tmp_path / "ml-latest-small",
                                    ["1,1,4.5,964982703", "1,2,0.5,964981247"]))
    assert tables.layout is Layout.CSV
    assert tables.interactions["line"].to_list() == [2, 3]  # line 1 is the header
    items = {r["item_id"]: r for r in tables.items.to_dicts()}
    assert items[2]["title"] == "American President, The" and items[2]["year"] == 1995
    assert items[3]["genres"] == [] and items[3]["year"] is None


def test_atomic_typed_headers(tmp_path: Path) -> None:
    tables = parse_folder(write_atomic(tmp_path / "tiny", ["1\t1\t3\t881250949.0"]))
    assert tables.layout is Layout.ATOMIC
    assert tables.interactions["timestamp"].dtype == pl.Int64
    assert tables.interactions["timestamp"].item() == 881250949
    assert tables.items["genres"][0].to_list() == ["Animation", "Children's", "Comedy"]


def test_zip_is_extracted_once_and_found_in_subfolder(tmp_path: Path) -> None:
    folder = write_csv(tmp_path / "src" / "ml-latest-small", ["1,1,4,1"])
    archive = zip_folder(folder, tmp_path / "ml-latest-small.zip")
    extracted = unpack(archive, tmp_path / "work")
    layout, marker = detect_layout(extracted)
    assert layout is Layout.CSV and marker.name == "ratings.csv"
    assert unpack(archive, tmp_path / "work") == extracted


def test_malformed_lines_are_flagged_with_exact_line_numbers(tmp_path: Path) -> None:
    ratings = ["1\t1\t5\t100", "1\t2\tfive\t200", "", "2\t3\t4", "2\t1\t4\t300\textra",
               "2\t2\t4\t400"]
    tables = parse_folder(write_ml100k(tmp_path / "ml-100k", ratings), lenient=True)
    frame = tables.interactions
    assert frame.height == 6  # nothing is dropped by the parser
    assert frame.filter(pl.col("malformed"))["line"].to_list() == [2, 3, 4, 5]
    assert frame.filter(~pl.col("malformed"))["line"].to_list() == [1, 6]


def test_bad_encoding_names_the_line(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", RATINGS_TAB)
    (folder / "u.data").write_bytes(b"1\t1\t5\t100\n1\t2\t3\xff\t200\n")
    with pytest.raises(ParseError, match=r"u.data line 2: not valid UTF-8"):
        parse_folder(folder)


def test_empty_file_and_unknown_folder_are_clear_errors(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", RATINGS_TAB)
    (folder / "u.data").write_text("")
    with pytest.raises(ParseError, match=r"u\.data: file is empty"):
        parse_folder(folder)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ParseError, match="no MovieLens files found"):
        parse_folder(tmp_path / "nothing")


def test_missing_metadata_file_is_named(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", RATINGS_TAB)
    (folder / "u.item").unlink()
    with pytest.raises(ParseError, match=r"missing: u\.item"):
        parse_folder(folder)
    # The canonical layout too (polars names no file in its error).
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    pl.DataFrame({"user_id": [1], "item_id": [1], "rating": [4.0], "timestamp": [1]}
                 ).write_parquet(canonical / "interactions.parquet")
    with pytest.raises(ParseError, match=r"a required file is missing: .*items\.parquet"):
        parse_folder(canonical)


def test_a_metadata_line_with_missing_fields_is_named(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", RATINGS_TAB)
    lines = (folder / "u.item").read_bytes().decode("latin-1").splitlines()
    lines[1] = "2|Broken"  # would have read as a movie without genres
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(ParseError, match=r"u\.item line 2: 2 fields .* expected 24"):
        parse_folder(folder)


def test_an_item_listed_twice_in_the_metadata_is_named(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", RATINGS_TAB)
    lines = (folder / "u.item").read_bytes().decode("latin-1").splitlines()
    lines.append(lines[1])  # item 2 again
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(ParseError, match=r"lists 1 item id\(s\) more than once \(\[2\]\)"):
        parse_folder(folder)


@pytest.mark.parametrize("header", ["movieId,userId,rating,timestamp", "1,1,4.0,100"])
def test_a_csv_header_in_another_order_or_missing_is_refused(tmp_path: Path,
                                                             header: str) -> None:
    folder = write_csv(tmp_path / "ml-latest-small", ["1,2,4.0,100", "2,1,3.5,200"])
    ratings = folder / "ratings.csv"
    lines = ratings.read_text().splitlines()
    ratings.write_text("\n".join([header, *lines[1:]]) + "\n")  # columns swapped, or no header
    with pytest.raises(ParseError, match="expected 'userId,movieId,rating,timestamp'"):
        parse_folder(folder)


def test_ratings_dat_with_a_broken_separator_is_malformed(tmp_path: Path) -> None:
    # Seven ':'-fields read as user 1, item 3, rating 5, time 7 before the '::' were checked.
    folder = write_ml1m(tmp_path / "ml-1m", ["1::1::5::978300760", "1:2:3:4:5:6:7"])
    frame = parse_folder(folder, lenient=True).interactions
    assert frame["malformed"].to_list() == [False, True]
    assert frame["raw"].to_list() == [None, "1:2:3:4:5:6:7"]


def test_a_malformed_line_is_quoted_as_it_is_in_the_file(tmp_path: Path) -> None:
    from movierec.data.validate import DataValidationError, validate

    folder = write_ml100k(tmp_path / "ml-100k", ["1\t1\t5\t100", "1\t2x\t3\t200"])
    with pytest.raises(DataValidationError, match=r"u.data line 2: .* \('1\\t2x\\t3\\t200'\)"):
        validate(parse_folder(folder))


def test_canonical_parquet_ids_and_times_lose_nothing_silently(tmp_path: Path) -> None:
    from movierec.data.validate import DataValidationError, validate

    folder = write_ml100k(tmp_path / "ml-100k", RATINGS_TAB)
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    parse_folder(folder).items.write_parquet(canonical / "items.parquet")
    frame = pl.DataFrame({"user_id": [1.0, 2.5, 3.0], "item_id": [1.0, 2.0, float("nan")],
                          "rating": [4.0, 4.0, 4.0], "timestamp": [100, 200, 2**53 + 1]})
    frame.write_parquet(canonical / "interactions.parquet")
    tables = parse_folder(canonical)
    inter = tables.interactions
    # 2.5 is no user and NaN no item: malformed rows, not users 2 and 0.
    assert inter["malformed"].to_list() == [False, True, True]
    assert inter["raw"][1] == "user_id=2.5, item_id=2.0"
    # An integer timestamp is kept exactly (a Float64 round trip made it 2**53).
    assert inter["timestamp"][2] == 2**53 + 1
    with pytest.raises(DataValidationError, match=r"interactions.parquet line 2: .*'user_id=2.5"):
        validate(tables)
    frame.with_columns(pl.col("user_id").cast(pl.String)).write_parquet(
        canonical / "interactions.parquet")
    with pytest.raises(ParseError, match="column user_id is String; expected numbers"):
        parse_folder(canonical)
