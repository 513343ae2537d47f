"""Canary statistics: traffic bucketing and the automatic analysis (pure functions).

The canary is promoted unless the evidence says it is worse than production: an error rate
or p95 latency over their limits, or an online hit rate significantly below production's
(a one-sided z-test at ``alpha``, with users as the independent units when the arms know
them). Non-inferiority, not superiority: the offline gate already asked for a better model;
the canary asks whether it holds up live.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

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


def clustered_proportion_test(per_user_a: Sequence[tuple[int, int]],
                              per_user_b: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """Like ``two_proportion_test``, with users as the independent units.

    A user always sees one arm and their requests share their tastes, so requests are not
    independent draws: the per-request test understates the noise when a few users send
    many requests. Each arm's hit rate is the ratio estimator ``sum(hits) / sum(served)``
    with its cluster-robust variance ``K / (K - 1) * sum((h_u - r * n_u)^2) / (sum n)^2``
    over its ``K`` users (the delta method). Returns ``(0.0, 1.0)`` when an arm has fewer
    than two users with served requests or both variances are 0.
    """
    rates, variances = [], []
    for per_user in (per_user_a, per_user_b):
        rows = [(h, n) for h, n in per_user if n > 0]
        if len(rows) < 2:
            return 0.0, 1.0
        total = sum(n for _, n in rows)
        rate = sum(h for h, _ in rows) / total
        spread = sum((h - rate * n) ** 2 for h, n in rows)
        rates.append(rate)
        variances.append(len(rows) / (len(rows) - 1) * spread / total**2)
    variance = sum(variances)
    if variance <= 0.0:
        return 0.0, 1.0
    z = (rates[0] - rates[1]) / math.sqrt(variance)
    return z, normal_cdf(z)


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


def analyze(canary: ArmStats, production: ArmStats, config: CanaryConfig) -> CanaryAnalysis:
    """Promote unless the canary errs, is slow, or hits significantly less than production.

    The hit-rate test counts users as the independent units when both arms know theirs
    (``ArmStats.per_user``), else requests (aggregate counts, as ``movierec canary
    analyze`` takes them).
    """
    if canary.per_user and production.per_user:
        z, p_value = clustered_proportion_test(canary.per_user, production.per_user)
    else:
        z, p_value = two_proportion_test(canary.hits, canary.served,
                                         production.hits, production.served)
    reasons = []
    if canary.requests == 0:
        reasons.append("the canary received no traffic")
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
