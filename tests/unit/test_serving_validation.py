"""Bad input never causes a 5xx: property-based bodies for every POST route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from movierec.serving.app import ServeSettings, create_app
from tests.unit.test_serving_bundle import make_bundle, movie_id

ROUTES = ("/recommend", "/predict", "/feedback")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)
# Mostly-right bodies with one field wrong, which reach deeper validation paths.
near_recommend = st.fixed_dictionaries({}, optional={
    "user_id": json_values, "sequence": json_values | st.lists(json_values, max_size=5),
    "top_k": json_values | st.integers(-5, 200), "exclude_seen": json_values,
    "extra": json_values})
near_feedback = st.fixed_dictionaries({"events": st.lists(st.fixed_dictionaries({}, optional={
    "user_id": json_values | st.integers(0, 10**6), "movie_id": json_values,
    "event": st.sampled_from(["watch", "click", "impression", "buy"]) | json_values,
    "timestamp": st.integers(-10, 10**13) | json_values}), max_size=3)})
FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("validation")
    app = create_app(ServeSettings(bundle=make_bundle(root / "b"), threads=1,
                                   feedback_url=str(root / "fb.db"), max_sequence_length=50))
    with TestClient(app) as test_client:
        yield test_client


def _check(response_status: int, body: dict[str, object] | None) -> None:
    assert response_status < 500
    if response_status == 422 and body is not None:
        assert isinstance(body.get("message"), str) and body["message"]


@FAST
@given(route=st.sampled_from(ROUTES), body=json_values)
def test_any_json_body_is_never_5xx(client: TestClient, route: str, body: object) -> None:
    response = client.post(route, json=body)
    _check(response.status_code, response.json())


@FAST
@given(body=near_recommend)
def test_recommend_near_misses(client: TestClient, body: dict[str, object]) -> None:
    response = client.post("/recommend", json=body)
    _check(response.status_code, response.json())


@FAST
@given(body=near_feedback)
def test_feedback_near_misses(client: TestClient, body: dict[str, object]) -> None:
    response = client.post("/feedback", json=body)
    _check(response.status_code, response.json())


@FAST
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=200),
       content_type=st.sampled_from(["application/json", "text/plain", None]))
def test_raw_bytes_are_never_5xx(client: TestClient, route: str, raw: bytes,
                                 content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(route, content=raw, headers=headers)
    assert response.status_code < 500


@pytest.mark.parametrize(("body", "fragment"), [
    ({"top_k": 101}, "'top_k': Input should be less than or equal to 100 (got 101)"),
    ({"top_k": "5"}, "'top_k': Input should be a valid integer"),
    ({"user_id": 1.5}, "'user_id'"),
    ({"sequence": [1, "x"]}, "'sequence.1'"),
    ({"sequence": [-1]}, "greater than or equal to 0"),
    ({"usr_id": 3}, "unknown field 'usr_id'"),
])
def test_messages_name_the_field(client: TestClient, body: dict[str, object],
                                 fragment: str) -> None:
    response = client.post("/recommend", json=body)
    assert response.status_code == 422
    assert fragment in response.json()["message"]


def test_malformed_and_mistyped_bodies(client: TestClient) -> None:
    broken = client.post("/recommend", content=b"{not json",
                         headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "not valid JSON" in broken.json()["message"]
    plain = client.post("/recommend", content=b'{"user_id": 1}')
    assert plain.status_code == 422 and "Content-Type: application/json" in \
        plain.json()["message"]
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        odd = client.post("/recommend", content=b'{"user_id": ' + token + b', "top_k": 3}',
                          headers={"content-type": "application/json"})
        assert odd.status_code == 422, token
    deep = client.post("/recommend", content=b"[" * 5000 + b"]" * 5000,
                       headers={"content-type": "application/json"})
    assert 400 <= deep.status_code < 500


def test_feedback_limits(client: TestClient) -> None:
    event = {"user_id": 1, "movie_id": movie_id(1), "event": "watch", "timestamp": 1}
    assert client.post("/feedback", json={"events": []}).status_code == 422
    too_many = client.post("/feedback", json={"events": [event] * 1001})
    assert too_many.status_code == 422
    assert client.post("/feedback", json={"events": [event] * 1000}).json() == {
        "accepted": 1000, "duplicates": 0}
    millis = client.post("/feedback", json={"events": [{**event, "timestamp": 1.7e12}]})
    assert millis.status_code == 422
    millis = client.post("/feedback", json={"events": [{**event, "timestamp": 1_700_000_000_000}]})
    assert "less than or equal to 10000000000" in millis.json()["message"]
    assert client.post("/feedback", json={"events": [{**event, "event": "buy"}]}
                       ).status_code == 422


def test_path_and_query_validation(client: TestClient) -> None:
    assert client.get("/users/abc/history").status_code == 422
    assert client.get("/users/-1/history").status_code == 422
    assert client.get("/users/1/history", params={"limit": 0}).status_code == 422
    assert client.get(f"/users/{2**64}/history").status_code == 422

