"""Prometheus metrics of one serving app (its own registry, so several apps can coexist)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
LENGTH_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
PERCENTILE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
FALLBACK_KINDS = ("no_user_embedding", "popularity")


class BatchHistogram(Collector):
    """A label-free Prometheus histogram that takes many observations in one call.

    ``/recommend`` observes every recommended item (10 per request by default): one numpy
    pass here instead of ten ``Histogram.observe`` calls on the event loop. It renders
    exactly like a ``Histogram`` (``_bucket`` with ``le``, ``_count``, ``_sum``).
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray([*sorted(buckets), float("inf")], dtype=np.float64)
        self._counts = np.zeros(self._bounds.size, dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Add each value to the first bucket whose upper bound is >= it."""
        if not values.size:
            return
        counts = np.bincount(np.searchsorted(self._bounds, values, side="left"),
                             minlength=self._bounds.size)
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The cumulative buckets, count and sum, as a ``Histogram`` exports them."""
        with self._lock:
            cumulative, total = np.cumsum(self._counts).tolist(), self._sum
        buckets = [("+Inf" if bound == float("inf") else repr(float(bound)), count)
                   for bound, count in zip(self._bounds.tolist(), cumulative, strict=True)]
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets,
                                    sum_value=total)


class ServingMetrics:
    """Every metric the service exports.

    Attributes:
        registry: The registry ``/metrics`` renders.
        request_latency: Seconds per request, by route template, method and status.
        batch_size: Requests per ONNX Runtime call.
        queue_wait: Seconds a request waited in the micro-batch queue.
        inference_latency: Seconds per micro-batch in the model: scoring and ranking (with
            the model process, the whole round trip).
        fallbacks: Requests served by a fallback, by kind (``no_user_embedding``,
            ``popularity``).
        unknown_items: Movie ids in requests that the served bundle does not know.
        recommended_popularity: Popularity percentile of each recommended item (0 = the most
            popular item, 1 = the least): a drop in personalisation shows up here.
        sequence_length: Known items in the history used per request.
        feedback_events: Feedback events stored, by event kind.
        reloads: Bundle reloads by outcome (``ok``, ``failed``).
        model_info: Always 1, labelled with the served version (a join key for dashboards).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        reg = self.registry
        ProcessCollector(registry=reg)
        GCCollector(registry=reg)
        self.request_latency = Histogram(
            "movierec_request_duration_seconds", "HTTP request latency in seconds.",
            ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram(
            "movierec_batch_size", "Requests per ONNX Runtime call.",
            buckets=BATCH_BUCKETS, registry=reg)
        self.queue_wait = Histogram(
            "movierec_queue_wait_seconds", "Seconds a request waited for its micro-batch.",
            buckets=WAIT_BUCKETS, registry=reg)
        self.inference_latency = Histogram(
            "movierec_inference_seconds", "Seconds per micro-batch in the model (score and rank).",
            buckets=LATENCY_BUCKETS, registry=reg)
        self.fallbacks = Counter(
            "movierec_fallbacks", "Requests served by a fallback, by kind.",
            ["kind"], registry=reg)
        self.unknown_items = Counter(
            "movierec_unknown_items", "Requested movie ids unknown to the served bundle.",
            registry=reg)
        self.recommended_popularity = BatchHistogram(
            "movierec_recommended_item_popularity",
            "Popularity percentile of recommended items (0 = most popular).",
            buckets=PERCENTILE_BUCKETS, registry=reg)
        self.sequence_length = Histogram(
            "movierec_sequence_length", "Known history items used per request.",
            buckets=LENGTH_BUCKETS, registry=reg)
        self.feedback_events = Counter(
            "movierec_feedback_events", "Feedback events stored, by event.",
            ["event"], registry=reg)
        self.reloads = Counter(
            "movierec_reloads", "Bundle reloads by outcome.", ["outcome"], registry=reg)
        self.model_info = Gauge(
            "movierec_model_info", "The served model (value is always 1).",
            ["version", "alias", "precision", "run_id", "data_version"], registry=reg)
        for kind in FALLBACK_KINDS:  # export zeros, so rate() works from the first scrape
            self.fallbacks.labels(kind=kind)
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome=outcome)

    def set_model(self, version: str, alias: str, precision: str, run_id: str,
                  data_version: str) -> None:
        """Label ``model_info`` with the model now served (the previous labels go)."""
        self.model_info.clear()
        self.model_info.labels(version=version, alias=alias, precision=precision,
                               run_id=run_id, data_version=data_version).set(1)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
