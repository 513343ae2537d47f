"""Latency measurements and figures for the optimise-and-serve notebook.

``time_scorers`` times any scorers (PyTorch eager, ONNX fp32, ONNX int8) on the same batches;
the ``plot_*`` functions return a matplotlib ``Figure`` (object API, no pyplot state, so they
work headless under Agg). Torch-free: the scorers are passed in as callables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

Batch = tuple[np.ndarray, np.ndarray]  # (users [B], seqs [B, max_len])
Timings = dict[str, dict[int, float]]  # scorer name -> batch size -> milliseconds


def median_seconds(fn: Callable[[], Any], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed ones.

    The median ignores the occasional slow call (a busy machine, a garbage collection).
    """
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: time at least one call")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_scorers(scorers: Mapping[str, Callable[[np.ndarray, np.ndarray], Any]],
                 batches: Mapping[int, Batch], repeats: int = 20,
                 warmup: int = 3) -> Timings:
    """Median milliseconds per call of each scorer on each batch.

    Args:
        scorers: Name to ``scorer(users, seqs)``; set their thread counts before (e.g.
            ``torch.set_num_threads(1)``, ``OrtScorer(path, threads=1)``) to compare fairly.
        batches: Batch size to ``(users, seqs)`` inputs, shared by every scorer.
        repeats: Timed calls per (scorer, batch); the median is kept.
        warmup: Untimed calls first (lazy allocation, ORT's first-run optimisation).
    """
    return {name: {size: round(1000.0 * median_seconds(lambda s=scorer, b=batch: s(*b),
                                                       repeats, warmup), 4)
                   for size, batch in batches.items()}
            for name, scorer in scorers.items()}


def plot_latency_bars(timings: Timings, title: str = "Scoring latency (median)") -> Figure:
    """Grouped bars of milliseconds per call: one group per batch size, one bar per scorer.

    The y axis is logarithmic (batch 64 costs far more than batch 1); each bar is labelled
    with its value, and the legend's order is ``timings``'s.
    """
    names = list(timings)
    sizes = sorted({size for per_size in timings.values() for size in per_size})
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(sizes))
    for i, name in enumerate(names):
        values = [timings[name].get(size, np.nan) for size in sizes]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" if np.isfinite(v) else "" for v in values],
                     fontsize=8, padding=2)
    ax.set_xticks(x, [f"batch {size}" for size in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("ms per call (log scale)")
    ax.set_title(title)
    ax.legend()
    ax.margins(y=0.15)
    return fig


def plot_latency_histogram(latencies: Sequence[float], summary: Mapping[str, Any] | None = None,
                           title: str = "Request latency under load") -> Figure:
    """Histogram of request latencies (given in seconds, drawn in ms) with p50 and p99 lines.

    Args:
        latencies: Seconds per request (``LoadResult.latencies``).
        summary: ``LoadResult.summary()``; its throughput and errors go into the title.
        title: Figure title.
    """
    ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    if ms.size:
        ax.hist(ms, bins=min(50, max(10, ms.size // 20)), color="tab:blue", alpha=0.8)
        for q, style in ((50, "--"), (99, ":")):
            value = float(np.percentile(ms, q))
            ax.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.1f} ms")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no successful requests", ha="center", va="center",
                transform=ax.transAxes)
    if summary:
        title += (f" ({summary['requests']} requests, {summary['throughput_rps']:.0f} req/s, "
                  f"{summary['errors']} errors)")
    ax.set_title(title)
    ax.set_xlabel("ms per request")
    ax.set_ylabel("requests")
    return fig
