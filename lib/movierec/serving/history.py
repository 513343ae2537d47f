"""Online history lookup: a user's stored history plus the watches accepted since training.

Stored histories come from the bundle (item indices); online watches come from ``/feedback``
and are kept by MovieLens ids, so they survive a bundle swap whose item indices differ.
"""

from __future__ import annotations

import bisect
import itertools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from movierec.data.tie_orders import trailing_tie_length
from movierec.serving.catalog import Catalog

IGNORED_GENRES = frozenset({"unknown", "(no genres listed)", ""})


class OnlineHistory:
    """Watch events per user, ordered by (timestamp, arrival), newest last.

    Memory is bounded twice: ``max_per_user`` events per user (a re-watch replaces the
    movie's earlier event rather than taking another place), and ``max_events`` in all,
    beyond which the users updated longest ago are forgotten. Forgotten watches stay in
    the feedback store (and in the next bundle's training data); only their online use
    until then is lost.

    Only the event loop mutates it (after the feedback store committed), so it needs no lock.
    """

    def __init__(self, max_per_user: int, max_events: int = 1_000_000) -> None:
        self.max_per_user = max_per_user
        self.max_events = max_events
        self._watches: OrderedDict[int, list[tuple[int, int, int]]] = OrderedDict()
        self._where: dict[int, dict[int, tuple[int, int, int]]] = {}  # user: movie: event
        self._arrival = itertools.count()
        self._total = 0

    def add(self, user_id: int, movie_id: int, timestamp: int) -> None:
        """Record one accepted watch; the oldest entries go beyond the limits.

        O(log n) plus one list move: the service replays every stored watch at start-up.
        """
        events = self._watches.setdefault(user_id, [])
        where = self._where.setdefault(user_id, {})
        self._watches.move_to_end(user_id)
        event = (timestamp, next(self._arrival), movie_id)
        earlier = where.get(movie_id)
        if earlier is not None:  # MovieLens has one rating per movie: keep the newest
            if earlier > event:
                return
            del events[bisect.bisect_left(events, earlier)]
            self._total -= 1
        bisect.insort(events, event)
        where[movie_id] = event
        self._total += 1
        if len(events) > self.max_per_user:
            for _, _, movie in events[: len(events) - self.max_per_user]:
                del where[movie]
            self._total -= len(events) - self.max_per_user
            del events[: len(events) - self.max_per_user]
        while self._total > self.max_events and len(self._watches) > 1:
            forgotten, gone = self._watches.popitem(last=False)
            del self._where[forgotten]
            self._total -= len(gone)

    def extend(self, watches: Iterable[tuple[int, int, int]]) -> int:
        """Add ``(user_id, movie_id, timestamp)`` triples; return how many were added."""
        count = 0
        for user_id, movie_id, timestamp in watches:
            self.add(user_id, movie_id, timestamp)
            count += 1
        return count

    def watches(self, user_id: int) -> list[tuple[int, int]]:
        """The user's online watches as (MovieLens id, timestamp), oldest first."""
        return [(movie, timestamp) for timestamp, _, movie in self._watches.get(user_id, ())]

    def __len__(self) -> int:
        return self._total


def _recent_online(catalog: Catalog, online: OnlineHistory,
                   user_id: int) -> tuple[list[int], list[int]]:
    """The user's online watches of known movies as (item indices, times), oldest first.

    Only the last watch of each item is kept (the one that moves it to the history's end).
    """
    known = [(catalog.idx_by_movie.get(movie), timestamp)
             for movie, timestamp in online.watches(user_id)]
    known = [(item, timestamp) for item, timestamp in known if item is not None]
    last = {item: position for position, (item, _) in enumerate(known)}
    kept = [pair for position, pair in enumerate(known) if last[pair[0]] == position]
    return [item for item, _ in kept], [timestamp for _, timestamp in kept]


def resolve_history(catalog: Catalog, online: OnlineHistory, user_id: int | None) -> np.ndarray:
    """The item indices a user has watched, oldest first (:func:`resolve_history_ties`)."""
    return resolve_history_ties(catalog, online, user_id)[0]


