"""Training windows, SSE corruption, negative sampling and epoch batches."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from movierec.models import (
    ModelConfig,
    TrainingBatches,
    sample_negatives,
    sse_corrupt,
    training_window,
)


def within_4_se(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def random_sequences(n_users: int, n_items: int, total: int, seed: int,
                     min_len: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.multinomial(total - min_len * n_users, np.ones(n_users) / n_users) + min_len
    return [np.zeros(0, np.int64)] + [rng.integers(1, n_items + 1, size=n) for n in lengths]


# --- training window --------------------------------------------------------------------

def test_training_window_left_pads_and_keeps_the_end() -> None:
    rng = np.random.default_rng(0)
    seq, target = training_window(np.array([1, 2, 3, 4, 5]), 6, rng, plus_plus=False)
    assert seq.tolist() == [0, 0, 1, 2, 3, 4] and target.tolist() == [0, 0, 2, 3, 4, 5]
    seq, target = training_window(np.array([1, 2, 3, 4, 5]), 3, rng, plus_plus=False)
    assert seq.tolist() == [2, 3, 4] and target.tolist() == [3, 4, 5]
    for short in ([], [7]):
        seq, target = training_window(np.array(short, np.int64), 3, rng, plus_plus=True)
        assert seq.tolist() == target.tolist() == [0, 0, 0]


def test_plus_plus_only_samples_long_histories() -> None:
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    seq, _ = training_window(np.arange(1, 5), 3, rng, plus_plus=True)  # 3 pairs: fits
    assert seq.tolist() == [1, 2, 3] and rng.bit_generator.state == state


def test_plus_plus_window_end_is_uniform() -> None:
    history = np.arange(1, 21)  # 19 pairs; windows of 5 can end after pair 5..19
    rng = np.random.default_rng(1)
    ends = []
    for _ in range(3000):
        seq, target = training_window(history, 5, rng, plus_plus=True)
        assert (target == seq + 1).all() and (np.diff(seq) == 1).all()
        ends.append(seq[-1])
    counts = np.bincount(ends, minlength=20)[5:]
    assert counts.size == 15 and all(within_4_se(int(c), 3000, 1 / 15) for c in counts)


# --- SSE ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("prob_user", "prob_item"), [(0.92, 0.1), (0.3, 0.5)])
def test_sse_replacement_rates(prob_user: float, prob_item: float) -> None:
    rng = np.random.default_rng(5)
    n_rows, length, big = 20_000, 6, 10**9  # a huge id space: a replacement never coincides
    users = np.full(n_rows, 7)
    pads = rng.integers(0, length + 1, size=n_rows)
    real = np.arange(length)[None, :] >= pads[:, None]
    seqs = np.where(real, rng.integers(1, big, size=(n_rows, length)), 0)
    targets = np.where(real, rng.integers(1, big, size=(n_rows, length)), 0)
    originals = users.copy(), seqs.copy(), targets.copy()
    new_users, new_seqs, new_targets = sse_corrupt(users, seqs, targets, big, big, prob_user,
                                                   prob_item, rng)
    for before, after in zip(originals, (users, seqs, targets), strict=True):
        assert np.array_equal(before, after)  # inputs untouched
    assert within_4_se(int((new_users != users).sum()), n_rows, prob_user)
    changed = new_seqs != seqs
    assert within_4_se(int(changed.sum()), int(real.sum()), prob_item)
    assert (new_seqs[~real] == 0).all() and (new_targets[~real] == 0).all()
    assert np.array_equal(changed, new_targets != targets)
    assert new_seqs.min() >= 0 and new_users.min() >= 1


def test_sse_extreme_probabilities() -> None:
    rng = np.random.default_rng(0)
    users, seqs = np.array([1, 2]), np.array([[0, 3, 4], [5, 6, 7]])
    same = sse_corrupt(users, seqs, seqs + 1, 2, 10**6, 0.0, 0.0, rng)
    assert np.array_equal(same[0], users) and np.array_equal(same[1], seqs)
    everything = sse_corrupt(users, seqs, seqs + 1, 2, 10**6, 1.0, 1.0, rng)
    assert ((everything[1] != seqs) == (seqs != 0)).all()


# --- negatives ------------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(data=st.data(), n_items=st.integers(2, 40), as_set=st.booleans())
def test_negatives_never_in_history(data: st.DataObject, n_items: int, as_set: bool) -> None:
    history = data.draw(st.lists(st.integers(1, n_items), min_size=1, max_size=60))
    if len(set(history)) == n_items:
        history = [i for i in history if i != 1] or [2]
    targets = np.array(data.draw(st.lists(st.integers(0, n_items), min_size=1, max_size=50)))
    seed = data.draw(st.integers(0, 2**32 - 1))
    items = set(history) if as_set else np.array(history)
    negatives = sample_negatives(targets, items, n_items, np.random.default_rng(seed))
    assert negatives.shape == targets.shape
    assert (negatives[targets == 0] == 0).all()
    real = negatives[targets != 0]
    assert ((real >= 1) & (real <= n_items)).all()
    assert not np.isin(real, history).any()
    only_one_left = len(set(history)) == n_items - 1
    assert only_one_left or not (real == targets[targets != 0]).any()


def test_negatives_are_uniform_over_unseen_items() -> None:
    negatives = sample_negatives(np.full(30_000, 2), {2, 4}, 5, np.random.default_rng(0))
    counts = np.bincount(negatives, minlength=6)
    assert counts[[0, 2, 4]].sum() == 0
    assert all(within_4_se(int(counts[i]), 30_000, 1 / 3) for i in (1, 3, 5))


def test_negatives_when_one_item_is_left_and_none() -> None:
    rng = np.random.default_rng(0)
    negatives = sample_negatives(np.ones(500, np.int64), set(range(1, 200)), 200, rng)
    assert (negatives == 200).all()
    with pytest.raises(ValueError, match="all 3 items"):
        sample_negatives(np.ones(2, np.int64), [1, 2, 3], 3, rng)


# --- epoch batches --------------------------------------------------------------------------

def config(**overrides: object) -> ModelConfig:
    return ModelConfig(**{"max_len": 10, "d_item": 8, "d_user": 8, "loss": "bce", **overrides})


def collect(batches: TrainingBatches, epoch: int) -> list[dict[str, torch.Tensor]]:
    return list(batches.epoch(epoch))


def test_batches_are_deterministic_and_differ_per_epoch() -> None:
    sequences = random_sequences(50, 100, 900, seed=0)
    a = TrainingBatches(sequences, 50, 100, config(), batch_size=16, seed=3)
    b = TrainingBatches(sequences, 50, 100, config(), batch_size=16, seed=3)
    first, again = collect(a, 0), collect(b, 0)
    assert len(first) == len(a) == math.ceil(a.n_sequences / 16)
    for x, y in zip(first, again, strict=True):
        assert x.keys() == {"users", "seqs", "pos", "neg"}
        assert all(torch.equal(x[k], y[k]) for k in x)
    second = collect(a, 1)
    assert not torch.equal(first[0]["seqs"], second[0]["seqs"])
    other_seed = collect(TrainingBatches(sequences, 50, 100, config(), 16, seed=4), 0)
    assert not torch.equal(first[0]["seqs"], other_seed[0]["seqs"])


def test_batches_cover_eligible_users_once_with_plain_windows() -> None:
    sequences = random_sequences(30, 60, 300, seed=1)
    sequences[4] = np.array([9])  # one item: nothing to predict, so never trained
    sequences[0] = np.array([1, 2, 3])  # entry 0 is not a user
    cfg = config(sse_prob_user=0.0, sse_prob_item=0.0, loss="ce")
    batches = TrainingBatches(sequences, 30, 60, cfg, batch_size=7, seed=0)
    seen = []
    for batch in batches.epoch(0):
        assert "neg" not in batch and batch["seqs"].dtype == torch.int64
        for user, seq, pos in zip(batch["users"], batch["seqs"], batch["pos"], strict=True):
            want_seq, want_pos = training_window(sequences[int(user)], 10,
                                                 np.random.default_rng(), plus_plus=False)
            # Batches drop the columns that are padding in every row (left side only).
            width = seq.shape[0]
            assert not want_seq[:-width].any() and not want_pos[:-width].any()
            assert seq.tolist() == want_seq[-width:].tolist()
            assert pos.tolist() == want_pos[-width:].tolist()
            seen.append(int(user))
    expected = [u for u in range(1, 31) if len(sequences[u]) >= 2]
    assert sorted(seen) == expected and 4 not in seen


def test_batch_negatives_avoid_the_true_users_history() -> None:
    sequences = random_sequences(40, 30, 600, seed=2, min_len=2)
    cfg = config(sse_prob_user=0.0, sse_prob_item=0.5)
    for batch in TrainingBatches(sequences, 40, 30, cfg, batch_size=8, seed=1).epoch(0):
        for user, pos, neg in zip(batch["users"], batch["pos"], batch["neg"], strict=True):
            assert ((neg == 0) == (pos == 0)).all()
            assert not np.isin(neg[pos != 0].numpy(), sequences[int(user)]).any()


def test_batches_apply_user_sse_only_to_sse_pt() -> None:
    sequences = random_sequences(200, 50, 3000, seed=3, min_len=2)
    users = {}
    for kind in ("sse-pt", "sasrec"):
        batches = TrainingBatches(sequences, 200, 50, config(kind=kind, sse_prob_user=0.5,
                                                             sse_prob_item=0.0), 64, seed=0)
        users[kind] = torch.cat([b["users"] for b in batches.epoch(0)])
    assert sorted(users["sasrec"].tolist()) == list(range(1, 201))
    assert sorted(users["sse-pt"].tolist()) != list(range(1, 201))


def test_plus_plus_batches_sample_earlier_windows() -> None:
    history = np.arange(1, 41)
    sequences = [np.zeros(0, np.int64), history, np.array([3, 4])]
    cfg = config(sse_pt_plus_plus=True, sse_prob_user=0.0, sse_prob_item=0.0)
    batches = TrainingBatches(sequences, 2, 50, cfg, batch_size=2, seed=0)
    last_items = set()
    for epoch in range(40):
        (batch,) = collect(batches, epoch)
        row = int(torch.nonzero(batch["users"] == 1))
        seq, pos = batch["seqs"][row], batch["pos"][row]
        assert torch.equal(pos, seq + 1) and (seq.diff() == 1).all()
        last_items.add(int(seq[-1]))
    assert len(last_items) > 10 and min(last_items) >= 10 and max(last_items) <= 39


def test_batches_reject_bad_input() -> None:
    sequences = random_sequences(5, 10, 40, seed=0)
    with pytest.raises(ValueError, match="n_users \\+ 1"):
        TrainingBatches(sequences, 6, 10, config(), 4, 0)
    sequences[2] = np.array([1, 11])
    with pytest.raises(ValueError, match=r"train_sequences\[2\]"):
        TrainingBatches(sequences, 5, 10, config(), 4, 0)


def test_epoch_of_ml100k_size_is_fast() -> None:
    sequences = random_sequences(943, 1682, 98_000, seed=0, min_len=20)
    batches = TrainingBatches(sequences, 943, 1682, ModelConfig(), batch_size=128, seed=0)
    start = time.perf_counter()
    rows = sum(len(b["users"]) for b in batches.epoch(0))
    elapsed = time.perf_counter() - start
    assert rows == 943 and elapsed < 0.5


def test_bucketing_trims_padding_and_keeps_every_user() -> None:
    sequences = random_sequences(64, 80, 2000, seed=5)
    cfg = config(loss="ce", sse_prob_user=0.0)
    plain = TrainingBatches(sequences, 64, 80, cfg, batch_size=8, seed=0, bucket_by_length=False)
    bucketed = TrainingBatches(sequences, 64, 80, cfg, batch_size=8, seed=0)
    cells = {name: sum(b["seqs"].numel() for b in tb.epoch(0))
             for name, tb in (("plain", plain), ("bucketed", bucketed))}
    assert cells["bucketed"] <= cells["plain"]
    users = sorted(int(u) for b in bucketed.epoch(0) for u in b["users"])
    assert users == sorted(int(u) for b in plain.epoch(0) for u in b["users"])
    for batch in bucketed.epoch(0):
        assert (batch["seqs"][:, 0] != 0).any()  # no all-padding column is left


def _windows_by_user(batches: TrainingBatches, epoch: int) -> dict[int, list[int]]:
    """Each user's full training sequence as one epoch's batches show it (SSE off)."""
    out = {}
    for batch in batches.epoch(epoch):
        for user, seq, pos in zip(batch["users"], batch["seqs"], batch["pos"], strict=True):
            real = seq != 0
            out[int(user)] = [*seq[real].tolist(), int(pos[real][-1])]
    return out


def test_tie_shuffling_reorders_only_items_that_share_a_timestamp() -> None:
    sequences = [np.zeros(0, np.int64), np.arange(1, 9), np.arange(11, 17)]
    times = [np.zeros(0, np.int64), np.array([1, 2, 2, 2, 5, 7, 7, 9]),
             np.array([3, 4, 5, 6, 7, 8])]  # user 2 has no ties
    cfg = config(loss="ce", sse_prob_user=0.0, sse_prob_item=0.0, max_len=20,
                 shuffle_ties=True)
    batches = TrainingBatches(sequences, 2, 20, cfg, batch_size=2, seed=0, times=times)
    orders = set()
    for epoch in range(200):
        seen = _windows_by_user(batches, epoch)
        assert seen[2] == list(range(11, 17))
        one = seen[1]
        assert one[0] == 1 and one[4] == 5 and one[7] == 8  # singletons stay in place
        assert sorted(one[1:4]) == [2, 3, 4] and sorted(one[5:7]) == [6, 7]
        orders.add(tuple(one))
    assert len(orders) == 12  # every one of the 3! * 2! orders of the two runs turns up
    again = TrainingBatches(sequences, 2, 20, cfg, batch_size=2, seed=0, times=times)
    assert _windows_by_user(again, 3) == _windows_by_user(batches, 3)


def test_without_timestamps_or_with_shuffling_off_the_order_is_kept() -> None:
    sequences = random_sequences(20, 40, 300, seed=6, min_len=2)
    times = [np.zeros(len(s), np.int64) for s in sequences]  # everything tied
    cfg = config(sse_prob_user=0.0, sse_prob_item=0.0, shuffle_ties=True)
    plain = TrainingBatches(sequences, 20, 40, cfg, batch_size=4, seed=1)
    off = TrainingBatches(sequences, 20, 40, cfg.model_copy(update={"shuffle_ties": False}),
                          batch_size=4, seed=1, times=times)
    for a, b in zip(plain.epoch(0), off.epoch(0), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    shuffled = TrainingBatches(sequences, 20, 40, cfg, batch_size=4, seed=1, times=times)
    assert _windows_by_user(shuffled, 0) != _windows_by_user(plain, 0)
    # Timestamps without a tie leave nothing to shuffle: the epoch skips the reordering.
    distinct = [np.arange(len(s), dtype=np.int64) for s in sequences]
    untied = TrainingBatches(sequences, 20, 40, cfg, batch_size=4, seed=1, times=distinct)
    assert untied._tie_runs is None and shuffled._tie_runs is not None
    assert _windows_by_user(untied, 0) == _windows_by_user(plain, 0)


def test_timestamps_must_match_the_sequences() -> None:
    sequences = random_sequences(5, 10, 40, seed=0, min_len=2)
    times = [np.arange(len(s)) for s in sequences]
    times[3] = times[3][:-1]
    with pytest.raises(ValueError, match=r"times\[3\] has"):
        TrainingBatches(sequences, 5, 10, config(shuffle_ties=True), 4, 0, times=times)
    with pytest.raises(ValueError, match="times has 5 entries"):
        TrainingBatches(sequences, 5, 10, config(shuffle_ties=True), 4, 0, times=times[:5])
