"""Training batches for SSE-PT/SASRec: windows, negatives and Stochastic Shared Embeddings.

Every function is pure numpy driven by an explicit ``np.random.Generator``, so a batch is a
function of (data, seed, epoch) only. Item ids are 1..n_items and 0 is padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from movierec.models.config import ModelConfig

# Rejection rounds before the exact (complement) fallback; each round redraws only the
# rejected positions, so even a user who saw 90% of the catalogue finishes in a few rounds.
_MAX_REJECTION_ROUNDS = 32


def _gather_windows(flat: np.ndarray, offsets: np.ndarray, ends: np.ndarray,
                    max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded (input, target) windows of the histories' first ``ends`` pairs.

    Window ``r`` holds the last ``max_len`` of history ``r``'s first ``ends[r]`` pairs.
    History ``r`` is ``flat[offsets[r]:]``; its pair ``p`` is (item p, item p + 1). ``flat``
    must end with one spare element so that the look-ahead of padded slots stays in bounds.
    """
    pair = ends[:, None] - max_len + np.arange(max_len)
    valid = pair >= 0
    source = offsets[:, None] + np.where(valid, pair, 0)
    seqs = np.where(valid, flat[source], 0)
    targets = np.where(valid, flat[source + 1], 0)
    return seqs, targets


def training_window(history: np.ndarray, max_len: int, rng: np.random.Generator,
                    plus_plus: bool) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded input and target sequences of length ``max_len`` from one history.

    Inputs are ``history[:-1]`` and targets ``history[1:]``; the last ``max_len`` pairs are
    kept, or with ``plus_plus`` (SSE-PT++) a window whose end is drawn uniformly, so that the
    early part of a long history is trained too.
    """
    history = np.asarray(history, dtype=np.int64)
    n_pairs = max(history.size - 1, 0)
    end = n_pairs
    if plus_plus and n_pairs > max_len:
        end = int(rng.integers(max_len, n_pairs + 1))
    flat = np.append(history, np.zeros(2, dtype=np.int64))
    seqs, targets = _gather_windows(flat, np.zeros(1, dtype=np.int64),
                                    np.array([end]), max_len)
    return seqs[0], targets[0]


def sse_corrupt(users: np.ndarray, seqs: np.ndarray, targets: np.ndarray, n_users: int,
                n_items: int, prob_user: float, prob_item: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stochastic Shared Embeddings: randomly replace users and items (training only).

    Each sequence's user is replaced by a uniform user in 1..n_users with probability
    ``prob_user``; at each non-padded position the input item and its target are replaced
    (by two independent uniform items) with probability ``prob_item``. The reference's
    ``threshold_user=0.08, threshold_item=0.9`` are keep probabilities, i.e. 0.92 and 0.1 here.

    Returns:
        New ``(users, seqs, targets)`` arrays; the inputs are not modified.
    """
    users, seqs, targets = np.asarray(users), np.asarray(seqs), np.asarray(targets)
    replace_user = rng.random(users.shape) < prob_user
    new_users = np.where(replace_user, rng.integers(1, n_users + 1, size=users.shape), users)
    replace_item = (rng.random(seqs.shape) < prob_item) & (seqs != 0) & (targets != 0)
    new_seqs = np.where(replace_item, rng.integers(1, n_items + 1, size=seqs.shape), seqs)
    new_targets = np.where(replace_item, rng.integers(1, n_items + 1, size=seqs.shape), targets)
    return new_users, new_seqs, new_targets


