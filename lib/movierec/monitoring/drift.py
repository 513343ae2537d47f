"""Drift between the served traffic and the production model's training data.

Signals (each a pure function, thresholds in :class:`DriftConfig`):
- item-popularity PSI: how the watched movies spread over the training popularity deciles;
- sequence-length KS: the request history lengths (the service's ``/metrics`` histogram)
  against the training histories, compared at the histogram's bucket edges;
- unknown-item rate: watched movies the served bundle does not know;
- online hit rate over time, from the replayed traffic log (shown, not thresholded: the
  canary analysis judges it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

EPS = 1e-4
DECILES = 10


class DriftConfig(BaseModel):
    """Drift thresholds (above any of them, the report says drift and the CLI exits 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_psi: float = Field(0.2, gt=0, description="item-popularity PSI (0.2: a shift)")
    max_ks: float = Field(0.3, gt=0, le=1, description="sequence-length KS distance")
    max_unknown_rate: float = Field(0.05, ge=0, le=1, description="unknown watched movies")
    min_events: int = Field(100, ge=1, description="fewer served events: no verdict")


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (counts or shares)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    e = np.clip(e / max(e.sum(), EPS), EPS, None)
    a = np.clip(a / max(a.sum(), EPS), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def popularity_deciles(train_count: np.ndarray) -> np.ndarray:
    """Decile (0 = most popular tenth of the interactions) of every item index.

    Items are ranked by training count and cut where the cumulative share of interactions
    crosses each tenth, so every decile holds about a tenth of the training interactions.
    """
    order = np.argsort(-train_count, kind="stable")
    counts = train_count[order]
    # The share before each item: the item that reaches a tenth still belongs to its decile.
    share = (np.cumsum(counts) - counts) / max(train_count.sum(), 1)
    decile = np.minimum((share * DECILES).astype(np.int64), DECILES - 1)
    out = np.empty_like(decile)
    out[order] = decile
    return out


def ks_from_cdfs(reference: np.ndarray, served: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of two CDFs evaluated at the same points."""
    return float(np.max(np.abs(np.asarray(reference) - np.asarray(served)))) if len(
        reference) else 0.0


def cdf_at(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Empirical CDF of ``values`` at ``edges`` (share of values <= each edge)."""
    values = np.sort(np.asarray(values))
    return np.searchsorted(values, edges, side="right") / max(values.size, 1)


def histogram_cdf(buckets: dict[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Edges and CDF of a Prometheus cumulative histogram (``le`` -> count), +Inf dropped."""
    edges = np.asarray(sorted(k for k in buckets if np.isfinite(k)))
    total = buckets.get(float("inf"), max(buckets.values(), default=0.0))
    counts = np.asarray([buckets[e] for e in edges])
    return edges, counts / total if total else counts * 0.0


# The service's history-length buckets counted since its bundle loaded (serving.drift).
SINCE_LOAD_METRIC = "movierec_sequence_length_since_load"
HIT_RATE_WINDOW = 200  # requests per point of the online hit-rate curve


def hit_rate_windows(hits: list[bool], window: int = HIT_RATE_WINDOW) -> list[float]:
    """Online hit rate per consecutive window of replayed requests (oldest first)."""
    return [float(np.mean(hits[i:i + window])) for i in range(0, len(hits), window)
            if len(hits[i:i + window]) >= window // 2]


@dataclass
class DriftReport:
    """Every signal, its threshold, and the verdict."""

    events: int
    psi: float
    ks: float
    unknown_rate: float
    hit_rate_windows: list[float]
    thresholds: dict[str, float]
    drifted: list[str] = field(default_factory=list)
    verdict: str = "ok"
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def assess(train_count: np.ndarray, train_lengths: np.ndarray, watched: np.ndarray,
           unknown_watches: int, length_buckets: dict[float, float], hits: list[bool],
           config: DriftConfig) -> DriftReport:
    """Compute every signal and the verdict.

    Args:
        train_count: Training interactions per item index (index 0 unused).
        train_lengths: Training history length per user.
        watched: Item indices of the served watches the bundle knows.
        unknown_watches: Served watches of movies the bundle does not know.
        length_buckets: The service's ``movierec_sequence_length`` histogram (le -> count).
        hits: Per replayed request, whether it was a hit (time order).
        config: Thresholds.
    """
    deciles = popularity_deciles(train_count[1:])
    expected = np.bincount(deciles, weights=train_count[1:], minlength=DECILES)
    actual = np.bincount(deciles[watched - 1], minlength=DECILES) if watched.size else (
        np.zeros(DECILES))
    edges, served_cdf = histogram_cdf(length_buckets)
    served_total = max(length_buckets.values(), default=0.0)  # the +Inf bucket: every request
    ks = (ks_from_cdfs(cdf_at(train_lengths, edges), served_cdf)
          if edges.size and served_total > 0 else 0.0)
    total = int(watched.size + unknown_watches)
    report = DriftReport(
        events=total, psi=psi(expected, actual) if watched.size else 0.0, ks=ks,
        unknown_rate=unknown_watches / total if total else 0.0,
        hit_rate_windows=hit_rate_windows(hits),
        thresholds={"psi": config.max_psi, "ks": config.max_ks,
                    "unknown_rate": config.max_unknown_rate},
        detail={"popularity_expected": (expected / max(expected.sum(), 1)).tolist(),
                "popularity_served": (actual / max(actual.sum(), 1)).tolist(),
                "length_edges": edges.tolist(),
                "length_cdf_train": cdf_at(train_lengths, edges).tolist(),
                "length_cdf_served": served_cdf.tolist()})
    if total < config.min_events:
        report.verdict = f"too little traffic ({total} < {config.min_events} events)"
        return report
    for name, value, limit in (("psi", report.psi, config.max_psi),
                               ("ks", report.ks, config.max_ks),
                               ("unknown_rate", report.unknown_rate, config.max_unknown_rate)):
        if value > limit:
            report.drifted.append(f"{name} {value:.3f} > {limit:g}")
    report.verdict = "drift" if report.drifted else "ok"
    return report


def plot_drift(report: DriftReport, path: Path) -> Path:
    """Popularity deciles, sequence-length CDFs and online hit rate in one figure."""
    import matplotlib  # noqa: PLC0415 - plotting only when a report is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    d = report.detail
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    x = np.arange(DECILES)
    axes[0].bar(x - 0.2, d["popularity_expected"], 0.4, label="training", color="tab:gray")
    axes[0].bar(x + 0.2, d["popularity_served"], 0.4, label="served watches",
                color="tab:blue")
    axes[0].set(title=f"item popularity decile (PSI {report.psi:.3f})",
                xlabel="decile (0 = most popular)", ylabel="share")
    axes[0].legend()
    if d["length_edges"]:
        axes[1].step(d["length_edges"], d["length_cdf_train"], where="post", label="training")
        axes[1].step(d["length_edges"], d["length_cdf_served"], where="post",
                     label="requests")
        axes[1].set_xscale("symlog")
        axes[1].legend()
    axes[1].set(title=f"sequence length CDF (KS {report.ks:.3f})", xlabel="history length")
    axes[2].plot(report.hit_rate_windows, marker="o")
    axes[2].set(title=f"online hit rate per {HIT_RATE_WINDOW} requests (unknown items "
                      f"{report.unknown_rate:.1%})", xlabel="window", ylabel="hit rate")
    fig.suptitle(f"drift: {report.verdict}" + (f" ({'; '.join(report.drifted)})"
                                               if report.drifted else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
