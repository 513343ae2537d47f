"""Offline gate and canary statistics on crafted inputs (pure functions)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from movierec.lifecycle.canary import (
    ArmStats,
    analyze,
    bucket,
    normal_cdf,
    smallest_permutation_p,
    two_proportion_test,
    user_permutation_test,
)
from movierec.lifecycle.config import CanaryConfig, GateConfig, LifecycleConfig
from movierec.lifecycle.gates import full_ranks, offline_gate


def test_gate_passes_without_production_only_when_parity_passed() -> None:
    cand = np.full(50, 0.3)
    assert offline_gate(cand, None, GateConfig()).passed
    failed = offline_gate(cand, None, GateConfig(), parity_passed=False)
    assert not failed.passed and "parity" in failed.reason


def test_gate_compares_on_the_same_users() -> None:
    rng = np.random.default_rng(0)
    prod = rng.uniform(0, 1, 400)
    better = offline_gate(prod + 0.05, prod, GateConfig())
    assert better.passed and better.gain == pytest.approx(0.05)
    assert better.gain_ci[0] == pytest.approx(0.05) and better.gain_ci[1] == pytest.approx(0.05)
    worse = offline_gate(prod - 0.01, prod, GateConfig())
    assert not worse.passed and "does not beat" in worse.reason
    equal = offline_gate(prod.copy(), prod, GateConfig())
    assert not equal.passed  # a tie does not beat production
    with pytest.raises(ValueError, match="same panel"):
        offline_gate(prod[:10], prod, GateConfig())


def test_gate_min_gain_and_significance() -> None:
    rng = np.random.default_rng(1)
    prod = rng.uniform(0, 1, 300)
    noisy = prod + rng.normal(0.004, 0.2, 300)  # small mean gain, wide interval
    assert offline_gate(noisy, prod, GateConfig(min_gain=0.0)).gain > 0
    strict = offline_gate(noisy, prod, GateConfig(require_significant=True))
    assert strict.gain_ci[0] < 0 and not strict.passed
    assert not offline_gate(prod + 0.02, prod, GateConfig(min_gain=0.03)).passed


def test_gate_fails_on_parity_even_when_better() -> None:
    prod = np.full(20, 0.1)
    result = offline_gate(prod + 0.5, prod, GateConfig(), parity_passed=False)
    assert not result.passed and "parity" in result.reason
    # Not scored at all: no candidate number or gain is invented for the report.
    unscored = offline_gate(None, prod, GateConfig(), parity_passed=False)
    assert not unscored.passed and "not scored" in unscored.reason
    assert (unscored.candidate_ndcg, unscored.gain, unscored.production_ndcg) == (
        None, None, pytest.approx(0.1))
    with pytest.raises(ValueError, match="must be scored"):
        offline_gate(None, prod, GateConfig())


def test_full_ranks_exclude_seen_items_and_padding() -> None:
    scores = np.array([[9.0, 5.0, 4.0, 3.0, 2.0],
                       [9.0, 1.0, 2.0, 3.0, 4.0]])
    # Row 0: target 3 (score 3); item 1 (seen) and padding are not ranked -> item 2 beats it.
    # Row 1: target 1 has the lowest score of 4 real items, nothing seen -> rank 3.
    ranks = full_ranks(scores, [np.array([1]), np.array([], dtype=np.int64)], np.array([3, 1]))
    assert ranks.tolist() == [1, 3]
    tie = full_ranks(np.array([[0.0, 1.0, 1.0]]), [np.array([], dtype=np.int64)], np.array([1]))
    assert tie.tolist() == [1]  # pessimistic: a tie counts against the target
    # A diverged model's NaN target ranks last, not first (it scored NDCG +inf before).
    nan = full_ranks(np.array([[0.0, 0.5, np.nan, 0.2, 0.1]]), [np.array([], dtype=np.int64)],
                     np.array([2]))
    assert nan.tolist() == [3]
    assert not offline_gate(np.array([0.5, np.nan]), None, GateConfig()).passed


def test_two_proportion_test_hand_computed() -> None:
    z, p = two_proportion_test(30, 100, 50, 100)
    pooled = 0.4
    expected = (0.3 - 0.5) / math.sqrt(pooled * 0.6 * (2 / 100))
    assert z == pytest.approx(expected)
    assert p == pytest.approx(normal_cdf(expected))
    assert two_proportion_test(0, 0, 5, 10) == (0.0, 1.0)
    assert two_proportion_test(0, 10, 0, 10) == (0.0, 1.0)


def _alarm_rate(p_canary: float, p_prod: float, n: int, trials: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    config = CanaryConfig(alpha=0.05)
    alarms = 0
    for _ in range(trials):
        canary = ArmStats(n, 0, int(rng.binomial(n, p_canary)), 10.0)
        prod = ArmStats(n * 3, 0, int(rng.binomial(n * 3, p_prod)), 10.0)
        alarms += not analyze(canary, prod, config).promote
    return alarms / trials


def test_canary_false_alarm_rate_is_near_alpha() -> None:
    rate = _alarm_rate(0.2, 0.2, 400, 2000, seed=0)
    assert 0.03 <= rate <= 0.07, rate


def test_canary_detects_a_clearly_worse_model() -> None:
    assert _alarm_rate(0.12, 0.2, 400, 500, seed=1) >= 0.9


def _users_arm(rng: np.random.Generator, users: int, mean: float) -> ArmStats:
    """An arm whose users differ: each has a hit propensity and sends 1-60 requests."""
    per_user = []
    for _ in range(users):
        served = int(rng.integers(1, 61))
        propensity = rng.beta(2 * mean / (1 - mean), 2)  # mean `mean`, wide spread
        per_user.append((int(rng.binomial(served, propensity)), served))
    return ArmStats(sum(n for _, n in per_user), 0, sum(h for h, _ in per_user), 10.0,
                    per_user=tuple(per_user))


def test_the_canary_counts_users_not_requests_as_independent() -> None:
    # Equal arms, few users with many correlated requests each: a test that counts
    # requests raises false alarms far above alpha; one that counts users does not.
    rng = np.random.default_rng(3)
    config = CanaryConfig(alpha=0.05)
    per_request = per_user = 0
    trials = 400
    for _ in range(trials):
        canary, prod = _users_arm(rng, 30, 0.2), _users_arm(rng, 70, 0.2)
        per_user += not analyze(canary, prod, config).promote
        aggregate = ArmStats(canary.requests, 0, canary.hits, 10.0)
        per_request += not analyze(aggregate, ArmStats(prod.requests, 0, prod.hits, 10.0),
                                   config).promote
    assert per_request / trials > 0.15, per_request / trials
    assert per_user / trials <= 0.09, per_user / trials
    # The per-user test still sees a clearly worse canary.
    worse = sum(not analyze(_users_arm(rng, 40, 0.08), _users_arm(rng, 90, 0.25),
                            config).promote for _ in range(100))
    assert worse >= 90, worse


def test_the_user_permutation_test_is_exact_on_a_hand_made_case() -> None:
    # Users (hits, served): canary 0/2 and 1/2, production 2/2 and 1/2. Of the 6 ways to
    # pick two canary users, two give z as low as observed ({0/2, 1/2} twice, since two
    # users are 1/2): p = 2/6.
    z, p = user_permutation_test([(0, 2), (1, 2)], [(2, 2), (1, 2)])
    assert z < 0 and p == pytest.approx(1 / 3)
    assert user_permutation_test([(0, 2)], [(2, 2), (1, 2)]) == (0.0, 1.0)  # one user: no test


def test_a_short_canary_with_few_users_is_not_judged_by_a_normal_approximation() -> None:
    # The integration test's canary with spectral item embeddings: 4 canary users and 3
    # production users. The cluster-robust z read against a normal would roll it back.
    canary, production = [(9, 20), (16, 67), (3, 16), (9, 90)], [(19, 64), (5, 21), (10, 22)]
    z, p = user_permutation_test(canary, production)
    assert normal_cdf(z) < 0.05 < p
    # Equal arms of 6 and 14 users: the normal approximation's false alarms are far above
    # alpha, the permutation test's are not.
    rng = np.random.default_rng(5)
    trials, permutation_alarms, normal_alarms = 600, 0, 0
    for _ in range(trials):
        a, b = _users_arm(rng, 6, 0.2), _users_arm(rng, 14, 0.2)
        z, p = user_permutation_test(a.per_user, b.per_user)
        permutation_alarms += p < 0.05
        normal_alarms += normal_cdf(z) < 0.05
    assert permutation_alarms / trials <= 0.08, permutation_alarms / trials
    assert normal_alarms / trials >= 0.09, normal_alarms / trials


def _per_user_arm(per_user: list[tuple[int, int]]) -> ArmStats:
    return ArmStats(sum(n for _, n in per_user), 0, sum(h for h, _ in per_user), 10.0,
                    per_user=tuple(per_user))


def test_a_canary_too_small_to_be_found_worse_is_not_promoted() -> None:
    config = CanaryConfig(alpha=0.05)
    # One canary user who hit nothing: the permutation test cannot run at all.
    lone = analyze(_per_user_arm([(0, 40)]), _per_user_arm([(20, 40)] * 5), config)
    assert not lone.promote and "too few users" in lone.reasons[0]
    # 3 + 3 users: 20 ways to split them, so p >= 1/20 = alpha whatever the canary does.
    assert smallest_permutation_p(3, 3) == pytest.approx(0.05)
    small = analyze(_per_user_arm([(0, 10)] * 3), _per_user_arm([(4, 8)] * 3), config)
    assert not small.promote and "smallest attainable p is 0.050" in small.reasons[0]
    # 4 + 4 users can be tested: all canary users at 0 against all production users at
    # 1/2 is the most extreme split of 70 (identical users are evidence, not noise).
    worse = analyze(_per_user_arm([(0, 10)] * 4), _per_user_arm([(4, 8)] * 4), config)
    assert worse.z == -np.inf and worse.p_value == pytest.approx(1 / 70)
    assert not worse.promote and "significantly below" in worse.reasons[0]
    same = analyze(_per_user_arm([(4, 8)] * 4), _per_user_arm([(4, 8)] * 4), config)
    assert same.promote and same.z == 0.0


def test_canary_rolls_back_on_errors_and_latency() -> None:
    prod = ArmStats(1000, 0, 200, 20.0)
    errors = analyze(ArmStats(1000, 50, 200, 20.0), prod, CanaryConfig())
    assert not errors.promote and "error rate" in errors.reasons[0]
    slow = analyze(ArmStats(1000, 0, 200, 900.0), prod, CanaryConfig(slo_p95_ms=200))
    assert not slow.promote and "p95" in slow.reasons[0]
    empty = analyze(ArmStats(0, 0, 0, None), prod, CanaryConfig())
    assert not empty.promote
    fine = analyze(ArmStats(1000, 0, 210, 20.0), prod, CanaryConfig())
    assert fine.promote and fine.hit_rate_diff == pytest.approx(0.01)


def test_bucket_is_stable_and_splits_by_share() -> None:
    users = range(20_000)
    share = np.mean([bucket(u, 0.3) for u in users])
    assert share == pytest.approx(0.3, abs=0.015)
    assert [bucket(u, 0.3) for u in range(100)] == [bucket(u, 0.3) for u in range(100)]
    assert not any(bucket(u, 0.0) for u in range(100))


def test_the_report_shows_an_unscored_candidate_as_such(tmp_path: Path) -> None:
    from movierec.lifecycle.report import format_summary, plot_run

    gate = offline_gate(None, np.full(20, 0.1), GateConfig(), parity_passed=False)
    summary = {"steps": {"offline_gate": gate.to_dict()}, "decision": "rolled_back",
               "reason": gate.reason}
    text = format_summary(summary)
    assert "NDCG@10 candidate - vs production 0.1000" in text
    assert plot_run(summary, tmp_path / "run.png") is not None  # production's bar alone


class _Recorder:
    """A backend and a registry (aliases in a dict) that record what the pipeline asks."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, follows_alias: bool = False,
                 failing: tuple[str, ...] = ()) -> None:
        from movierec.registry import mlflow_registry

        self.name, self.follows_alias, self.failing = "fake", follows_alias, failing
        self.calls: list[tuple[str, ...]] = []
        self.aliases: dict[str, str] = {}

        def set_alias(alias: str, version: str, why: str) -> None:
            self.calls.append(("alias", alias, version))
            self.aliases[alias] = version

        def remove_alias(alias: str, why: str) -> None:
            self.calls.append(("unalias", alias))
            del self.aliases[alias]

        monkeypatch.setattr(mlflow_registry, "set_alias", set_alias)
        monkeypatch.setattr(mlflow_registry, "remove_alias", remove_alias)
        monkeypatch.setattr(mlflow_registry, "current_version", self.aliases.get)

    def deploy(self, stage: str, version: str) -> dict[str, str]:
        self.calls.append(("deploy", stage, version))
        if f"deploy {version}" in self.failing:
            raise TimeoutError(f"{stage} did not answer /ready in time")
        return {"how": "fake"}

    def retire(self, stage: str) -> None:
        self.calls.append(("retire", stage))
        if "retire" in self.failing:
            raise TimeoutError(f"{stage} still serves 30 s after it was retired")

    def serving_version(self, stage: str) -> None:
        return None

    def stage_url(self, stage: str) -> str:
        return f"http://127.0.0.1:9/{stage}"

    def pipeline(self) -> object:
        from movierec.lifecycle.pipeline import Pipeline
        from movierec.training.config import TrainConfig

        return Pipeline(LifecycleConfig(), TrainConfig(), self,  # type: ignore[arg-type]
                        say=lambda _: None)