def _contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Membership of ``queries`` in the sorted array ``sorted_keys``."""
    if sorted_keys.size == 0:
        return np.zeros(queries.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_keys, queries), sorted_keys.size - 1)
    return sorted_keys[at] == queries


def _draw_excluding(rows: np.ndarray, seen_keys: np.ndarray, n_items: int,
                    rng: np.random.Generator, targets: np.ndarray | None = None) -> np.ndarray:
    """One uniform item per entry of ``rows`` that row has not seen (nor that entry's target).

    ``seen_keys`` holds ``row * (n_items + 1) + item`` for every seen item, sorted; every row
    must have at least one unseen item. ``targets`` (one per entry) matters when SSE
    replaced a target by an item outside the history: a negative equal to its positive
    would push one logit up and down at once. Only when a row's one unseen item is that
    entry's target is the target drawn.
    """
    stride = n_items + 1

    def rejected(at: np.ndarray) -> np.ndarray:
        hit = _contains(seen_keys, rows[at] * stride + items[at])
        return hit | (items[at] == targets[at]) if targets is not None else hit

    items = rng.integers(1, n_items + 1, size=rows.shape)
    bad = np.flatnonzero(rejected(np.arange(rows.size)))
    for _ in range(_MAX_REJECTION_ROUNDS):
        if bad.size == 0:
            return items
        items[bad] = rng.integers(1, n_items + 1, size=bad.size)
        bad = bad[rejected(bad)]
    # Users who saw almost everything: draw from the explicit complement instead.
    catalogue = np.arange(1, n_items + 1)
    for i in bad:
        lo, hi = np.searchsorted(seen_keys, [rows[i] * stride, (rows[i] + 1) * stride])
        unseen = np.setdiff1d(catalogue, seen_keys[lo:hi] - rows[i] * stride)
        if targets is not None and unseen.size > 1:  # else the target is all that is left
            unseen = unseen[unseen != targets[i]]
        items[i] = rng.choice(unseen)
    return items


def _seen_array(user_items: Iterable[int] | np.ndarray, n_items: int) -> np.ndarray:
    """Sorted unique in-catalogue items of a history given as a set or an array."""
    values = user_items if isinstance(user_items, np.ndarray) else np.fromiter(user_items, np.int64)
    seen = np.unique(values.astype(np.int64))
    return seen[(seen >= 1) & (seen <= n_items)]


def sample_negatives(targets: np.ndarray, user_items: Iterable[int] | np.ndarray,
                     n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One negative per non-padded target, uniform over the items the user has not seen.

    A negative never equals its own target, even a target outside ``user_items``,
    unless that target is the one item the user has not seen.

    Args:
        targets: Target ids of one user, any shape; 0 marks padding (negative 0 there).
        user_items: The user's history (set or array); negatives avoid all of it.
        n_items: Catalogue size (items are 1..n_items).
        rng: Source of randomness.
    """
    targets = np.asarray(targets)
    seen = _seen_array(user_items, n_items)
    if seen.size >= n_items:
        raise ValueError(f"the user has seen all {n_items} items: no negative can be sampled")
    negatives = np.zeros(targets.shape, dtype=np.int64)
    where = targets != 0
    rows = np.zeros(int(where.sum()), dtype=np.int64)
    negatives[where] = _draw_excluding(rows, seen, n_items, rng, targets=targets[where])
    return negatives


class TrainingBatches:
    """Shuffled training batches of users, one window per user and epoch.

    Users with at least two training items are visited once per epoch in an order drawn
    from ``(seed, epoch)``; each batch holds ``users`` [b], ``seqs``, ``pos`` and (for BCE)
    ``neg`` [b, w], all int64, with SSE already applied. ``w <= max_len`` is the batch's
    longest window: shorter ones are left-padded to it.

    With ``config.shuffle_ties`` and the sequences' timestamps (``times``, aligned with
    ``train_sequences``), each epoch first reorders every run of a user's items that share
    one timestamp at random; without timestamps the given order is kept.
    """

    def __init__(self, train_sequences: Sequence[np.ndarray], n_users: int, n_items: int,
                 config: ModelConfig, batch_size: int, seed: int,
                 bucket_by_length: bool = True,
                 times: Sequence[np.ndarray] | None = None) -> None:
        if len(train_sequences) != n_users + 1:
            raise ValueError(
                f"train_sequences has {len(train_sequences)} entries, expected n_users + 1 = "
                f"{n_users + 1} (index = user id, entry 0 unused)"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be at least 1")
        self.n_users, self.n_items = n_users, n_items
        self.config, self.batch_size, self.seed = config, batch_size, seed
        self.bucket_by_length = bucket_by_length
        histories = [np.asarray(s, dtype=np.int64).reshape(-1) for s in train_sequences]
        lengths = np.array([h.size for h in histories])
        lengths[0] = 0
        self.users = np.flatnonzero(lengths >= 2)
        kept = [histories[u] for u in self.users]
        for user, history in zip(self.users, kept, strict=True):
            if history.min() < 1 or history.max() > n_items:
                raise ValueError(f"train_sequences[{user}] has item ids outside 1..{n_items}"
                                 " (0 is reserved for padding)")
        # One flat array plus offsets: windows are then a single vectorised gather.
        self._flat = np.concatenate([*kept, np.zeros(2, dtype=np.int64)])
        self._offsets = np.concatenate([[0], np.cumsum(lengths[self.users])[:-1]]).astype(np.int64)
        self._n_pairs = lengths[self.users] - 1
        seen = [np.unique(h) for h in kept]
        full = [int(user) for user, s in zip(self.users, seen, strict=True) if s.size >= n_items]
        if full:
            raise ValueError(f"users {full[:10]} have seen all {n_items} items, so no negative "
                             "can be sampled for them: leave them out of the training data")
        rows = np.repeat(np.arange(len(kept)), [s.size for s in seen])
        self._seen_keys = rows * (n_items + 1) + np.concatenate([*seen, np.zeros(0, np.int64)])
        self._ordered = self._flat
        self._tie_runs = (self._runs_of_equal_times(times, lengths)
                          if config.shuffle_ties and times is not None else None)

    def _runs_of_equal_times(self, times: Sequence[np.ndarray],
                             lengths: np.ndarray) -> np.ndarray | None:
        """Per element of ``_flat``, the number of its run of equal (user, timestamp)."""
        if len(times) != len(lengths):
            raise ValueError(f"times has {len(times)} entries, train_sequences {len(lengths)}")
        kept = [np.asarray(times[u], dtype=np.int64).reshape(-1) for u in self.users]
        for user, stamps in zip(self.users, kept, strict=True):
            if stamps.size != lengths[user]:
                raise ValueError(f"times[{user}] has {stamps.size} timestamps for "
                                 f"{lengths[user]} items")
        flat_times = np.concatenate([*kept, np.zeros(2, dtype=np.int64)])
        owner = np.repeat(np.arange(len(kept) + 1), [*(k.size for k in kept), 2])
        starts = np.r_[True, (np.diff(flat_times) != 0) | (np.diff(owner) != 0)]
        runs = np.cumsum(starts)
        # Nothing to shuffle when every real item starts a run of its own (the two padding
        # zeros at the end always form a run of two, so they are left out of the test).
        return None if starts[:-2].all() else runs

    def _batches(self, order: np.ndarray, window: np.ndarray,
                 rng: np.random.Generator) -> list[np.ndarray]:
        """Split the shuffled users into batches, grouping similar lengths when bucketing.

        Bucketing sorts each run of 32 batches' worth of users by window length, cuts it into
        batches and shuffles the batch order: batches stay random, but their rows have
        similar lengths, so little padding is left after trimming.
        """
        size = self.batch_size
        if self.bucket_by_length:
            chunk = size * 32
            order = np.concatenate([
                part[np.argsort(window[part], kind="stable")]
                for part in np.split(order, range(chunk, order.size, chunk))])
        batches = np.split(order, range(size, order.size, size))
        if self.bucket_by_length:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __len__(self) -> int:
        """Number of batches per epoch."""
        return -(-self.users.size // self.batch_size)

    @property
    def n_sequences(self) -> int:
        """Number of users trained per epoch (those with at least two training items)."""
        return int(self.users.size)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """Yield the batches of one epoch; the same (seed, epoch) gives the same batches."""
        config = self.config
        rng = np.random.default_rng([self.seed, epoch])
        if self._tie_runs is not None:
            # A random key inside each run: sorting by (run, key) permutes within runs only.
            self._flat = self._ordered[np.lexsort((rng.random(self._ordered.size),
                                                   self._tie_runs))]
        order = rng.permutation(self.users.size)
        ends = self._n_pairs.copy()
        if config.sse_pt_plus_plus:
            long = np.flatnonzero(ends > config.max_len)
            ends[long] = rng.integers(config.max_len, self._n_pairs[long] + 1)
        # SASRec has no user embedding, so replacing its users would only muddle the logs.
        prob_user = config.sse_prob_user if config.kind == "sse-pt" else 0.0
        window = np.minimum(ends, config.max_len)
        for rows in self._batches(order, window, rng):
            seqs, pos = _gather_windows(self._flat, self._offsets[rows], ends[rows],
                                        config.max_len)
            # Columns that are padding in every row change nothing (padding is masked and
            # positions are right-aligned): dropping them saves most of the compute.
            width = int(window[rows].max())
            seqs, pos = seqs[:, config.max_len - width:], pos[:, config.max_len - width:]
            users, seqs, pos = sse_corrupt(self.users[rows], seqs, pos, self.n_users,
                                           self.n_items, prob_user, config.sse_prob_item, rng)
            batch = {"users": users, "seqs": seqs, "pos": pos}
            if config.loss == "bce":
                neg = np.zeros(pos.shape, dtype=np.int64)
                where = pos != 0
                # Negatives avoid the true user's history, even when SSE swapped the user.
                row_of = np.broadcast_to(rows[:, None], pos.shape)[where]
                neg[where] = _draw_excluding(row_of, self._seen_keys, self.n_items, rng,
                                             targets=pos[where])
                batch["neg"] = neg
            yield {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64))
                   for k, v in batch.items()}
