"""The two evaluation protocols, computed in one pass over users.

- Sampled (the SASRec / SSE-PT papers): the held-out item ranked among 100 negatives drawn
  uniformly from items the user never interacted with (train, valid and test). Negatives are
  drawn once per (split, seed) and saved in the prepared folder, so every model is ranked
  against the same candidates.
- Full ranking (the promotion metric): the held-out item ranked among all items outside the
  user's input history.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from movierec.data.dataset import SequenceData, left_pad
from movierec.data.tie_orders import expand_orders, mean_over_owners, trailing_tie_length
from movierec.evaluation.metrics import accuracy_per_user, pessimistic_ranks
from movierec.files import write_atomic

# (users [B], left-padded sequences [B, L]) -> scores of every item [B, n_items + 1].
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
N_NEGATIVES = 100
TOP_K = 10


@dataclass(frozen=True)
class RankedUsers:
    """Per-user outcome of one evaluation pass."""

    users: np.ndarray          # [U] user indices
    sampled_ranks: np.ndarray  # [U] rank among the fixed negatives
    full_ranks: np.ndarray     # [U] rank among all items outside the input history
    top_k: np.ndarray          # [U, TOP_K] full-ranking recommendations


def _user_item_keys(data: SequenceData) -> np.ndarray:
    """Sorted keys user * (n_items + 1) + item of every interaction a user ever had."""
    width = data.n_items + 1
    lengths = np.array([len(s) for s in data.train])
    keys = [np.repeat(np.arange(data.n_users + 1), lengths) * width + np.concatenate(data.train)]
    for targets in (data.valid_item, data.test_item):
        users = np.flatnonzero(targets)
        keys.append(users * width + targets[users])
    return np.unique(np.concatenate(keys))


def draw_negatives(data: SequenceData, users: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Draw ``n`` distinct negatives per user, uniformly among items they never touched.

    Rejection sampling on sorted (user, item) keys: vectorised, memory linear in the data.

    Raises:
        ValueError: When a user has interacted with too many items to leave ``n`` out.
    """
    width = data.n_items + 1
    seen = _user_item_keys(data)
    touched = np.bincount(seen // width, minlength=data.n_users + 1)[users]
    crowded = users[data.n_items - touched < n]
    if crowded.size:
        raise ValueError(f"{crowded.size} users (user_idx {crowded[:10].tolist()}) "
                         f"interacted with more than {data.n_items - n} of the {data.n_items} "
                         f"items: cannot draw {n} distinct negatives for them; lower the "
                         "number of negatives")
    rng = np.random.default_rng(seed)
    draws = rng.integers(1, width, size=(len(users), n))
    while True:
        keys = users[:, None] * width + draws
        pos = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
        bad = seen[pos] == keys
        order = np.argsort(draws, axis=1, kind="stable")
        ranked = np.take_along_axis(draws, order, axis=1)
        repeat = np.zeros_like(bad)
        np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
        bad |= repeat
        if not bad.any():
            return draws
        draws[bad] = rng.integers(1, width, size=int(bad.sum()))


def fixed_negatives(data: SequenceData, split: str, seed: int, n: int = N_NEGATIVES) -> np.ndarray:
    """Negatives for ``split`` and ``seed``: loaded from the prepared folder or drawn once."""
    users = data.eval_users(split)
    path = Path(data.folder) / "negatives" / f"{split}-seed{seed}-n{n}.npz"
    if path.exists():
        saved = np.load(path)
        if np.array_equal(saved["users"], users):
            return saved["negatives"]
    negatives = draw_negatives(data, users, n, seed)
    # Ray's workers and tuning trials may draw the same negatives at once: each writes a
    # temporary file of its own, and the same seed makes whichever lands last right.
    try:
        write_atomic(path, lambda handle: np.savez(handle, users=users, negatives=negatives))
    except OSError as error:  # a read-only data folder: the seed draws the same ones again
        warnings.warn(f"could not save the sampled negatives to {path} ({error}); they are "
                      "drawn again from the seed each time", RuntimeWarning, stacklevel=2)
    return negatives


def rank_users(scorer: Scorer, data: SequenceData, split: str, max_len: int, seed: int = 0,
               batch_size: int = 256, sampled: bool = True, tie_orders: int = 1) -> RankedUsers:
    """Score every user with a target in ``split`` and rank the target both ways.

    Args:
        scorer: Maps (users, left-padded histories) to scores of all items.
        data: The prepared sequences.
        split: ``valid`` (history = train) or ``test`` (history = train + valid item).
        max_len: Length the histories are padded / cut to.
        seed: Seed of the sampled negatives.
        batch_size: Histories per scorer call at most: users per call, each with up to
            ``tie_orders`` orders of its history.
        sampled: Also compute the sampled protocol (needs the fixed negatives).
        tie_orders: Score a history that ends in items of one timestamp as the mean over up
            to this many orders of them (``data.tie_orders``; 1 or data without timestamps:
            each history as it is).
    """
    users = data.eval_users(split)
    targets = data.targets(split)[users]
    negatives = fixed_negatives(data, split, seed) if sampled else None
    sampled_ranks = np.zeros(len(users), dtype=np.int64)
    full_ranks = np.zeros(len(users), dtype=np.int64)
    k = min(TOP_K, data.n_items)  # tiny catalogues (tests) have fewer than TOP_K items
    top_k = np.zeros((len(users), k), dtype=np.int64)
    # Batches of users with similar history lengths: a scorer that drops all-padding
    # columns then does far less work (results are written back in user order).
    lengths = np.array([min(len(data.history(int(u), split)), max_len) for u in users])
    by_length = np.argsort(lengths, kind="stable")
    ties = np.array([trailing_tie_length(data.history_times(int(u), split)) for u in users]
                    if tie_orders > 1 else np.zeros(len(users)), dtype=np.int64)
    # Each user may bring tie_orders histories: fewer users per call keep the scorer's
    # input (and its [rows, n_items] scores) within batch_size rows.
    users_per_call = max(1, batch_size // max(1, tie_orders))
    for start in range(0, len(users), users_per_call):
        rows = by_length[start:start + users_per_call]
        histories = [data.history(int(u), split) for u in users[rows]]
        inputs, owner = expand_orders(histories, ties[rows], tie_orders, max_len)
        scores = np.asarray(scorer(users[rows][owner], left_pad(inputs, max_len)),
                            dtype=np.float64)
        if len(owner) > len(rows):  # the mean over each history's orders
            scores = mean_over_owners(scores, owner, len(rows))
        row_ids = np.arange(scores.shape[0])
        positive = scores[row_ids, targets[rows]]
        if negatives is not None:
            candidate = np.take_along_axis(scores, negatives[rows], axis=1)
            sampled_ranks[rows] = pessimistic_ranks(positive, candidate)
        masked = scores.copy()
        masked[:, 0] = -np.inf
        history_lengths = [len(h) for h in histories]  # whole, unlike the clipped `lengths`
        masked[np.repeat(row_ids, history_lengths), np.concatenate(histories)] = -np.inf
        masked[row_ids, targets[rows]] = -np.inf  # the target competes only as the positive
        full_ranks[rows] = pessimistic_ranks(positive, masked)
        masked[row_ids, targets[rows]] = positive
        best = np.argpartition(-masked, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(masked, best, axis=1), axis=1, kind="stable")
        top_k[rows] = np.take_along_axis(best, order, axis=1)
    return RankedUsers(users=users, sampled_ranks=sampled_ranks, full_ranks=full_ranks,
                       top_k=top_k)


def full_ranking_per_user(scorer: Scorer, data: SequenceData, split: str, max_len: int,
                          batch_size: int = 256) -> dict[str, np.ndarray]:
    """Full-ranking accuracy of each of ``split``'s users (no sampled negatives needed).

    Training's per-epoch validation reads it, and so does an export's parity report: two
    scorers' arrays pair up user by user, which tells a real int8 loss from a few users'
    ranks flipping.

    Args:
        scorer: Maps (users, left-padded histories) to scores of all items.
        data: The prepared sequences.
        split: ``valid`` or ``test``.
        max_len: Length the histories are padded / cut to.
        batch_size: Users per scorer call.

    Returns:
        ``accuracy_per_user`` of the full ranks: each metric per user [U], in
        ``data.eval_users(split)`` order.
    """
    ranks = rank_users(scorer, data, split, max_len, batch_size=batch_size,
                       sampled=False).full_ranks
    return accuracy_per_user(ranks)
