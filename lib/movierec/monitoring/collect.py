"""Gather the drift signals' inputs from a running stage, its bundle and the stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from movierec.monitoring.drift import (
    SINCE_LOAD_METRIC,
    DriftConfig,
    DriftReport,
    assess,
    plot_drift,
)

LENGTH_METRIC = "movierec_sequence_length"


def length_histogram(metrics_text: str) -> dict[float, float]:
    """History-length buckets (bound -> cumulative count) of a /metrics page.

    The counts since the served bundle loaded when the service exports them
    (``movierec_sequence_length_since_load``), so a promotion's reload in place does not mix
    the previous version's traffic in; else the ``movierec_sequence_length`` histogram.
    """
    since: dict[float, float] = {}
    total: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if family.name == SINCE_LOAD_METRIC:
                since[float(sample.labels["upto"])] = float(sample.value)
            elif family.name == LENGTH_METRIC and sample.name.endswith("_bucket"):
                total[float(sample.labels["le"])] = float(sample.value)
    return since or total


def served_hits(traffic_log: Path, arm: str = "production") -> list[bool]:
    """Hit flags of the replayed requests served by ``arm``, oldest first."""
    if not traffic_log.exists():
        return []
    rows = (json.loads(line) for line in traffic_log.read_text().splitlines() if line.strip())
    return [bool(r["hit"]) for r in rows if r["arm"] == arm and r["ok"]]


def collect_and_assess(url: str, bundle_dir: Path, feedback_db: Path | str, traffic_log: Path,
                       config: DriftConfig) -> DriftReport:
    """Compare the stage at ``url`` (serving ``bundle_dir``) with its training data.

    ``feedback_db`` is the SQLite file or a store URL (``postgresql://...``).
    """
    from movierec.serving.engine import load_bundle  # noqa: PLC0415 - onnxruntime
    from movierec.serving.feedback import open_store  # noqa: PLC0415

    bundle = load_bundle(bundle_dir, "fp32", threads=1)
    version = httpx.get(f"{url}/version", timeout=5.0).json()["version"]
    metrics_text = httpx.get(f"{url}/metrics", timeout=5.0).text
    store = open_store(feedback_db)
    try:
        movies = [m for _, m, _ in store.watches(model_version=str(version))]
    finally:
        store.close()
    known, unknown = bundle.catalog.to_indices(movies)
    lengths = np.asarray([h.size for h in bundle.catalog.histories.values()])
    report = assess(bundle.catalog.train_count, lengths, known, len(unknown),
                    length_histogram(metrics_text), served_hits(traffic_log), config)
    report.detail["model_version"] = str(version)
    return report


def write_drift_report(report: DriftReport, reports_dir: Path) -> Path:
    """``drift.json``, ``drift.png`` and ``drift.md`` in a new timestamped folder."""
    folder = reports_dir / ("drift-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "drift.json").write_text(json.dumps(report.to_dict(), indent=2))
    plot_drift(report, folder / "drift.png")
    lines = [f"# Drift report: {report.verdict}", "",
             f"- served watches: {report.events}",
             f"- item-popularity PSI: {report.psi:.3f} (limit {report.thresholds['psi']:g})",
             f"- sequence-length KS: {report.ks:.3f} (limit {report.thresholds['ks']:g})",
             f"- unknown-item rate: {report.unknown_rate:.2%} "
             f"(limit {report.thresholds['unknown_rate']:.0%})",
             f"- online hit rate per window: "
             f"{', '.join(f'{h:.3f}' for h in report.hit_rate_windows) or '-'}", "",
             "![drift](drift.png)"]
    (folder / "drift.md").write_text("\n".join(lines) + "\n")
    return folder
