"""Backends: where the lifecycle's stages run. The pipeline only talks to this protocol."""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from movierec.lifecycle.config import Stage


def reported_version(base_url: str, timeout: float) -> str | None:
    """What a service's ``/version`` names; None when it does not answer 200 with one.

    A proxy's error page (HTML with a 200) or a half-started service counts as not serving,
    never as an exception in the middle of a deploy.
    """
    try:
        reply = httpx.get(f"{base_url}/version", timeout=timeout)
        return str(reply.json()["version"]) if reply.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


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
