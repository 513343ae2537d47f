"""Top k of score rows: history masked, ties to the lower item index, one pass per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

Ranked = tuple[np.ndarray, np.ndarray]  # item indices (best first) and their scores


class Ranker(Protocol):
    """What serving needs from a model: rank a batch; an in-process or a child-process one."""

    providers: list[str]

    @property
    def alive(self) -> bool:
        """Whether the model can still answer."""

    def rank(self, users: np.ndarray, histories: Sequence[np.ndarray], ks: Sequence[int],
             excludes: Sequence[np.ndarray | None],
             ties: Sequence[int] | None = None) -> list[Ranked]:
        """Each row's top ``ks[row]`` item indices (best first) and scores.

        ``ties`` (None: none) is how many of each history's newest items share one
        timestamp; the model scores such a history over their orders.
        """

    def close(self) -> None:
        """Release the model (a no-op in process)."""


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray,
                                                                                  np.ndarray]:
    """The ``k`` best item indices (best first, ties to the lower index) and their scores.

    Column 0 (padding), ``exclude`` and non-finite scores are never returned, so fewer
    than ``k`` items come back when fewer remain.
    """
    return top_k_rows(np.asarray(scores)[None, :], [k], [exclude])[0]


def top_k_rows(scores: np.ndarray, ks: Sequence[int],
               excludes: Sequence[np.ndarray | None]) -> list[Ranked]:
    """:func:`top_k` of every row of ``scores`` [B, C] at once (row ``r`` keeps ``ks[r]``).

    One vectorised pass for a whole micro-batch: the model ranks a batch in about
    the time the event loop took for two requests one by one.
    """
    # A copy, so the caller's rows stay untouched; float32 scores stay float32 (the model's
    # own precision: partitioning them is twice as fast as float64), anything else float64.
    s = np.array(scores, dtype=np.float32 if scores.dtype == np.float32 else np.float64)
    rows, columns = s.shape
    s[:, 0] = -np.inf
    masked = [(row, seen) for row, seen in enumerate(excludes) if seen is not None and seen.size]
    if masked:
        s[np.concatenate([np.full(seen.size, row) for row, seen in masked]),
          np.concatenate([seen for _, seen in masked])] = -np.inf
    finite = np.isfinite(s)
    available = finite.sum(axis=1)
    if not finite.all():
        s[~finite] = -np.inf  # NaN would otherwise sort first
    width = min(max(ks, default=0), columns)
    if width <= 0:
        return [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))] * rows
    candidates = (np.argpartition(s, columns - width, axis=1)[:, columns - width:]
                  if width < columns else np.broadcast_to(np.arange(columns), (rows, columns)))
    values = np.take_along_axis(s, candidates, axis=1)
    if width < columns:
        # The partition keeps an arbitrary subset of values tied with the k-th best; where
        # such a tie straddles the cut (rare with real scores), keep the lowest indices.
        kth = values.min(axis=1)
        straddling = np.flatnonzero(np.isfinite(kth)
                                    & (np.count_nonzero(s >= kth[:, None], axis=1) > width))
        for row in straddling:
            above = np.flatnonzero(s[row] > kth[row])
            tied = np.flatnonzero(s[row] == kth[row])[:width - above.size]
            candidates[row] = np.concatenate([above, tied])
            values[row] = s[row, candidates[row]]
    order = np.lexsort((candidates, -values), axis=1)  # best first, ties to the lower index
    best = np.take_along_axis(candidates, order, axis=1).astype(np.int64)
    values = np.take_along_axis(values, order, axis=1)
    return [(best[row, :n], values[row, :n])
            for row, n in enumerate(np.minimum(np.asarray(ks), available).tolist())]
