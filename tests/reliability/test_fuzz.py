"""API fuzzing (a short schemathesis run), bad MovieLens files, and the schema fixes it found."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from movierec.reliability.fuzz import LiveService, fuzz_api, fuzz_data, serve
from movierec.serving.schemas import MAX_ID, RecommendRequest
from tests.unit.test_serving_bundle import make_bundle


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    root = tmp_path_factory.mktemp("fuzz")
    with serve(make_bundle(root / "bundle"), root / "home",
               extra_args=("--threads", "1")) as live:
        yield live


def test_short_schemathesis_run_finds_no_5xx_and_no_schema_break(service: LiveService) -> None:
    report = fuzz_api(service.url, examples_per_operation=16)
    paths = httpx.get(service.url + "/openapi.json").json()["paths"]
    every_route = {f"{m.upper()} {p}" for p, ops in paths.items() for m in ops}
    assert set(report["operations"]) == every_route
    assert report["requests"] >= 150
    assert report["server_errors"] == 0
    assert report["schema_violations"] == 0
    assert report["check_failures"] == {}, report["failure_samples"]
    assert report["ok"]
    assert "5" not in {s[0] for s in report["by_status"]}


def test_integral_floats_are_integers_strings_and_fractions_are_not() -> None:
    # Found by the fuzzer: JSON Schema's "integer" includes 3.0, so 422 broke the contract.
    body = RecommendRequest.model_validate({"user_id": 5.0, "sequence": [1.0], "top_k": 3.0})
    assert (body.user_id, body.sequence, body.top_k) == (5, [1], 3)
    for bad in ({"top_k": "3"}, {"top_k": 2.5}, {"top_k": True}, {"user_id": -1.0},
                {"user_id": float(MAX_ID + 1)}):
        with pytest.raises(ValueError):
            RecommendRequest.model_validate(bad)
    bounds = RecommendRequest.model_json_schema()["properties"]["sequence"]["anyOf"][0]["items"]
    assert (bounds["minimum"], bounds["maximum"]) == (0, MAX_ID)


def test_bad_movielens_files_give_one_clear_line_and_lenient_keeps_good_rows(
        tmp_path: Path) -> None:
    report = fuzz_data(tmp_path)
    assert report["count"] >= 15
    assert report["failed"] == [], {n: report["cases"][n]["problems"] for n in report["failed"]}
    cases = report["cases"]
    assert "u.data line 7" in cases["huge_field"]["strict_error"]
    assert "not valid UTF-8" in cases["latin1_byte_in_field"]["strict_error"]
    assert cases["truncated_line"]["lenient_exit"] == 0
    assert "u.item line 3" in cases["bad_item_id_in_metadata"]["strict_error"]
    assert "no valid row is left" in cases["utf16_file"]["lenient_error"]
