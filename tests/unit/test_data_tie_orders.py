"""Scoring over the orders of a history's trailing tied items (``data.tie_orders``)."""

from __future__ import annotations

import numpy as np
import pytest

from movierec.data.tie_orders import expand_orders, mean_over_owners, trailing_tie_length


@pytest.mark.parametrize(("times", "expected"), [
    (None, 0), ([], 0), ([5], 1), ([1, 2, 3], 1), ([1, 3, 3], 2), ([3, 3, 3], 3),
    ([3, 3, 1, 1], 2), ([1, 2, 2, 3, 3, 3], 3)])
def test_trailing_tie_length_counts_only_the_newest_run(times, expected) -> None:
    assert trailing_tie_length(times) == expected


def test_expand_orders_rotates_the_tied_run_so_each_item_comes_last_once() -> None:
    histories = [np.array([7, 1, 2, 3]),   # the last three are tied
                 np.array([4, 5]),         # no tie
                 np.array([9, 8, 6, 5, 4])]  # a tie length of 9 is clipped to the 5 items
    rows, owner = expand_orders(histories, [3, 1, 9], max_orders=8)
    for got, want in zip(rows[:3], histories, strict=True):
        np.testing.assert_array_equal(got, want)  # the originals first, unchanged
    np.testing.assert_array_equal(owner, [0, 1, 2, 0, 0, 2, 2, 2, 2])
    first = [rows[i] for i in np.flatnonzero(owner == 0)]
    assert all(row[0] == 7 for row in first)  # the items before the run stay put
    assert sorted(row[-1] for row in first) == [1, 2, 3]  # every tied item last once
    assert all(sorted(row[1:].tolist()) == [1, 2, 3] for row in first)
    assert sorted(rows[i][-1] for i in np.flatnonzero(owner == 2)) == [4, 5, 6, 8, 9]


def test_expand_orders_caps_the_orders_and_spreads_them() -> None:
    rows, owner = expand_orders([np.arange(1, 11)], [10], max_orders=4)
    assert len(rows) == 4 and (owner == 0).all()
    assert [row[-1] for row in rows] == [10, 8, 5, 3]  # rotations by 0, 2, 5 and 7


def test_expand_orders_clips_the_run_to_the_window_the_model_reads() -> None:
    history = np.arange(1, 7)  # six tied items, a window of the newest three
    rows, _ = expand_orders([history], [6], max_orders=8, window=3)
    assert len(rows) == 3
    for row in rows:
        np.testing.assert_array_equal(row[:3], [1, 2, 3])  # the window keeps its items
        assert sorted(row[3:].tolist()) == [4, 5, 6]


def test_a_window_of_zero_or_one_leaves_nothing_to_reorder() -> None:
    for window in (0, 1):
        rows, owner = expand_orders([np.arange(1, 5)], [4], max_orders=8, window=window)
        assert len(rows) == 1 and owner.tolist() == [0]


def test_max_orders_one_or_no_ties_leave_the_histories_alone() -> None:
    histories = [np.array([1, 2]), np.array([3, 4, 5])]
    for lengths, max_orders in (([2, 3], 1), ([1, 0], 8)):
        rows, owner = expand_orders(histories, lengths, max_orders)
        assert len(rows) == 2
        np.testing.assert_array_equal(owner, [0, 1])


def test_mean_over_owners_averages_each_history_s_rows() -> None:
    scores = np.array([[1.0, 2.0], [5.0, 5.0], [3.0, 0.0], [2.0, 1.0], [1.0, 1.0]])
    mean = mean_over_owners(scores, np.array([0, 1, 0, 0, 1]), 2)
    np.testing.assert_allclose(mean, [[2.0, 1.0], [3.0, 3.0]])
    np.testing.assert_array_equal(mean_over_owners(scores[:2], np.array([0, 1]), 2),
                                  scores[:2])
    # Copies in any order after the originals (expand_orders keeps them together).
    mixed = mean_over_owners(scores[[0, 1, 2, 4, 3]], np.array([0, 1, 0, 1, 0]), 2)
    np.testing.assert_allclose(mixed, [[2.0, 1.0], [3.0, 3.0]])


def test_a_last_item_model_scores_a_tied_run_by_all_of_its_items() -> None:
    """The mean over orders is what makes a model read a tied run without its file order."""
    histories = [np.array([1, 2, 3]), np.array([1, 2, 3])]
    rows, owner = expand_orders(histories, [3, 2], max_orders=8)
    newest_only = np.eye(7)[[row[-1] for row in rows]]  # a model that reads the newest item
    mean = mean_over_owners(newest_only, owner, 2)
    np.testing.assert_allclose(mean[0, 1:4], [1 / 3] * 3)
    np.testing.assert_allclose(mean[1, 1:4], [0.0, 0.5, 0.5])  # item 1 is before the pair
