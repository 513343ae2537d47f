from pathlib import Path

import polars as pl
import pytest

from movierec.data.movielens import parse_folder
from movierec.data.validate import DataValidationError, validate
from tests.unit.data_fixtures import write_ml100k

GOOD = ["1\t1\t5\t100", "1\t2\t3\t200", "2\t3\t4\t150"]


@pytest.mark.parametrize(("bad_line", "rule", "message"), [
    ("0\t1\t5\t300", "bad_user_id", r"u.data line 4: user id missing or not a positive"),
    ("1\t-3\t5\t300", "bad_item_id", r"u.data line 4: item id"),
    ("1\t1\t7\t300", "rating_out_of_range", r"u.data line 4: rating missing or outside.*=7"),
    ("1\t1\t0\t300", "rating_out_of_range", r"u.data line 4"),
    ("1\t1\t\t300", "rating_out_of_range", r"u.data line 4"),
    ("1\t1\t5\t-1", "bad_timestamp", r"u.data line 4: timestamp missing, negative or in"),
    ("1\t1\t5\t", "bad_timestamp", r"u.data line 4"),
    ("1\t1\t5\t881250949000", "bad_timestamp", r"in the future \(milliseconds"),
    ("1\t1\t2\t100", "duplicate_interaction", r"u.data line 4: repeats an earlier"),
    ("1\t99\t5\t300", "item_without_metadata", r"u.data line 4: item id absent"),
    ("1\t1\t5", "malformed_line", r"u.data line 4: line cannot be split"),
])
def test_each_rule_fires_strictly_and_leniently(tmp_path: Path, bad_line: str, rule: str,
                                                message: str) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", [*GOOD, bad_line])
    with pytest.raises(DataValidationError, match=message) as caught:
        validate(parse_folder(folder), strict=True)
    assert "--lenient" in str(caught.value)
    assert caught.value.report.rules[rule].count == 1

    clean, report = validate(parse_folder(folder, lenient=True), strict=False)
    assert report.rules[rule].count == 1
    assert report.rules[rule].examples[0].startswith("u.data line 4")
    assert report.rows_dropped == 1 and clean.height == 3
    assert clean["line"].to_list() == [1, 2, 3]  # every good row kept


def test_clean_data_passes_every_rule(tmp_path: Path) -> None:
    clean, report = validate(parse_folder(write_ml100k(tmp_path / "d", GOOD)))
    assert clean.height == 3 and report.violations == 0
    assert "all 7 rules passed" in report.summary()


def test_lenient_counts_every_rule_and_keeps_the_first_duplicate(tmp_path: Path) -> None:
    lines = [*GOOD, "1\t1\t5\t100", "1\t1\t5\t100", "0\t1\t5\t1", "1\t1\t9\t5"]
    clean, report = validate(parse_folder(write_ml100k(tmp_path / "d", lines)), strict=False)
    assert report.rules["duplicate_interaction"].count == 2
    assert report.rules["bad_user_id"].count == 1
    assert report.rules["rating_out_of_range"].count == 1
    assert clean["line"].to_list() == [1, 2, 3]
    assert report.rows_dropped == 4
    assert "dropped 4" in report.summary()


def test_a_repeat_of_a_rejected_row_is_kept(tmp_path: Path) -> None:
    # The first copy has a rating out of range; the second is the valid row, not a repeat.
    folder = write_ml100k(tmp_path / "ml-100k", [*GOOD, "1\t1\t9\t500", "1\t1\t4\t500"])
    clean, report = validate(parse_folder(folder), strict=False)
    assert report.rules["rating_out_of_range"].count == 1
    assert report.rules["duplicate_interaction"].count == 0
    assert clean.filter((pl.col("user_id") == 1) & (pl.col("timestamp") == 500)).height == 1


def test_blank_lines_at_the_end_are_not_rows(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml-100k", GOOD)
    data = folder / "u.data"
    data.write_text(data.read_text() + "\n  \n\n")  # an editor's trailing blank lines
    clean, report = validate(parse_folder(folder), strict=True)
    assert clean.height == len(GOOD) and report.rows_read == len(GOOD)