def test_a_crashed_canary_analysis_rolls_the_canary_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.lifecycle import pipeline as pipeline_module

    fake = _Recorder(monkeypatch)

    def no_traffic_left(world: object, events: int) -> None:
        raise ValueError("no future interactions are left to replay")

    monkeypatch.setattr(pipeline_module, "take_events", no_traffic_left)
    run = fake.pipeline()
    run._canary(world=None, version="7")  # type: ignore[attr-defined]
    assert fake.calls == [("deploy", "canary", "7"), ("alias", "canary", "7"),
                          ("unalias", "canary"), ("retire", "canary")]
    assert run.summary["decision"] == "rolled_back"  # type: ignore[attr-defined]
    assert "crashed: ValueError: no future interactions" in run.summary["reason"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("follows_alias", [True, False])
def test_a_failed_candidate_deploy_is_undone_before_the_error_goes_on(
        monkeypatch: pytest.MonkeyPatch, follows_alias: bool) -> None:
    fake = _Recorder(monkeypatch, follows_alias=follows_alias, failing=("deploy 7",))
    run = fake.pipeline()
    with pytest.raises(TimeoutError, match="did not answer"):
        run._canary(world=None, version="7")  # type: ignore[attr-defined]
    if follows_alias:  # the alias moved first (the pods load it): it comes off again
        assert fake.calls == [("alias", "canary", "7"), ("deploy", "canary", "7"),
                              ("unalias", "canary"), ("retire", "canary")]
    else:  # the deploy went first and failed: no alias moved, the stage stops
        assert fake.calls == [("deploy", "canary", "7"), ("retire", "canary")]
    assert "canary" not in fake.aliases
    assert "TimeoutError" in run.summary["steps"]["canary"]["deploy"]["failed"]  # type: ignore[attr-defined]


def test_a_failed_staging_deploy_serves_the_tested_version_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _Recorder(monkeypatch, failing=("deploy 7",))
    fake.aliases["staging"] = "5"  # staging serves the last candidate, tested and promoted
    run = fake.pipeline()
    with pytest.raises(TimeoutError):
        run._deploy_candidate("staging", "7", "passed the offline gate")  # type: ignore[attr-defined]
    # The alias never moved off 5 (deploy first, alias after): 5 is served again, not stopped.
    assert fake.calls == [("deploy", "staging", "7"), ("deploy", "staging", "5")]
    assert fake.aliases == {"staging": "5"}


def test_a_promotion_stands_when_the_canary_cannot_be_taken_down(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.registry import mlflow_registry

    fake = _Recorder(monkeypatch, failing=("retire",))
    fake.aliases.update(production="6", canary="7")
    run = fake.pipeline()
    run._promote("7", "canary analysis: no evidence the canary is worse")  # type: ignore[attr-defined]
    assert fake.aliases == {"production": "7"}
    assert run.summary["decision"] == "promoted"  # type: ignore[attr-defined]
    assert "could not take canary down" in run.summary["steps"]["canary"]["cleanup_failed"]  # type: ignore[attr-defined]

    def unreachable(alias: str) -> None:
        raise ConnectionError("MLflow went away")

    # MLflow gone after production moved: still promoted (the canary is cleaned up later).
    fake.aliases.update(production="6", canary="7")
    monkeypatch.setattr(mlflow_registry, "current_version", unreachable)
    run = fake.pipeline()
    run._promote("7", "canary analysis")  # type: ignore[attr-defined]
    assert run.summary["decision"] == "promoted"  # type: ignore[attr-defined]
    # No canary at all (the first production model): nothing to take down, nothing retired.
    fake = _Recorder(monkeypatch)
    run = fake.pipeline()
    run._promote("1", "first production model")  # type: ignore[attr-defined]
    assert ("retire", "canary") not in fake.calls and fake.aliases == {"production": "1"}


def test_a_canary_is_not_promoted_when_production_served_nothing() -> None:
    canary = _per_user_arm([(3, 10)] * 6)
    down = ArmStats(40, 40, 0, None)  # every production request failed
    analysis = analyze(canary, down, CanaryConfig())
    assert not analysis.promote and "no baseline" in analysis.reasons[0]
    aggregate = analyze(ArmStats(60, 0, 18, 10.0), down, CanaryConfig())
    assert not aggregate.promote and "no baseline" in aggregate.reasons[0]


def test_platform_ports_must_name_one_service_each() -> None:
    from pydantic import ValidationError

    from movierec.lifecycle.config import PlatformConfig

    ports = {"production": 8000, "staging": 8001, "canary": 8002}
    assert PlatformConfig(ports=ports).url("canary") == "http://127.0.0.1:8002"
    for bad, message in (({**ports, "canary": 8000}, "a port of its own"),
                         ({**ports, "staging": 5000}, "a port of its own"),  # MLflow's
                         ({**ports, "canary": 70000}, "outside 1-65535"),
                         ({"production": 8000, "staging": 8001}, "no port for canary")):
        with pytest.raises(ValidationError, match=message):
            PlatformConfig(ports=bad)


def test_staging_load_seconds_are_whole_seconds() -> None:
    from pydantic import ValidationError

    from movierec.lifecycle.config import StagingConfig

    assert StagingConfig(load_seconds=3).load_seconds == 3
    with pytest.raises(ValidationError, match="fractional part"):
        StagingConfig(load_seconds=2.5)  # locust's -t 2.5s is an error, found mid-pipeline
