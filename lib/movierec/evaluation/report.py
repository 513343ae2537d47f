"""Turn per-user ranks into the metrics dict, confidence intervals, slices and tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from movierec.data.columns import GENRES_COL, ITEM_IDX_COL, USER_IDX_COL
from movierec.data.dataset import SequenceData
from movierec.evaluation.metrics import (
    accuracy_per_user,
    bootstrap_ci,
    catalogue_coverage,
    intra_list_diversity,
    mean_popularity,
    novelty,
)
from movierec.evaluation.protocols import RankedUsers

Metrics = dict[str, dict[str, float]]
SLICE_METRIC = "ndcg@10"
DEMOGRAPHICS = ("gender", "age", "occupation")


def genre_matrix(data: SequenceData) -> np.ndarray:
    """Boolean [n_items + 1, G] item-by-genre matrix (row 0 is padding)."""
    exploded = data.items.select(ITEM_IDX_COL, GENRES_COL).explode(GENRES_COL).drop_nulls()
    names = sorted(exploded[GENRES_COL].unique().to_list())
    matrix = np.zeros((data.n_items + 1, max(len(names), 1)), dtype=bool)
    if names:
        column = {g: i for i, g in enumerate(names)}
        cols = np.array([column[g] for g in exploded[GENRES_COL].to_list()])
        matrix[exploded[ITEM_IDX_COL].to_numpy(), cols] = True
    return matrix


def summarize(ranked: RankedUsers, data: SequenceData) -> Metrics:
    """The metrics dict ``{"sampled": {...}, "full": {...}}`` (means over users)."""
    counts = data.item_train_counts()
    full = {k: float(v.mean()) for k, v in accuracy_per_user(ranked.full_ranks).items()}
    full.update({
        "coverage@10": catalogue_coverage(ranked.top_k, data.n_items),
        "novelty@10": novelty(ranked.top_k, counts),
        "diversity@10": intra_list_diversity(ranked.top_k, genre_matrix(data)),
        "popularity@10": mean_popularity(ranked.top_k, counts),
    })
    sampled = {k: float(v.mean()) for k, v in accuracy_per_user(ranked.sampled_ranks).items()}
    return {"sampled": sampled, "full": full}


def _slice_table(values: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    table = {}
    for label in sorted(set(labels.tolist()), key=str):
        chosen = values[labels == label]
        table[str(label)] = {"users": len(chosen), SLICE_METRIC: float(chosen.mean())}
    return table


# ML-1M's users.dat stores an age group's code, not an age (its README).
ML1M_AGE_GROUPS = {1: "under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49",
                   50: "50-55", 56: "56+"}


def _ages_are_ml1m_codes(card: dict[str, Any], ages: pl.Series) -> bool:
    """Whether the dataset's ages are ML-1M's group codes.

    The card says so for ML-1M's own files; a folder prepared again from them (the
    lifecycle's rounds are "canonical") is recognised by its values: only codes, 1 among
    them, an age no rater has.
    """
    if card.get("name") == "ml-1m" or card.get("source", {}).get("layout") == "dat":
        return True
    values = set(ages.drop_nulls().to_list())
    return 1 in values and values <= set(ML1M_AGE_GROUPS)


def _age_bands(ages: pl.Series, coded: bool) -> pl.Series:
    """Decades ("20s") of real ages, or the named groups of ML-1M's codes."""
    if coded:
        return ages.replace_strict(ML1M_AGE_GROUPS, default=None, return_dtype=pl.String)
    return (ages // 10 * 10).cast(pl.String) + "s"


def detailed_report(ranked: RankedUsers, data: SequenceData, split: str,
                    seed: int = 0) -> dict[str, Any]:
    """Metrics with bootstrap 95% CIs over users and slices by history length and demographics.

    Slices report full-ranking NDCG@10 per group: history-length quartiles always, and
    gender / age band / occupation when the dataset has demographics.
    """
    if not len(ranked.users):
        raise ValueError(f"no user has a {split} target: nothing to report (is the data "
                         "split? users need at least three interactions)")
    per_user = {"sampled": accuracy_per_user(ranked.sampled_ranks),
                "full": accuracy_per_user(ranked.full_ranks)}
    ci = {proto: {m: list(bootstrap_ci(v, seed=seed)) for m, v in metrics.items()}
          for proto, metrics in per_user.items()}
    ndcg = per_user["full"][SLICE_METRIC]
    lengths = np.array([len(data.history(int(u), split)) for u in ranked.users])
    # A user's quartile is where the first user of their length falls in length order, so
    # users of one length share a group and the shortest are always in Q1 (with many ties
    # a quartile may be empty: 60% of users at the shortest length make Q1 and Q3, Q4).
    # Each group is named by its own users' shortest and longest history.
    shorter = np.searchsorted(np.sort(lengths), lengths, side="left")
    quartile = 4 * shorter // len(lengths)
    names = {q: f"Q{q + 1} ({lengths[quartile == q].min()}-{lengths[quartile == q].max()})"
             for q in np.unique(quartile)}
    labels = np.array([names[q] for q in quartile])
    slices = {"history_length": _slice_table(ndcg, labels)}
    users = data.users.filter(pl.col(USER_IDX_COL).is_in(ranked.users.tolist()))
    users = users.sort(USER_IDX_COL)
    for column in DEMOGRAPHICS:
        if column in users.columns and users[column].null_count() < users.height:
            values = users[column]
            if column == "age":
                values = _age_bands(values, coded=_ages_are_ml1m_codes(data.card, values))
            slices[column] = _slice_table(ndcg, values.fill_null("unknown").to_numpy())
    return {"split": split, "users": len(ranked.users), "metrics": summarize(ranked, data),
            "ci95": ci, "slices": slices}


def comparison_table(rows: list[dict[str, Any]],
                     columns: tuple[str, ...] = ("sampled/ndcg@10", "sampled/hr@10",
                                                 "full/ndcg@10", "full/hr@10",
                                                 "full/coverage@10")) -> str:
    """A markdown table of runs: each row has ``name`` and ``metrics`` (a Metrics dict)."""
    head = "| run | " + " | ".join(columns) + " |"
    lines = [head, "|" + " --- |" * (len(columns) + 1)]
    for row in rows:
        cells = []
        for column in columns:
            proto, metric = column.split("/")
            value = row["metrics"].get(proto, {}).get(metric)
            cells.append("" if value is None else f"{value:.4f}")
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
