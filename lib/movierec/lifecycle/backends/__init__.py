"""Backends: where the lifecycle's stages run. The pipeline only talks to this protocol."""

from __future__ import annotations

from typing import Any, Protocol

from movierec.lifecycle.config import Stage


class Backend(Protocol):
    """What the pipeline asks of a platform; backends differ only behind these calls."""

    name: str

    def tracking_uri(self) -> str:
        """The MLflow tracking URI the pipeline records to."""
        ...

    def deploy(self, stage: Stage, version: str) -> dict[str, Any]:
        """Serve registry ``version`` at ``stage`` and return once it is ready (and says so)."""
        ...

    def retire(self, stage: Stage) -> None:
        """Stop serving ``stage``."""
        ...

    def stage_url(self, stage: Stage) -> str:
        """Base URL of the stage's service."""
        ...

    def serving_version(self, stage: Stage) -> str | None:
        """The version the stage reports on ``/version`` (None when it is not serving)."""
        ...
