"""The service's own drift gauges (what Prometheus alerts on in the cluster)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from movierec.serving.catalog import Catalog
from movierec.serving.drift import MIN_EVENTS, DriftGauges
from movierec.serving.metrics import ServingMetrics
from tests.unit.test_serving_api import make_client
from tests.unit.test_serving_bundle import make_bundle


def _catalog(n_items: int = 100) -> Catalog:
    counts = np.arange(n_items, 0, -1)  # item 1 most popular
    idx = np.arange(1, n_items + 1)
    items = pl.DataFrame({"item_idx": idx, "item_id": idx * 10,
                          "train_count": counts, "title": ["t"] * n_items,
                          "year": [2000] * n_items, "genres": [["Drama"]] * n_items})
    users = pl.DataFrame({"user_id": [1, 2], "user_idx": [1, 2]})
    histories = {1: np.arange(1, 51), 2: np.arange(1, 51)}
    return Catalog(items, users, histories, n_items)


def _gauge(metrics: ServingMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None
    return value


def test_gauges_follow_the_served_traffic() -> None:
    metrics = ServingMetrics()
    drift = DriftGauges(metrics)
    catalog = _catalog()
    drift.reset(catalog)
    rng = np.random.default_rng(0)
    counts = catalog.train_count[1:].astype(float)
    like_training = rng.choice(np.arange(1, 101), size=MIN_EVENTS * 5, p=counts / counts.sum())
    for _ in range(MIN_EVENTS * 5):
        metrics.sequence_length.observe(50)
    drift.observe(like_training, 0)
    drift.refresh()
    assert _gauge(metrics, "movierec_drift_psi") < 0.05
    assert _gauge(metrics, "movierec_drift_ks") == pytest.approx(0.0)
    assert _gauge(metrics, "movierec_drift_unknown_item_rate") == 0.0

    psi_before = _gauge(metrics, "movierec_drift_psi")
    drift.reset(catalog)  # a reload: a new comparison, earlier requests do not count
    # The last bundle's verdict goes with it: no verdict until enough new events.
    assert psi_before > 0 and _gauge(metrics, "movierec_drift_psi") == 0.0
    assert _gauge(metrics, "movierec_drift_events") == 0.0
    for _ in range(MIN_EVENTS * 2):
        metrics.sequence_length.observe(2)
    drift.observe(np.arange(80, 101).repeat(10), MIN_EVENTS)
    drift.refresh()
    assert _gauge(metrics, "movierec_drift_psi") > 0.2
    assert _gauge(metrics, "movierec_drift_ks") == pytest.approx(1.0)
    assert _gauge(metrics, "movierec_drift_unknown_item_rate") == pytest.approx(
        MIN_EVENTS / (210 + MIN_EVENTS))
    # What `movierec monitor drift` reads: only the requests since the reload, while the
    # histogram itself counts since the process started.
    from prometheus_client import generate_latest

    from movierec.monitoring.collect import length_histogram

    buckets = length_histogram(generate_latest(metrics.registry).decode())
    assert buckets[float("inf")] == MIN_EVENTS * 2 and buckets[10.0] == MIN_EVENTS * 2
    assert metrics.registry.get_sample_value(
        "movierec_sequence_length_count") == MIN_EVENTS * 7


def test_watches_without_requests_give_no_length_verdict() -> None:
    metrics = ServingMetrics()
    drift = DriftGauges(metrics)
    drift.reset(_catalog())
    drift.observe(np.arange(1, 101).repeat(2), 0)  # feedback only, no /recommend since
    drift.refresh()
    assert _gauge(metrics, "movierec_drift_events") == 200
    assert _gauge(metrics, "movierec_drift_ks") == 0.0  # not 1.0 from an empty histogram


def test_no_verdict_on_little_traffic() -> None:
    metrics = ServingMetrics()
    drift = DriftGauges(metrics)
    drift.reset(_catalog())
    drift.observe(np.array([100, 100]), 5)
    drift.refresh()
    assert _gauge(metrics, "movierec_drift_events") == 7
    assert _gauge(metrics, "movierec_drift_psi") == 0.0


def test_the_service_exports_drift_gauges_from_its_feedback(tmp_path: Path) -> None:
    """Watches through /feedback move the gauges on /metrics (what Prometheus alerts on)."""
    bundle = make_bundle(tmp_path / "bundle")
    with make_client(bundle, tmp_path) as client:
        reply = client.post("/recommend", json={"top_k": 1}).json()
        movie = reply["items"][0]["movie_id"]
        events = [{"user_id": 1, "movie_id": movie, "event": "watch", "timestamp": i}
                  for i in range(MIN_EVENTS)]
        events.append({"user_id": 1, "movie_id": 999_999, "event": "watch", "timestamp": 0})
        assert client.post("/feedback", json={"events": events}).status_code == 200
        text = client.get("/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("movierec_drift_")}
    assert values["movierec_drift_events"] == MIN_EVENTS + 1
    assert values["movierec_drift_unknown_item_rate"] == pytest.approx(1 / (MIN_EVENTS + 1))
    assert values["movierec_drift_psi"] > 0.2  # one movie watched 100 times: far from training