def resolve_history_ties(catalog: Catalog, online: OnlineHistory,
                         user_id: int | None) -> tuple[np.ndarray, int]:
    """A user's history, oldest first, and how many of its newest items share one second.

    The history is the stored one, then the online watches. An online watch of an item
    that is already in the history moves it to the end (a bundle trained on the feedback
    already holds those watches; MovieLens has one rating per movie). Online watches of
    movies this bundle does not know are skipped.

    The tie count comes from the online watches when there are any (a watch that shares
    the newest stored item's second is not counted: the bundle holds no stored times),
    else from the bundle's ``tie_tail``. 0 or 1 both mean "score the history as it is": 0
    for anonymous users, bundles without ``tie_tail`` and stored histories without a tie.
    Online watches of one second arrive in the client's order, which tie orders average
    away like the file's order of MovieLens ratings.

    Args:
        catalog: The served bundle's catalogue.
        online: Watches accepted since the bundle was built.
        user_id: MovieLens user id, or None for an anonymous request.

    Returns:
        int64 item indices (possibly empty), and the tie count.
    """
    if user_id is None:
        return np.zeros(0, dtype=np.int64), 0
    user_idx = catalog.user_idx_by_id.get(user_id)
    stored = catalog.histories.get(user_idx, None) if user_idx is not None else None
    recent, times = _recent_online(catalog, online, user_id)
    base = stored if stored is not None and stored.size else np.zeros(0, dtype=np.int64)
    if not recent:
        return base, catalog.tie_tails.get(user_idx, 0) if user_idx is not None else 0
    # Drop stored copies of online items: their last occurrence is the online one.
    if base.size:
        base = base[~np.isin(base, np.asarray(recent, dtype=np.int64))]
    return (np.concatenate([base, np.asarray(recent, dtype=np.int64)]),
            trailing_tie_length(times))


@dataclass(frozen=True)
class DemoUser:
    """A real user picked to show off a taste on the demo page."""

    user_id: int
    top_genre: str
    history_length: int


def pick_demo_users(catalog: Catalog, count: int = 3, min_history: int = 20,
                    pool: int = 2000) -> list[DemoUser]:
    """Pick users with clearly different tastes, deterministically.

    Each candidate (the ``pool`` users with the longest histories, at least ``min_history``
    items when enough exist) gets a dominant genre: the one whose share of their history
    most exceeds its share overall. Walking genres from the most watched overall, each genre
    gives the candidate dominated by it who watched the most of it, until ``count`` users
    are picked; users with the longest histories fill any gap.

    Args:
        catalog: The bundle's catalogue (histories and genres).
        count: How many users to return.
        min_history: Preferred minimum history length.
        pool: How many of the longest histories to consider (bounds the work on big data).

    Returns:
        Up to ``count`` users: those picked by genre, ordered by the popularity of their
        dominant genre, then any fill-ins by history length.
    """
    by_id = {idx: uid for uid, idx in catalog.user_idx_by_id.items()}
    users = [(uid, catalog.histories[idx]) for idx, uid in sorted(by_id.items())
             if idx in catalog.histories and catalog.histories[idx].size]
    if not users:
        return []
    users.sort(key=lambda pair: (-pair[1].size, pair[0]))
    users = users[:pool]
    rich = [pair for pair in users if pair[1].size >= min_history]
    candidates = rich if len(rich) >= count else users
    genres = sorted({g for m in catalog.movies if m for g in m.genres} - IGNORED_GENRES)
    picked: list[DemoUser] = []
    if genres:
        column = {g: i for i, g in enumerate(genres)}
        item_genre = np.zeros((catalog.n_items + 1, len(genres)), dtype=np.float64)
        for idx, movie in enumerate(catalog.movies):
            for genre in movie.genres if movie else ():
                if genre in column:
                    item_genre[idx, column[genre]] = 1.0
        counts = np.stack([item_genre[hist].sum(axis=0) for _, hist in candidates])
        lengths = np.array([hist.size for _, hist in candidates], dtype=np.float64)
        overall = counts.sum(axis=0)
        share = overall / max(overall.sum(), 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            lift = np.where(share > 0, (counts / lengths[:, None]) / share, 0.0)
        dominant = lift.argmax(axis=1)
        for g in np.argsort(-overall, kind="stable"):
            if len(picked) == count or overall[g] == 0:
                break
            members = np.flatnonzero(dominant == g)
            if members.size:
                best = members[np.argmax(counts[members, g])]
                uid, hist = candidates[best]
                picked.append(DemoUser(uid, genres[g], int(hist.size)))
    chosen = {user.user_id for user in picked}
    for uid, hist in users:
        if len(picked) >= count:
            break
        if uid not in chosen:
            top = _top_genre(catalog, hist)
            picked.append(DemoUser(uid, top, int(hist.size)))
            chosen.add(uid)
    return picked


def _top_genre(catalog: Catalog, history: np.ndarray) -> str:
    """The most frequent genre in a history ("" when none)."""
    tally: dict[str, int] = {}
    for item in history.tolist():
        for genre in catalog.movie(item).genres:
            if genre not in IGNORED_GENRES:
                tally[genre] = tally.get(genre, 0) + 1
    return max(sorted(tally), key=lambda g: tally[g]) if tally else ""
