"""bench/nested.py's comparison of variants: seeds paired, and the pseudo-test items' noise."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from nested import markdown, per_user_ndcg, summarize_runs

from movierec.evaluation.protocols import RankedUsers


def _run(variant: str, seed: int, per_user: np.ndarray | None) -> dict[str, Any]:
    run: dict[str, Any] = {"variant": variant, "seed": seed, "pseudo_test": {
        protocol: {"ndcg@10": float(per_user.mean()) if per_user is not None else 0.5}
        for protocol in ("sampled", "full")}}
    if per_user is not None:
        run["pseudo_test_per_user"] = {"sampled": per_user.tolist(),
                                       "full": per_user.tolist()}
    return run


def test_the_user_interval_carries_the_items_noise_that_seed_errors_miss() -> None:
    rng = np.random.default_rng(0)
    items = rng.random(400)  # how easy each pseudo-test item is, shared by every seed
    runs = []
    for seed in range(5):
        base = items + rng.normal(0, 0.01, items.size)
        # A variant that helps on some items and hurts on others, the same way every seed.
        other = base + np.where(items > 0.5, 0.05, -0.05) + rng.normal(0, 0.01, items.size)
        runs += [_run("base", seed, base), _run("other", seed, other)]
    row = summarize_runs(runs, ["base", "other"])["other"]["full"]
    low, high = row["gain_ci95_users"]
    assert low < row["gain"] < high
    # Seeds agree, so their standard error is tiny; the items make the interval wide.
    assert row["gain_stderr"] < 0.002 and high - low > 10 * row["gain_stderr"]
    assert "95% interval over users" in markdown({"other": {"full": row}}, "base")


def test_runs_without_per_user_scores_get_no_interval() -> None:
    runs = [_run(name, seed, None) for seed in range(3) for name in ("base", "other")]
    row = summarize_runs(runs, ["base", "other"])["other"]["sampled"]
    assert "gain_ci95_users" not in row and row["seeds"] == 3
    assert row["gain"] == pytest.approx(0.0)
    assert "| - |" in markdown({"other": {"sampled": row}}, "base")


def test_per_user_scores_come_from_the_fit_s_own_ranks() -> None:
    ranked = RankedUsers(users=np.array([1, 2, 3]), sampled_ranks=np.array([0, 1, 10]),
                         full_ranks=np.array([2, 10, 0]), top_k=np.zeros((3, 10), int))
    scores = per_user_ndcg(ranked)
    assert scores["sampled"] == [1.0, round(1 / np.log2(3), 6), 0.0]
    assert scores["full"] == [0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="per-user test ranks"):
        per_user_ndcg(None)
