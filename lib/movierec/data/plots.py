"""Plots and key numbers of a prepared dataset folder, for the data notebook and reports.

Pure functions: they read the folder's Parquet tables and return a matplotlib ``Figure``
(object API, no pyplot state, so they work headless under Agg) or a dict of numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from movierec.data.columns import (
    GENRES_COL,
    ITEM_IDX_COL,
    RATING_COL,
    SPLIT_COL,
    TIMESTAMP_COL,
    TRAIN,
    USER_IDX_COL,
)

USER_COLOR, ITEM_COLOR = "tab:blue", "tab:orange"


def load_tables(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read ``interactions.parquet`` and ``items.parquet`` from a prepared folder."""
    folder = Path(folder)
    missing = [n for n in ("interactions", "items") if not (folder / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}.parquet: run "
                                f"`movierec data prepare --out {folder}` first")
    return pl.read_parquet(folder / "interactions.parquet"), pl.read_parquet(
        folder / "items.parquet")


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: 0 when all equal, near 1 when one dominates."""
    values = np.sort(np.asarray(counts, dtype=np.float64))
    if values.size == 0 or values.sum() == 0:
        return 0.0
    ranks = np.arange(1, values.size + 1)
    return float((2 * ranks - values.size - 1) @ values / (values.size * values.sum()))


def _counts(inter: pl.DataFrame, col: str) -> np.ndarray:
    """Interactions per ``col`` value, largest first."""
    return np.sort(inter.group_by(col).len()["len"].to_numpy())[::-1]


def _genre_counts(inter: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Interactions per genre; a movie with several genres counts once for each."""
    return (inter.select(ITEM_IDX_COL).join(items.select(ITEM_IDX_COL, GENRES_COL),
                                            on=ITEM_IDX_COL)
            .explode(GENRES_COL).drop_nulls(GENRES_COL)
            .group_by(GENRES_COL).len().sort("len", descending=True))


def _rank_frequency(ax: Axes, inter: pl.DataFrame) -> None:
    for col, label, color in ((USER_IDX_COL, "users", USER_COLOR),
                              (ITEM_IDX_COL, "items", ITEM_COLOR)):
        counts = _counts(inter, col)
        ax.loglog(np.arange(1, counts.size + 1), counts, color=color,
                  label=f"{label} ({counts.size:,})")
    ax.set(title="Interactions per user and per item", xlabel="rank (most active first)",
           ylabel="interactions")
    ax.legend()
    ax.grid(True, which="major", alpha=0.3)


def _sequence_lengths(ax: Axes, inter: pl.DataFrame) -> None:
    lengths = _counts(inter, USER_IDX_COL)
    bins = np.geomspace(lengths.min(), lengths.max() + 1, 30)
    ax.hist(lengths, bins=bins, color=USER_COLOR, alpha=0.8)
    ax.set_xscale("log")
    # 20, 50, 100, 200 ... read better than 2x10^1 on a short log range
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    median = float(np.median(lengths))
    ax.axvline(median, color="black", linestyle="--", label=f"median {median:g}")
    ax.axvline(lengths.min(), color="grey", linestyle=":", label=f"min {lengths.min()}")
    ax.set(title="Sequence length (interactions per user)", xlabel="length (log scale)",
           ylabel="users")
    ax.legend()


def _over_time(ax: Axes, inter: pl.DataFrame) -> None:
    monthly = (inter.select(pl.from_epoch(TIMESTAMP_COL, time_unit="s").dt.truncate("1mo")
                            .alias("month"), RATING_COL)
               .group_by("month").agg(pl.len(), pl.col(RATING_COL).mean()).sort("month"))
    months = monthly["month"].dt.date().to_list()  # dates: bar widths are then in days
    ax.bar(months, monthly["len"].to_numpy(), width=25, align="edge", color=USER_COLOR,
           alpha=0.7)
    ax.set(title="Ratings per month (bars) and their mean (line)", xlabel="month",
           ylabel="ratings")
    ax.tick_params(axis="x", labelrotation=30)
    mean_ax = ax.twinx()
    mid_month = monthly["month"].dt.offset_by("14d").dt.date().to_list()
    mean_ax.plot(mid_month, monthly[RATING_COL].to_numpy(),
                 color="tab:red", marker="o")
    mean_ax.set_ylabel("mean rating", color="tab:red")
    mean_ax.tick_params(axis="y", colors="tab:red")


