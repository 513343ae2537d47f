from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.data.dataset import SequenceData
from movierec.evaluation.protocols import draw_negatives, fixed_negatives, rank_users


def tiny_data(folder: Path, train: list[list[int]], valid: list[int], test: list[int],
              n_items: int) -> SequenceData:
    import polars as pl

    n_users = len(train)
    return SequenceData(
        folder=folder, card={"data_version": "x"}, n_users=n_users, n_items=n_items,
        train=[np.array([], dtype=np.int64)] + [np.array(t, dtype=np.int64) for t in train],
        valid_item=np.array([0, *valid]), test_item=np.array([0, *test]),
        items=pl.DataFrame({"item_idx": list(range(1, n_items + 1)),
                            "genres": [["A"]] * n_items}),
        users=pl.DataFrame({"user_idx": list(range(1, n_users + 1))}))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(110, 160))
def test_negatives_never_touch_a_users_items(seed: int, n_items: int) -> None:
    rng = np.random.default_rng(seed)
    # Ten distinct items per user: eight to train on, then the valid and the test item,
    # which the negatives must avoid as well.
    items = [rng.choice(np.arange(1, n_items + 1), size=10, replace=False).tolist()
             for _ in range(5)]
    data = tiny_data(Path("/nonexistent"), [sorted(i[:8]) for i in items],
                     [i[8] for i in items], [i[9] for i in items], n_items)
    users = np.arange(1, 6)
    negatives = draw_negatives(data, users, 100, seed)
    for user, row in zip(users, negatives, strict=True):
        touched = set(items[user - 1])
        assert not touched & set(row.tolist())
        assert len(set(row.tolist())) == 100  # distinct
        assert row.min() >= 1 and row.max() <= n_items


def test_negatives_are_saved_once_per_seed(tmp_path: Path) -> None:
    data = tiny_data(tmp_path, [[1, 2, 3]] * 3, [4, 4, 4], [5, 5, 5], 200)
    first = fixed_negatives(data, "test", seed=7)
    assert (tmp_path / "negatives" / "test-seed7-n100.npz").exists()
    assert np.array_equal(fixed_negatives(data, "test", seed=7), first)
    assert not np.array_equal(fixed_negatives(data, "test", seed=8), first)


