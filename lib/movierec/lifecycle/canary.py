"""Canary statistics: traffic bucketing and the automatic analysis (pure functions).

The canary is promoted unless the evidence says it is worse than production: an error rate
or p95 latency over their limits, or an online hit rate significantly below production's
(one-sided at ``alpha``: a permutation test over users when the arms know them, else a
z-test over requests). Non-inferiority, not superiority: the offline gate already asked for
a better model; the canary asks whether it holds up live.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from movierec.lifecycle.config import CanaryConfig


def bucket(user_id: int, share: float, salt: str = "movierec-canary") -> bool:
    """Whether ``user_id`` goes to the canary: a stable hash, so a user always sees one arm."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass(frozen=True)
class ArmStats:
    """What one arm (canary or production) served during the canary.

    Attributes:
        requests: Recommendation requests sent.
        errors: Requests that failed (transport error or non-2xx).
        hits: Lists that held the movie the user watched next.
        p95_ms: 95th percentile latency of successful requests.
        per_user: (hits, served requests) of each user of the arm, when known; the hit-rate
            test then treats users, not requests, as the independent units.
    """

    requests: int
    errors: int
    hits: int
    p95_ms: float | None
    per_user: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        # Counts from a query or a command line: impossible ones would divide by zero or
        # promote on a hit rate above 1.
        if not 0 <= self.errors <= self.requests:
            raise ValueError(f"errors ({self.errors}) must be between 0 and the requests "
                             f"({self.requests})")
        if not 0 <= self.hits <= self.requests - self.errors:
            raise ValueError(f"hits ({self.hits}) must be between 0 and the requests served "
                             f"({self.requests} - {self.errors} errors)")

    @property
    def served(self) -> int:
        """Successful requests (the denominator of the hit rate)."""
        return self.requests - self.errors

    @property
    def error_rate(self) -> float:
        """Failed share of requests."""
        return self.errors / self.requests if self.requests else 0.0

    @property
    def hit_rate(self) -> float:
        """Share of served lists that held the next watched movie."""
        return self.hits / self.served if self.served else 0.0


