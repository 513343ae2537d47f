"""Plots of training runs and evaluation reports, for the train and evaluate notebooks.

Each ``plot_*`` function returns a matplotlib ``Figure`` (object API, no pyplot state, so
they work headless under Agg). ``run_history`` is the one reader: it fetches a run's
per-epoch metrics from MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from movierec.training.soup import refit_key, refit_loss_branch
from movierec.training.tracking import configure

REFIT_LOSS = refit_key("loss", 0)
HISTORY_METRICS = ("loss", "epoch_valid_ndcg_10", REFIT_LOSS)
BAR_METRICS = ("ndcg@10", "hr@10")
SLICE_METRIC = "ndcg@10"
MAX_LABELLED_BARS = 12  # beyond this, value labels overlap
SLICE_TITLES = {"history_length": "history length (quartiles)", "gender": "gender",
                "age": "age band"}

Histories = dict[str, list[dict[str, float]]]
Reports = dict[str, dict[str, Any]]


def soup_branch_losses(keys: Iterable[str]) -> list[str]:
    """The loss keys of the refit's soup branches after the first, in branch order."""
    branches = {k: refit_loss_branch(k) for k in keys}
    return sorted((k for k, b in branches.items() if b), key=lambda k: branches[k] or 0)


def run_history(run_id: str) -> list[dict[str, float]]:
    """Per-epoch ``loss``, ``epoch_valid_ndcg_10`` and refit losses of a run, by epoch.

    The refit losses are ``refit_loss`` (its trunk and first soup branch) and
    ``refit_loss_<b>`` (soup branch b, from the fork on). Runs without epochs (the
    popularity baseline) give an empty list. Epochs count from 1.
    """
    client = configure().MlflowClient()
    branches = soup_branch_losses(client.get_run(run_id).data.metrics)
    epochs: dict[int, dict[str, float]] = {}
    for key in (*HISTORY_METRICS, *branches):
        for metric in client.get_metric_history(run_id, key):
            if metric.step >= 1:
                epochs.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [epochs[step] for step in sorted(epochs)]


def plot_learning_curves(histories: Histories,
                         baselines: dict[str, float] | None = None) -> Figure:
    """Training loss and validation full-ranking NDCG@10 per epoch, one line per run.

    Args:
        histories: Run name to ``run_history`` records; runs with no epochs are skipped.
        baselines: Optional name to validation NDCG@10 of epoch-less runs (e.g. the
            popularity baseline), drawn as horizontal dashed lines on the NDCG panel.
    """
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    loss_ax, ndcg_ax = fig.subplots(1, 2)
    for name, history in histories.items():
        if not history:
            continue
        color = None
        branches = soup_branch_losses({k for h in history for k in h})
        for ax, key, label in ((loss_ax, "loss", name), (loss_ax, REFIT_LOSS, f"{name} refit"),
                               *((loss_ax, b, None) for b in branches),
                               (ndcg_ax, "epoch_valid_ndcg_10", name)):
            points = [(h["epoch"], h[key]) for h in history if key in h]
            if points:
                epochs, values = zip(*points, strict=True)
                # A run keeps one colour; its refit (train + valid items) is dashed, and the
                # refit's soup branches fork from it dotted (one legend entry for the refit).
                style = "-" if key in ("loss", "epoch_valid_ndcg_10") else (
                    "--" if key == REFIT_LOSS else ":")
                line, = ax.plot(epochs, values, marker="o", markersize=3, label=label,
                                color=color, linestyle=style)
                color = line.get_color()
        scored = [h for h in history if "epoch_valid_ndcg_10" in h]
        if scored:
            best = max(scored, key=lambda h: h["epoch_valid_ndcg_10"])
            ndcg_ax.annotate(f"best {best['epoch_valid_ndcg_10']:.4f} @ {best['epoch']:g}",
                             (best["epoch"], best["epoch_valid_ndcg_10"]),
                             xytext=(0, 8), textcoords="offset points", ha="center",
                             fontsize=8)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ndcg_ax.axhline(value, linestyle="--", color=f"C{7 + i}", label=f"{name} {value:.4f}")
    ndcg_ax.margins(y=0.12)  # room for the "best" note above the top point
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="loss")
    ndcg_ax.set(title="Validation NDCG@10 (full ranking)", xlabel="epoch", ylabel="NDCG@10")
    for ax in (loss_ax, ndcg_ax):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no per-epoch history", ha="center", va="center",
                    transform=ax.transAxes, color="grey")
    return fig


