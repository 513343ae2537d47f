"""The whole loop on one machine: what ``make demo`` and ``project_lifecycles.ipynb`` run.

1. Platform up (MLflow server, supervisor; stages follow the registry's aliases).
2. A quick first model goes through the gates to production (nothing to compare with yet).
3. Simulated users replay held-out interactions against production; their watches are
   acknowledged through ``/feedback``.
4. The drift monitor compares that traffic with the training data.
5. Retrain on base data plus feedback (trigger: drift, or enough new events), then the
   offline gate, staging, a canary with a real traffic split, promote or roll back.
6. A deliberately weak candidate (popularity only) must be rejected.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from movierec.lifecycle.backends.local import LocalPlatform
from movierec.lifecycle.config import LifecycleConfig
from movierec.lifecycle.pipeline import TRAFFIC_LOG, Pipeline, Trigger
from movierec.lifecycle.traffic import arm_stats, events_left, replay, save_records, take_events
from movierec.lifecycle.world import build_world
from movierec.serving.feedback import feedback_location
from movierec.training.config import TrainConfig


class DemoConfig(BaseModel):
    """Sizes of the demo (defaults fit a 2-core machine in well under 15 minutes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    first_epochs: int = Field(5, ge=1, description="the quick first production model")
    epochs: int = Field(40, ge=1, description="the retrained candidate (early stopping)")
    workers: int = Field(1, ge=0, description="Ray Train workers (0: in-process)")
    traffic_events: int = Field(1500, ge=10, description="replayed before the retrain")
    weak_candidate: bool = True
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)


def replay_production(platform: LocalPlatform, config: LifecycleConfig,
                      events: int) -> dict[str, Any]:
    """Replay ``events`` held-out interactions against production; return its numbers."""
    world = build_world(config.dataset, config.future_share, config.source)
    records = replay(take_events(world, events), {"production": platform.stage_url(
        "production")}, concurrency=config.canary.concurrency)
    save_records(records, platform.home / "lifecycle" / TRAFFIC_LOG)
    stats = arm_stats(records, "production")
    return {"requests": stats.requests, "errors": stats.errors,
            "hit_rate": round(stats.hit_rate, 4), "p95_ms": stats.p95_ms}


def check_drift(platform: LocalPlatform) -> dict[str, Any]:
    """Run the drift monitor on production; return its report (and where it was written)."""
    from movierec.monitoring.collect import collect_and_assess, write_drift_report  # noqa: PLC0415
    from movierec.monitoring.drift import DriftConfig  # noqa: PLC0415
    from movierec.registry.mlflow_registry import download_bundle  # noqa: PLC0415

    version = platform.serving_version("production")
    if version is None:
        raise RuntimeError("production is not serving: the drift monitor needs it")
    report = collect_and_assess(platform.stage_url("production"), download_bundle(version),
                                feedback_location(platform.home),
                                platform.home / "lifecycle" / TRAFFIC_LOG, DriftConfig())
    folder = write_drift_report(report, platform.home / "reports")
    return {**report.to_dict(), "folder": str(folder)}


def check_traffic_left(config: DemoConfig) -> None:
    """Fail before any work when the world cannot feed one more demo.

    A demo replays ``traffic_events``, then one canary's events for each candidate that
    passes the gate (the retrained one and, when ``weak_candidate`` is on and it passes, the
    weak one; a first model has no canary). Each future interaction is replayed once, so
    repeated demos use them up.

    Raises:
        ValueError: Fewer future interactions are left than one demo may need.
    """
    world = build_world(config.lifecycle.dataset, config.lifecycle.future_share,
                        config.lifecycle.source)
    candidates = 2 if config.weak_candidate else 1
    needed = config.traffic_events + candidates * config.lifecycle.canary.events
    left = events_left(world)
    if left < needed:
        raise ValueError(
            f"the demo's world ({world.folder}) has {left} future interactions left to "
            f"replay and one demo may need {needed}: earlier demos used them up. "
            "`make demo-clean` stops the demo platform and deletes its state, so the next "
            "`make demo` starts over")


def run_demo(config: DemoConfig, platform: LocalPlatform,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every step above; returns the summaries (the platform keeps running)."""
    started = time.monotonic()
    check_traffic_left(config)
    platform.up()
    os.environ["MLFLOW_TRACKING_URI"] = platform.tracking_uri()
    runs: list[dict[str, Any]] = []

    def pipeline(epochs: int, trigger: Trigger, candidate: str = "sse-pt") -> dict[str, Any]:
        say(f"\n== pipeline: trigger {trigger}, candidate {candidate} ==")
        train = TrainConfig(epochs=epochs)
        summary = Pipeline(config.lifecycle, train, platform, say).run(
            trigger, candidate, config.workers)  # type: ignore[arg-type]
        runs.append(summary)
        return summary

    from movierec.registry.mlflow_registry import current_version  # noqa: PLC0415

    if current_version("production") is None:
        pipeline(config.first_epochs, "initial")
    say(f"\n== traffic: {config.traffic_events} held-out interactions against production ==")
    traffic = replay_production(platform, config.lifecycle, config.traffic_events)
    say(f"traffic: {traffic}")
    drift = check_drift(platform)
    say(f"drift: {drift['verdict']} (PSI {drift['psi']:.3f}, KS {drift['ks']:.3f}, unknown "
        f"{drift['unknown_rate']:.1%}); report {drift['folder']}")
    pipeline(config.epochs, "drift" if drift["verdict"] == "drift" else "feedback")
    if config.weak_candidate:
        pipeline(config.epochs, "manual", "weak")
    return {"runs": runs, "traffic": traffic, "drift": drift,
            "production": current_version("production"),
            "seconds": round(time.monotonic() - started, 1)}