def normal_cdf(z: float) -> float:
    """Standard normal CDF."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def two_proportion_test(hits_a: int, n_a: int, hits_b: int, n_b: int) -> tuple[float, float]:
    """Z statistic of ``p_a - p_b`` (pooled) and the one-sided p-value of ``p_a < p_b``.

    Returns ``(0.0, 1.0)`` when either arm is empty or the pooled rate is 0 or 1 (no
    evidence either way).
    """
    if n_a == 0 or n_b == 0:
        return 0.0, 1.0
    pooled = (hits_a + hits_b) / (n_a + n_b)
    variance = pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b)
    if variance <= 0.0:
        return 0.0, 1.0
    z = (hits_a / n_a - hits_b / n_b) / math.sqrt(variance)
    return z, normal_cdf(z)


# Up to this many ways of choosing the canary's users, the permutation test enumerates them
# all (exact p-value); beyond, it draws this many at random, seeded.
PERMUTATION_ASSIGNMENTS = 10_000


def clustered_z(hits: np.ndarray, served: np.ndarray, in_a: np.ndarray) -> np.ndarray:
    """Cluster-robust z of hit rate a minus b, for one or many assignments of users to arms.

    Each arm's hit rate is the ratio estimator ``sum(hits) / sum(served)`` with its
    cluster-robust variance ``K / (K - 1) * sum((h_u - r * n_u)^2) / (sum n)^2`` over its
    ``K`` users (the delta method). ``in_a`` is a boolean [users] or [assignments, users].
    Where both variances are 0, every user of an arm hit at the same rate: z is then 0 for
    equal rates and infinite (with the difference's sign) for different ones, the
    strongest evidence there is, not none.
    """
    hits, served = hits.astype(np.float64), served.astype(np.float64)
    rates, variances = [], []
    for member in (in_a, ~in_a):
        member = member.astype(np.float64)
        users, total = member.sum(-1), member @ served
        rate = (member @ hits) / total
        spread = member @ hits**2 - 2 * rate * (member @ (hits * served)) \
            + rate**2 * (member @ served**2)
        rates.append(rate)
        variances.append(users / (users - 1) * np.maximum(spread, 0.0) / total**2)
    variance = variances[0] + variances[1]
    difference = rates[0] - rates[1]
    safe = np.where(variance > 0, variance, 1.0)
    degenerate = np.where(difference == 0, 0.0, np.copysign(np.inf, difference))
    return np.where(variance > 0, difference / np.sqrt(safe), degenerate)


def user_permutation_test(per_user_a: Sequence[tuple[int, int]],
                          per_user_b: Sequence[tuple[int, int]],
                          seed: int = 0) -> tuple[float, float]:
    """Z of hit rate a minus b with users as the units, and its one-sided permutation p.

    A user always sees one arm and their requests share their tastes, so requests are not
    independent draws: a per-request test understates the noise when a few users send
    many requests. The statistic is ``clustered_z``, and its null distribution comes from
    reassigning the users to the two arms at random, as the bucketing did (a studentized
    permutation test: exact when the models make no difference to any user, and valid for
    equal mean hit rates as users grow). The normal approximation would not do: a short
    canary sees few users (the integration test's saw 4 and 3, where it gave p = 0.045 and
    this test 0.114). Returns ``(0.0, 1.0)`` when an arm has fewer than two users with
    served requests.
    """
    rows_a = [(h, n) for h, n in per_user_a if n > 0]
    rows_b = [(h, n) for h, n in per_user_b if n > 0]
    if len(rows_a) < 2 or len(rows_b) < 2:
        return 0.0, 1.0
    hits, served = np.array(rows_a + rows_b).T
    users, size_a = len(hits), len(rows_a)
    observed = np.arange(users) < size_a
    z = float(clustered_z(hits, served, observed))
    if math.comb(users, size_a) <= PERMUTATION_ASSIGNMENTS:
        chosen = np.array(list(itertools.combinations(range(users), size_a)))
        assignments = np.zeros((len(chosen), users), dtype=bool)
        np.put_along_axis(assignments, chosen, True, axis=1)
        extra = 0  # the observed assignment is among those enumerated
    else:
        rng = np.random.default_rng(seed)
        assignments = rng.permuted(np.tile(observed, (PERMUTATION_ASSIGNMENTS, 1)), axis=1)
        extra = 1  # counting the observed one keeps a drawn p-value valid
    at_most = np.count_nonzero(clustered_z(hits, served, assignments) <= z + 1e-12)
    return z, float((at_most + extra) / (len(assignments) + extra))


def smallest_permutation_p(users_a: int, users_b: int) -> float:
    """The smallest p-value :func:`user_permutation_test` can return for arms this size.

    When it is not below ``alpha``, the canary could hit nothing at all and still not be
    found worse: the test has no power, and its "no evidence" means nothing.
    """
    if users_a < 2 or users_b < 2:
        return 1.0
    ways = math.comb(users_a + users_b, users_a)
    return 1.0 / ways if ways <= PERMUTATION_ASSIGNMENTS else 1.0 / (PERMUTATION_ASSIGNMENTS + 1)


@dataclass(frozen=True)
class CanaryAnalysis:
    """The decision and every number behind it (saved with the run's report)."""

    promote: bool
    reasons: list[str]
    canary: dict[str, Any]
    production: dict[str, Any]
    hit_rate_diff: float
    z: float
    p_value: float
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _arm_dict(arm: ArmStats) -> dict[str, Any]:
    counts = {k: v for k, v in asdict(arm).items() if k != "per_user"}
    return {**counts, "users": len(arm.per_user) or None, "error_rate": arm.error_rate,
            "hit_rate": arm.hit_rate}


def analyze(canary: ArmStats, production: ArmStats, config: CanaryConfig,
            seed: int = 0) -> CanaryAnalysis:
    """Promote unless the canary errs, is slow, or hits significantly less than production.

    The hit-rate test counts users as the independent units when both arms know theirs
    (``ArmStats.per_user``: ``user_permutation_test``), else requests (aggregate counts, as
    ``movierec canary analyze`` takes them). ``seed`` draws the permutations when there
    are too many to enumerate.
    """
    reasons = []
    if canary.per_user and production.per_user:
        z, p_value = user_permutation_test(canary.per_user, production.per_user, seed)
        users = [sum(1 for _, n in arm.per_user if n > 0) for arm in (canary, production)]
        if canary.requests and smallest_permutation_p(*users) >= config.alpha:
            reasons.append(f"too few users to test the hit rate ({users[0]} on the canary, "
                           f"{users[1]} on production: the smallest attainable p is "
                           f"{smallest_permutation_p(*users):.3f}, not below alpha="
                           f"{config.alpha:g}); replay more traffic (canary.events)")
    else:
        z, p_value = two_proportion_test(canary.hits, canary.served,
                                         production.hits, production.served)
    if canary.requests == 0:
        reasons.append("the canary received no traffic")
    if production.served == 0:  # a hit rate compared with nothing would promote anything
        reasons.append(f"production served none of its {production.requests} requests: no "
                       "baseline to compare the canary with (is production up?)")
    if canary.error_rate > config.max_error_rate:
        reasons.append(f"error rate {canary.error_rate:.2%} > {config.max_error_rate:.2%}")
    if canary.p95_ms is not None and canary.p95_ms > config.slo_p95_ms:
        reasons.append(f"p95 latency {canary.p95_ms:.0f} ms > SLO {config.slo_p95_ms:.0f} ms")
    if p_value < config.alpha:
        reasons.append(f"hit rate {canary.hit_rate:.3f} is significantly below production's "
                       f"{production.hit_rate:.3f} (one-sided p={p_value:.4f} < "
                       f"alpha={config.alpha:g})")
    if not reasons:
        reasons.append(f"no evidence the canary is worse: hit rate {canary.hit_rate:.3f} vs "
                       f"{production.hit_rate:.3f} (p={p_value:.3f}), errors "
                       f"{canary.error_rate:.2%}, p95 {canary.p95_ms or 0:.0f} ms")
        promote = True
    else:
        promote = False
    return CanaryAnalysis(promote, reasons, _arm_dict(canary), _arm_dict(production),
                          canary.hit_rate - production.hit_rate, z, p_value, config.alpha)