def _genres(ax: Axes, inter: pl.DataFrame, items: pl.DataFrame) -> None:
    genres = _genre_counts(inter, items).reverse()  # barh draws bottom-up: largest on top
    ax.barh(genres[GENRES_COL].to_list(), genres["len"].to_numpy(), color=ITEM_COLOR)
    ax.set(title="Interactions per genre (multi-genre movies count in each)",
           xlabel="interactions")
    ax.tick_params(axis="y", labelsize=8)


def _ratings(ax: Axes, inter: pl.DataFrame) -> None:
    counts = inter.group_by(RATING_COL).len().sort(RATING_COL)
    values = counts[RATING_COL].to_numpy()
    step = float(np.diff(values).min()) if values.size > 1 else 1.0
    ax.bar(values, counts["len"].to_numpy() / inter.height, width=0.8 * step,
           color=USER_COLOR)
    ax.set(title=f"Rating distribution (mean {inter[RATING_COL].mean():.2f})",
           xlabel="rating", ylabel="share of interactions", xticks=values)


def _lorenz(ax: Axes, inter: pl.DataFrame) -> None:
    counts = _counts(inter, ITEM_IDX_COL)
    share = np.concatenate([[0.0], np.cumsum(counts) / counts.sum()])
    items = np.linspace(0, 1, share.size)
    ax.plot(items, share, color=ITEM_COLOR, label="items, most popular first")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal popularity")
    top = int(np.ceil(0.1 * counts.size))
    ax.set(title=f"Item popularity concentration (Gini {gini(counts):.2f})",
           xlabel="share of items", ylabel="share of interactions")
    ax.annotate(f"top 10% of items: {share[top]:.0%}", (0.1, share[top]),
                xytext=(0.3, 0.45), arrowprops={"arrowstyle": "->"})
    ax.legend(loc="lower right")


def plot_overview(folder: Path) -> Figure:
    """Six panels: activity, lengths, time, genres, ratings and popularity concentration."""
    inter, items = load_tables(folder)
    fig = Figure(figsize=(16, 9), layout="constrained")
    axes = fig.subplots(2, 3)
    _rank_frequency(axes[0, 0], inter)
    _sequence_lengths(axes[0, 1], inter)
    _over_time(axes[0, 2], inter)
    _genres(axes[1, 0], inter, items)
    _ratings(axes[1, 1], inter)
    _lorenz(axes[1, 2], inter)
    fig.suptitle(f"{Path(folder).name}: {inter[USER_IDX_COL].n_unique():,} users, "
                 f"{items.height:,} items, {inter.height:,} interactions", fontsize=14)
    return fig


def summary_figures(folder: Path) -> dict[str, Any]:
    """Key numbers of a prepared folder, JSON-ready, for the notebook's results record.

    ``same_second_share`` is the share of interactions that share their user's timestamp
    with another one: their order within the sequence is file order, not time.
    """
    inter, items = load_tables(folder)
    lengths = _counts(inter, USER_IDX_COL)
    item_counts = _counts(inter, ITEM_IDX_COL)
    users = int(lengths.size)
    ties = inter.select((pl.len().over(USER_IDX_COL, TIMESTAMP_COL) > 1).mean()).item()
    genres = _genre_counts(inter, items)
    first, last = inter[TIMESTAMP_COL].min(), inter[TIMESTAMP_COL].max()
    return {
        "users": users,
        "items": items.height,
        "interactions": inter.height,
        "train_interactions": int((inter[SPLIT_COL] == TRAIN).sum()),
        "density": round(inter.height / (users * items.height), 5),
        "median_length": float(np.median(lengths)),
        "max_length": int(lengths.max()),
        "mean_rating": round(float(inter[RATING_COL].mean()), 3),
        "top_genre": str(genres[GENRES_COL][0]) if genres.height else None,
        "item_gini": round(gini(item_counts), 3),
        "items_under_5": int((item_counts < 5).sum()),
        "same_second_share": round(float(ties), 3),
        "first_day": str(pl.from_epoch(pl.Series([first]), time_unit="s").dt.date()[0]),
        "last_day": str(pl.from_epoch(pl.Series([last]), time_unit="s").dt.date()[0]),
    }