def _grouped_bars(ax: Axes, groups: list[str], series: dict[str, list[float]],
                  errors: dict[str, np.ndarray] | None = None) -> None:
    """One cluster of bars per group, one bar per series; ``errors`` are [2, G] offsets."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        yerr = None if errors is None else errors[name]
        bars = ax.bar(x + offset, values, width, yerr=yerr, capsize=3, label=name,
                      color=f"C{i}")
        if len(groups) * len(series) <= MAX_LABELLED_BARS:
            ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, groups)
    ax.grid(True, axis="y", alpha=0.3)


def plot_metric_bars(reports: Reports) -> Figure:
    """NDCG@10 and HR@10 under sampled and full ranking, bars with 95% CI error bars.

    Args:
        reports: Run name to an ``evaluate_run`` report (``metrics`` and ``ci95``).
    """
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, proto in zip(axes, ("sampled", "full"), strict=True):
        series: dict[str, list[float]] = {}
        errors: dict[str, np.ndarray] = {}
        for name, report in reports.items():
            means = np.array([report["metrics"][proto][m] for m in BAR_METRICS])
            bounds = np.array([report["ci95"][proto][m] for m in BAR_METRICS])  # [M, 2]
            series[name] = means.tolist()
            errors[name] = np.clip(np.stack([means - bounds[:, 0], bounds[:, 1] - means]),
                                   0, None)
        _grouped_bars(ax, [m.upper() for m in BAR_METRICS], series, errors)
        label = "1 positive + sampled negatives" if proto == "sampled" else "whole catalogue"
        ax.set(title=f"{proto.capitalize()} ranking ({label})", ylabel="mean over users")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # room for the value labels
        ax.legend(fontsize=8)
    split = next(iter(reports.values()), {}).get("split", "")
    fig.suptitle(f"{split} metrics with bootstrap 95% confidence intervals over users")
    return fig


def plot_slices(reports: Reports) -> Figure:
    """Full-ranking NDCG@10 by history-length quartile, and by gender and age when present.

    Args:
        reports: Run name to an ``evaluate_run`` report (``slices``).
    """
    first = next(iter(reports.values()), {"slices": {}})
    kinds = [k for k in SLICE_TITLES if k in first["slices"]]
    fig = Figure(figsize=(6 * max(len(kinds), 1), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(kinds), 1)))
    for ax, kind in zip(axes, kinds, strict=False):
        table = first["slices"][kind]
        groups = list(table)
        series = {name: [r["slices"][kind].get(g, {}).get(SLICE_METRIC, np.nan) for g in groups]
                  for name, r in reports.items()}
        sizes = [f"{table[g]['users']} user{'s' * (table[g]['users'] != 1)}" for g in groups]
        _grouped_bars(ax, [f"{g}\n{size}" for g, size in zip(groups, sizes, strict=True)],
                      series)
        ax.set(title=f"NDCG@10 by {SLICE_TITLES[kind]}", ylabel="full-ranking NDCG@10")
        ax.tick_params(axis="x", labelsize=8)
        ax.legend(fontsize=8)
    if not kinds:
        axes[0].text(0.5, 0.5, "no slices in the reports", ha="center", va="center",
                     transform=axes[0].transAxes, color="grey")
    fig.suptitle("Where the models differ: full-ranking NDCG@10 per user group")
    return fig
