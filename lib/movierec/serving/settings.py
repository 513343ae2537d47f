"""Serving configuration: one typed, strict object (the CLI and tests build it)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from movierec.config import get_settings
from movierec.serving.catalog import Precision
from movierec.serving.engine import Device
from movierec.serving.feedback import ENV_FEEDBACK_URL

ENV_ADMIN_TOKEN = "MOVIEREC_ADMIN_TOKEN"


def _admin_token_from_env() -> SecretStr | None:
    token = os.environ.get(ENV_ADMIN_TOKEN, "").strip()
    return SecretStr(token) if token else None


def _feedback_url_from_env() -> str | None:
    # Stage services (`movierec serve`, spawned by `platform up` or a k8s pod) get the store
    # from the environment; a blank value means the SQLite default.
    return os.environ.get(ENV_FEEDBACK_URL, "").strip() or None


class ServeSettings(BaseModel):
    """How the recommendation service runs.

    Attributes:
        bundle: The bundle folder to serve.
        precision: ``fp32`` (model.onnx) or ``int8`` (model.int8.onnx).
        device: ``cpu``, or ``cuda`` when onnxruntime has the CUDA provider (else CPU).
        max_batch_size: Requests per ONNX Runtime call; 1 disables micro-batching.
        max_queue_delay_ms: How long a request may wait for others to join its batch.
        max_queued_requests: Requests waiting for a batch at most; more are refused at once
            with a 503 and ``Retry-After`` (shedding load instead of queueing without end).
        threads: ONNX Runtime intra-op threads (None: one per physical core).
        model_process: Run the model in a child process (default), so it never waits for
            the event loop's GIL; False keeps it in a thread of the server process.
        max_sequence_length: Longest ``sequence`` a request may send (and the most online
            watches kept per user).
        max_online_events: Online watches kept in memory in all; beyond it the users
            updated longest ago are forgotten (their watches stay in the feedback store).
        max_body_bytes: Request body limit (413 beyond it).
        max_feedback_body_bytes: Body limit of ``/feedback`` (1000 events need ~80 KB).
        feedback_url: ``sqlite:///PATH``, a file path, or
            ``postgresql://USER:PASSWORD@HOST:PORT/DB`` (default: ``$MOVIEREC_FEEDBACK_URL``,
            else ``$MOVIEREC_HOME/feedback.db``). Logs show it with the password masked.
        admin_token: Bearer token of ``/admin/*`` (default: ``$MOVIEREC_ADMIN_TOKEN``;
            without one the admin API answers 403). Never logged or shown.
        cors_origins: Origins allowed by CORS; empty adds no CORS headers at all.
        model_version: Registry version reported by ``/version`` (default: the bundle's).
        model_alias: Registry alias reported by ``/version`` (e.g. ``production``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle: Path
    precision: Precision = "fp32"
    device: Device = "cpu"
    # 16, not more: two batches in flight overlap (one forming while one runs); at 32
    # connections a limit of 32 leaves one batch and nothing to overlap (bench/serve.py).
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_queue_delay_ms: float = Field(2.0, ge=0, le=1000)
    max_queued_requests: int = Field(4096, ge=1)
    threads: int | None = Field(None, ge=1, le=256)
    model_process: bool = True
    max_sequence_length: int = Field(1000, ge=1, le=100_000)
    max_online_events: int = Field(1_000_000, ge=1)
    max_body_bytes: int = Field(64 * 1024, ge=1024)
    max_feedback_body_bytes: int = Field(256 * 1024, ge=1024)
    feedback_url: str | None = Field(default_factory=_feedback_url_from_env)
    admin_token: SecretStr | None = Field(default_factory=_admin_token_from_env)
    cors_origins: list[str] = Field(default_factory=list)
    model_version: str | None = None
    model_alias: str | None = None

    @field_validator("admin_token")
    @classmethod
    def _blank_token_disables(cls, token: SecretStr | None) -> SecretStr | None:
        return token if token is not None and token.get_secret_value().strip() else None

    def resolved_feedback_url(self) -> str:
        """The feedback store URL, defaulting to SQLite under ``MOVIEREC_HOME``."""
        return self.feedback_url or f"sqlite:///{get_settings().home / 'feedback.db'}"
