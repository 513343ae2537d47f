"""Backends: where the lifecycle's stages run. The pipeline only talks to this protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import httpx

from movierec.lifecycle.config import Stage


def deploy_and_point(backend: Backend, stage: Stage, version: str,
                     move_alias: Callable[[], object]) -> dict[str, Any]:
    """Serve ``version`` at ``stage`` and move its alias, in the order the backend needs.

    ``move_alias`` moves it (a set or a rollback); ``backend.follows_alias`` says which goes
    first. Returns the deploy's record.
    """
    if backend.follows_alias:
        move_alias()
        return backend.deploy(stage, version)
    deployed = backend.deploy(stage, version)
    move_alias()
    return deployed


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
    # Whether a stage's service loads the model its registry alias names when it starts
    # (chameleon's pods resolve models:/movierec@<stage>): the alias must then move before
    # the deploy. Otherwise (local) the deploy is handed the version and goes first, so a
    # failed deploy leaves the alias naming what is really served.
    follows_alias: bool

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
