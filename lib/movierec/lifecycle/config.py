"""Lifecycle settings: one strict, typed object (CLI flags and notebooks override fields)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from movierec.config import get_settings

Stage = Literal["staging", "canary", "production"]
STAGES: tuple[Stage, ...] = ("staging", "canary", "production")


class PlatformConfig(BaseModel):
    """Where the local platform's services listen.

    Attributes:
        host: Interface of every service (loopback: nothing is exposed by default).
        mlflow_port: MLflow tracking server.
        ports: One ``movierec serve`` per stage.
        ready_timeout_s: How long a stage may take to answer ``/ready``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    mlflow_port: int = Field(5000, ge=1, le=65535)
    ports: dict[Stage, int] = Field(default_factory=lambda: {
        "production": 8000, "staging": 8001, "canary": 8002})
    ready_timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _one_service_per_port(self) -> PlatformConfig:
        # Two stages on one port would be one service: a canary deployed "beside"
        # production would reload production itself and then be compared with itself.
        missing = [stage for stage in STAGES if stage not in self.ports]
        if missing:
            raise ValueError(f"ports: no port for {', '.join(missing)}")
        wrong = {stage: port for stage, port in self.ports.items() if not 1 <= port <= 65535}
        if wrong:
            raise ValueError(f"ports: {wrong} outside 1-65535")
        taken = [*self.ports.values(), self.mlflow_port]
        if len(set(taken)) < len(taken):
            raise ValueError(f"ports {dict(self.ports)} and mlflow_port {self.mlflow_port}: "
                             "every service needs a port of its own")
        return self

    def url(self, stage: Stage) -> str:
        """Base URL of a stage service."""
        return f"http://{self.host}:{self.ports[stage]}"

    @property
    def mlflow_url(self) -> str:
        """Tracking URI of the platform's MLflow server."""
        return f"http://{self.host}:{self.mlflow_port}"


class GateConfig(BaseModel):
    """The offline gate: the candidate must beat production on full-ranking NDCG@10.

    Attributes:
        min_gain: Smallest mean NDCG@10 gain over production that counts as beating it.
        require_significant: Also require the lower end of the paired bootstrap interval
            of the gain to be above 0 (stricter; off by default on the small demo panel).
        bootstrap_resamples: Resamples of the paired bootstrap.
        level: Confidence level of the interval.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_gain: float = Field(0.0, description="below 0 lets a somewhat worse model through "
                            "(the fault drills pass every candidate with -1)")
    require_significant: bool = False
    bootstrap_resamples: int = Field(1000, ge=100)
    level: float = Field(0.95, gt=0.5, lt=1.0)


class StagingConfig(BaseModel):
    """Staging tests: golden requests and a short load test against an SLO."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    load_seconds: int = Field(10, ge=1, description="whole seconds: locust's -t takes no fractions")
    load_users: int = Field(20, ge=1, description="concurrent simulated users (locust)")
    slo_p95_ms: float = Field(200.0, gt=0)


class CanaryConfig(BaseModel):
    """The canary: traffic share, how much traffic to replay, and the decision rules.

    Attributes:
        share: Fraction of users (by a hash of their id) routed to the canary.
        events: Held-out interactions replayed against the stages during the canary.
        alpha: Significance of the one-sided test "canary hit rate below production".
        max_error_rate: Canary error rate above this rolls back.
        slo_p95_ms: Canary p95 latency above this rolls back.
        concurrency: Simultaneous simulated users.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: float = Field(0.3, gt=0, lt=1)
    events: int = Field(1500, ge=10)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    max_error_rate: float = Field(0.01, ge=0, le=1)
    slo_p95_ms: float = Field(200.0, gt=0)
    concurrency: int = Field(8, ge=1, le=256)


class LifecycleConfig(BaseModel):
    """Everything one pipeline run needs besides the training config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str = "ml-100k"
    source: Path | None = None
    future_share: float = Field(0.1, gt=0, lt=0.9,
                                description="newest share of interactions held out as traffic")
    seed: int = 0
    platform: PlatformConfig = Field(default_factory=PlatformConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    staging: StagingConfig = Field(default_factory=StagingConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)


def lifecycle_home() -> Path:
    """Lifecycle state under ``MOVIEREC_HOME``: world, platform, reports."""
    return get_settings().home
