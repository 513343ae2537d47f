"""Drift gauges the service exports itself, so Prometheus can alert on them in the cluster.

The same statistics as ``movierec monitor drift`` (``movierec.monitoring.drift``, numpy
only: no torch at serving time), computed live against the served bundle's training data:
item-popularity PSI of accepted watches, KS distance of request history lengths (from the
service's own ``movierec_sequence_length`` histogram) and the unknown-item rate of watches.
A reload starts a new comparison (the new bundle has new training data).
"""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client import Gauge, Histogram

from movierec.monitoring.drift import (
    DECILES,
    SINCE_LOAD_METRIC,
    cdf_at,
    ks_from_cdfs,
    popularity_deciles,
    psi,
)
from movierec.serving.catalog import Catalog
from movierec.serving.metrics import ServingMetrics

MIN_EVENTS = 100  # fewer watches (or requests, for KS): the gauges stay 0 (no verdict on noise)


class DriftGauges:
    """``movierec_drift_psi``, ``movierec_drift_ks``, ``movierec_drift_unknown_item_rate``."""

    def __init__(self, metrics: ServingMetrics) -> None:
        reg = metrics.registry
        self._lengths = metrics.sequence_length
        self.psi = Gauge("movierec_drift_psi", "Item-popularity PSI of watches vs training.",
                         registry=reg)
        self.ks = Gauge("movierec_drift_ks", "KS distance of request history lengths vs "
                        "training histories.", registry=reg)
        self.unknown = Gauge("movierec_drift_unknown_item_rate",
                             "Share of watched movies the served bundle does not know.",
                             registry=reg)
        self.events = Gauge("movierec_drift_events", "Watches compared since the bundle "
                            "was loaded.", registry=reg)
        # movierec_sequence_length counts since the process started, across reloads; this is
        # its share since the served bundle loaded (cumulative, as a histogram's buckets),
        # what `movierec monitor drift` compares with the bundle's training histories.
        self.lengths_since_load = Gauge(
            SINCE_LOAD_METRIC, "Requests per history-length bucket since the bundle was "
            "loaded (cumulative: at most `upto` items).", ["upto"], registry=reg)
        self._lock = threading.Lock()
        self._deciles = np.zeros(0, dtype=np.int64)
        self._expected = np.zeros(DECILES)
        self._train_lengths = np.zeros(0)
        self._watched = np.zeros(DECILES)
        self._unknown = 0
        self._length_offset: dict[float, float] = {}

    def reset(self, catalog: Catalog) -> None:
        """Compare against ``catalog``'s training data from now on."""
        counts = catalog.train_count[1:].astype(np.float64)
        with self._lock:
            self._deciles = popularity_deciles(counts)
            self._expected = np.bincount(self._deciles, weights=counts, minlength=DECILES)
            self._train_lengths = np.asarray([h.size for h in catalog.histories.values()])
            self._watched = np.zeros(DECILES)
            self._unknown = 0
            self._length_offset = _buckets(self._lengths)
            for gauge in (self.psi, self.ks, self.unknown, self.events):
                gauge.set(0)  # the last bundle's verdict is not this one's
            for le in self._length_offset:
                self.lengths_since_load.labels(upto=_label(le)).set(0)

    def observe(self, known_items: np.ndarray, unknown: int) -> None:
        """Count accepted watches: item indices the bundle knows, and unknown movies."""
        with self._lock:
            if known_items.size and self._deciles.size:
                np.add.at(self._watched, self._deciles[known_items - 1], 1)
            self._unknown += unknown

    def refresh(self) -> None:
        """Recompute the gauges (called before ``/metrics`` renders)."""
        with self._lock:
            now = _buckets(self._lengths)
            since = {le: now[le] - self._length_offset.get(le, 0.0) for le in now}
            for le, count in since.items():
                self.lengths_since_load.labels(upto=_label(le)).set(count)
            total = self._watched.sum() + self._unknown
            self.events.set(total)
            if total < MIN_EVENTS:
                return
            self.psi.set(psi(self._expected, self._watched))
            self.unknown.set(self._unknown / total)
            served = since.get(float("inf"), 0.0)
            if served < MIN_EVENTS:  # watches but (almost) no requests: no length verdict
                self.ks.set(0)
                return
            edges = np.asarray(sorted(le for le in since if np.isfinite(le)))
            served_cdf = np.asarray([since[e] for e in edges]) / served
            self.ks.set(ks_from_cdfs(cdf_at(self._train_lengths, edges), served_cdf))


def _label(le: float) -> str:
    """A bucket bound as Prometheus writes ``le``: ``"10.0"``, ``"+Inf"``."""
    return "+Inf" if le == float("inf") else repr(float(le))


def _buckets(histogram: Histogram) -> dict[float, float]:
    """Cumulative bucket counts (le -> count) of an unlabelled histogram."""
    out: dict[float, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                out[float(sample.labels["le"])] = float(sample.value)
    return out