def test_a_read_only_data_folder_draws_the_same_negatives_without_saving(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.evaluation import protocols

    data = tiny_data(tmp_path, [[1, 2, 3]] * 3, [4, 4, 4], [5, 5, 5], 200)
    saved = fixed_negatives(data, "valid", seed=3)
    (tmp_path / "negatives" / "valid-seed3-n100.npz").unlink()

    def read_only(*args: object) -> None:
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr(protocols, "write_atomic", read_only)
    with pytest.warns(RuntimeWarning, match="drawn again from the seed"):
        again = fixed_negatives(data, "valid", seed=3)
    assert np.array_equal(again, saved)  # training goes on; every model sees the same ones


def test_too_few_items_for_negatives_is_a_clear_error() -> None:
    data = tiny_data(Path("/x"), [[1, 2, 3]], [4], [5], 50)
    with pytest.raises(ValueError, match="cannot draw 100 distinct negatives"):
        draw_negatives(data, np.array([1]), 100, 0)


def test_full_ranking_masks_history_but_not_the_target(tmp_path: Path) -> None:
    # One user, history [1, 2], valid 3, test 4; the scorer loves the history items.
    data = tiny_data(tmp_path, [[1, 2]], [3], [4], 6)

    def scorer(users: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        return np.tile(np.array([0.0, 9, 8, 5, 4, 4, 1]), (len(users), 1))

    valid = rank_users(scorer, data, "valid", max_len=5, sampled=False)
    assert valid.full_ranks.tolist() == [0]  # 1 and 2 are history: masked
    test = rank_users(scorer, data, "test", max_len=5, sampled=False)
    # history is now [1, 2, 3]; item 5 ties with the target 4: pessimistic rank 1.
    assert test.full_ranks.tolist() == [1]
    assert test.top_k[0, :3].tolist() in ([4, 5, 6], [5, 4, 6])


def test_tie_orders_score_a_tied_history_end_by_all_of_its_items(tmp_path: Path) -> None:
    """A model that reads only the newest item, and histories whose last items are tied."""
    n_items = 8
    data = tiny_data(tmp_path, [[6, 1, 3], [1, 2, 3], [4, 5, 6]], [2, 4, 7], [8, 8, 8], n_items)
    data.train_times = [np.array([], dtype=np.int64), np.array([10, 20, 20]),
                        np.array([10, 20, 30]), np.array([10, 10, 10])]
    data.valid_time = np.array([0, 40, 40, 40])
    calls: list[int] = []

    def newest_item_likes_the_next(users: np.ndarray, seqs: np.ndarray) -> np.ndarray:
        calls.append(len(users))
        scores = np.zeros((len(users), n_items + 1))
        scores[np.arange(len(users)), seqs[:, -1] + 1] = 1.0  # item i predicts item i + 1
        return scores

    plain = rank_users(newest_item_likes_the_next, data, "valid", max_len=5, sampled=False)
    averaged = rank_users(newest_item_likes_the_next, data, "valid", max_len=5,
                          sampled=False, tie_orders=8)
    # User 1 ends in (1, 3), tied. Plain scoring reads 3 and backs 4 alone, so the target
    # 2 ties with 4 other zeros (pessimistic rank 4); over both orders 2 and 4 get 0.5.
    assert plain.full_ranks.tolist() == [4, 0, 0]
    assert averaged.full_ranks.tolist() == [1, 0, 0]
    assert calls[-1] == 3 + 1 + 2  # the three histories, then user 1's and user 3's copies
    # batch_size caps the histories per call: 8 orders each leave room for one user.
    calls.clear()
    capped = rank_users(newest_item_likes_the_next, data, "valid", max_len=5,
                        sampled=False, tie_orders=8, batch_size=8)
    assert calls == [1 + 1, 1, 1 + 2]  # users 1, 2, 3, each with its copies
    assert capped.full_ranks.tolist() == averaged.full_ranks.tolist()
    # Without timestamps a history is scored as it is.
    data.train_times = None
    unknown = rank_users(newest_item_likes_the_next, data, "valid", max_len=5,
                         sampled=False, tie_orders=8)
    assert unknown.full_ranks.tolist() == [4, 0, 0] and calls[-1] == 3


def test_history_length_slices_never_share_a_length(tmp_path: Path) -> None:
    from movierec.evaluation.report import detailed_report

    # Lengths 1, 2, 2, 2, 2, 3, 4, 8: the quartile edges fall on 2, where users pile up.
    lengths = [1, 2, 2, 2, 2, 3, 4, 8]
    train = [list(range(1, n + 1)) for n in lengths]
    data = tiny_data(tmp_path, train, [9] * 8, [10] * 8, 12)
    ranked = rank_users(lambda users, seqs: np.random.default_rng(0).random((len(users), 13)),
                        data, "valid", max_len=10, sampled=False)
    ranked.sampled_ranks[:] = 0
    slices = detailed_report(ranked, data, "valid")["slices"]["history_length"]
    spans = [tuple(int(x) for x in label.split("(")[1].rstrip(")").split("-"))
             for label in slices]
    covered = [n for n in lengths if sum(low <= n <= high for low, high in spans) != 1]
    assert covered == [] and sum(s["users"] for s in slices.values()) == len(lengths)
    # Most users at the shortest length: they are Q1, not a later quartile (the next
    # groups start where their first user falls in length order).
    lengths = [1] * 6 + [2, 3, 5, 8]
    train = [list(range(1, n + 1)) for n in lengths]
    data = tiny_data(tmp_path / "piled", train, [9] * 10, [10] * 10, 12)
    ranked = rank_users(lambda users, seqs: np.random.default_rng(0).random((len(users), 13)),
                        data, "valid", max_len=10, sampled=False)
    slices = detailed_report(ranked, data, "valid")["slices"]["history_length"]
    assert {label: s["users"] for label, s in slices.items()} == {
        "Q1 (1-1)": 6, "Q3 (2-3)": 2, "Q4 (5-8)": 2}


def test_ml1m_age_codes_are_named_and_an_empty_split_is_a_clear_error(tmp_path: Path) -> None:
    import polars as pl

    from movierec.evaluation.report import detailed_report

    data = tiny_data(tmp_path, [[1, 2, 3]] * 4, [4] * 4, [5] * 4, 6)
    data.users = data.users.with_columns(age=pl.Series([7, 18, 50, 56]))
    ranked = rank_users(lambda users, seqs: np.random.default_rng(0).random((len(users), 7)),
                        data, "valid", max_len=5, sampled=False)
    ranked.sampled_ranks[:] = 0
    assert set(detailed_report(ranked, data, "valid")["slices"]["age"]) == {
        "0s", "10s", "50s"}  # real ages: decades
    data.card = {"name": "ml-1m", "source": {"layout": "dat"}}
    assert set(detailed_report(ranked, data, "valid")["slices"]["age"]) == {
        "18-24", "50-55", "56+", "unknown"}  # ML-1M's codes: its groups, 50 and 56 apart
    # Prepared again (a lifecycle round is "canonical"): the codes are recognised.
    data.card = {"name": "canonical", "source": {"layout": "canonical"}}
    data.users = data.users.with_columns(age=pl.Series([1, 18, 50, 56]))
    assert set(detailed_report(ranked, data, "valid")["slices"]["age"]) == {
        "under 18", "18-24", "50-55", "56+"}
    data.valid_item[:] = 0
    nobody = rank_users(lambda users, seqs: np.zeros((len(users), 7)), data, "valid",
                        max_len=5, sampled=False)
    with pytest.raises(ValueError, match="no user has a valid target"):
        detailed_report(nobody, data, "valid")
