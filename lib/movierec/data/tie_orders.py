"""Score a history whose newest items share one timestamp as the mean over their orders.

MovieLens records ratings to the second, and users rate in bursts: 44% of ml-100k's
validation items have the same second as the item before them. The order of such items in
a history is the file's, which means nothing, yet a sequential model reads the newest
item as the strongest signal. So a history that ends in a run of k tied items is scored
in up to ``max_orders`` orders of that run, its cyclic rotations (each puts a different
item last), and the scores are averaged. Averaging raw scores ranks items as averaging
log-softmaxes does: the two differ by one constant per history.

Pure numpy, so the ONNX service can use it without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def trailing_tie_length(times: np.ndarray | Sequence[int] | None) -> int:
    """How many of a history's newest items share its newest timestamp.

    Args:
        times: The history's timestamps, oldest first.

    Returns:
        The length of that run: 1 when the newest item has a second of its own, 0 when
        ``times`` is None or empty. Below 2 there is nothing to reorder.
    """
    if times is None or len(times) == 0:
        return 0
    times = np.asarray(times)
    earlier = np.flatnonzero(times != times[-1])
    return int(times.size - (earlier[-1] + 1 if earlier.size else 0))


def expand_orders(histories: Sequence[np.ndarray], tie_lengths: Sequence[int] | np.ndarray,
                  max_orders: int,
                  window: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Each history, then the other orders of its trailing tied items.

    Args:
        histories: Item histories, oldest first.
        tie_lengths: Tied items at each history's end (``trailing_tie_length``); below 2
            there is nothing to reorder.
        max_orders: Orders per history at most, the original included (1: off).
        window: The newest items the model reads (``max_len``): the run is clipped to it,
            so a reordering never changes which items the model sees.

    Returns:
        The histories with the reordered copies after them (the originals unchanged, in
        their order), and ``owner``: the index of each one's original. A run of k items
        gets min(k, max_orders) cyclic rotations, spread evenly over k.
    """
    expanded, owner = list(histories), list(range(len(histories)))
    for row, (history, ties) in enumerate(zip(histories, tie_lengths, strict=True)):
        k = min(int(ties), len(history), len(history) if window is None else window)
        orders = min(k, max_orders)
        if orders < 2:
            continue
        head, run = history[:len(history) - k], history[len(history) - k:]
        for j in range(1, orders):
            expanded.append(np.concatenate([head, np.roll(run, (j * k) // orders)]))
            owner.append(row)
    return expanded, np.asarray(owner, dtype=np.int64)


def mean_over_owners(scores: np.ndarray, owner: np.ndarray, n_rows: int) -> np.ndarray:
    """Average the score rows of each original history.

    Args:
        scores: Scores of the histories :func:`expand_orders` returned, [R, C].
        owner: The index of each row's original, [R]; the first ``n_rows`` are the
            originals themselves (``0..n_rows - 1``), the copies may follow in any order.
        n_rows: The number of original histories.

    Returns:
        [n_rows, C] float64: each original's mean over its own row and its copies.
    """
    total = scores[:n_rows].astype(np.float64)
    copies = owner[n_rows:]
    if copies.size:
        order = np.argsort(copies, kind="stable")  # each history's copies next to each other
        grouped = copies[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        total[grouped[starts]] += np.add.reduceat(
            scores[n_rows:][order].astype(np.float64), starts, axis=0)
    return total / np.bincount(owner, minlength=n_rows)[:, None]
