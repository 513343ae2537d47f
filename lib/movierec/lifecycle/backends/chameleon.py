"""The ``chameleon`` backend: the stages are ArgoCD applications on the project's cluster.

The pipeline is the same as on the local backend; only these adapters differ. A deploy moves
nothing in git: the registry alias already names the version (the pipeline moves it first),
so ``deploy`` writes Helm parameters on the stage's ArgoCD Application (``argocd app set
-p``): ``model.version`` (a pod annotation, so the pods restart and resolve the alias again),
autoscaling and the Ingress on (for the canary also the canary weight: a rolled-back canary
comes back with its traffic share), then ``argocd app sync`` and ``argocd app wait --health``,
then polls the stage's ``/version`` until it names the version. ``retire`` turns the Ingress
off and scales to zero. The Applications sync automatically, so the sync that ``app set``
starts may hold the app when ``app sync`` asks ("another operation is already in progress",
argo-cd#6674): the sync then waits for that operation (``app wait --operation``) and asks
again. Every command goes through :func:`movierec.infra.commands.run`, so a dry run prints the
exact ``argocd`` commands and touches nothing. Server, token and flags come from the
environment (``ARGOCD_SERVER``, ``ARGOCD_AUTH_TOKEN``, ``ARGOCD_OPTS``: in the lifecycle
workflow the Secret ``argocd-workflow``, whose flags accept the in-cluster server's
self-signed certificate).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from movierec.infra.argocd import ARGOCD_HOW
from movierec.infra.commands import Command, require_tool, run
from movierec.lifecycle.backends import reported_version
from movierec.lifecycle.config import Stage
from movierec.polling import poll

PLATFORM_MLFLOW = "http://platform-mlflow.movierec-platform.svc.cluster.local:5000"
# What argocd-server answers a sync while another operation (the automated sync) runs.
OPERATION_IN_PROGRESS = "another operation is already in progress"
SYNC_ATTEMPTS = 5


def _service_urls() -> dict[Stage, str]:
    return {stage: f"http://movierec-{stage}.movierec-{stage}.svc.cluster.local"
            for stage in ("staging", "canary", "production")}


class ChameleonConfig(BaseModel):
    """Where the cluster's stages and MLflow are, and how long a deploy may take.

    Attributes:
        tracking_uri: The platform's MLflow; None: ``$MLFLOW_TRACKING_URI``, else the
            platform chart's in-cluster service.
        stage_urls: Base URL of each stage. The defaults are the in-cluster Services (the
            pipeline runs in a workflow pod); from outside use the ingress hostnames
            (``https://staging.<domain>``) or port-forwards. The canary needs its own URL (the
            shared production host splits traffic by weight, so it cannot name the canary).
        canary_weight: Percent of production-host requests the canary Ingress receives.
        image_tag: Serving image tag to set on deploy; None leaves the tag that the promote
            step (``movierec-promote`` workflow, skopeo retag) last wrote.
        app_prefix: ArgoCD Application name = prefix + stage (``k8s/argocd/<stage>.yaml``).
        timeout_s: Limit of ``argocd app sync``/``wait`` and of the ``/version`` poll.
        poll_interval_s: Pause between ``/version`` polls.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: str | None = None
    stage_urls: dict[Stage, str] = Field(default_factory=_service_urls)
    canary_weight: int = Field(10, ge=1, le=100)
    image_tag: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
    app_prefix: str = Field("movierec-", pattern=r"^[a-z0-9-]*$")
    timeout_s: int = Field(600, ge=1)
    poll_interval_s: float = Field(2.0, gt=0)


def deploy_parameters(stage: Stage, version: str, config: ChameleonConfig) -> dict[str, str]:
    """The Helm parameters a deploy writes: model version, autoscaling, Ingress (and weight)."""
    if version == "latest" or not str(version).strip():
        raise ValueError(f"version {version!r}: deploy a registry version number")
    params = {"model.version": str(version), "autoscaling.enabled": "true",
              "ingress.enabled": "true"}
    if stage == "canary":
        # A rollback turned the Ingress off: every canary deploy turns it on again.
        params |= {"ingress.canary.enabled": "true",
                   "ingress.canary.weight": str(config.canary_weight)}
    if config.image_tag:
        params["image.tag"] = config.image_tag
    return params


def retire_parameters(stage: Stage) -> dict[str, str]:
    """The Helm parameters that take a stage out of service: no Ingress, no pods."""
    del stage  # the same for every stage; kept for symmetry with deploy_parameters
    return {"ingress.enabled": "false", "autoscaling.enabled": "false", "replicas": "0"}


class ChameleonBackend:
    """Stages as ArgoCD applications (see the module docstring)."""

    name = "chameleon"
    follows_alias = True  # the pods load models:/movierec@<stage> when they start

    def __init__(self, config: ChameleonConfig | None = None, *, dry_run: bool = False) -> None:
        self.config = config or ChameleonConfig()
        self.dry_run = dry_run

    def tracking_uri(self) -> str:
        """The platform's MLflow: config, else ``$MLFLOW_TRACKING_URI``, else the service."""
        return (self.config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                or PLATFORM_MLFLOW)

    def app_name(self, stage: Stage) -> str:
        """The stage's ArgoCD Application."""
        return f"{self.config.app_prefix}{stage}"

    def stage_url(self, stage: Stage) -> str:
        """Base URL of the stage's service (from the config)."""
        return self.config.stage_urls[stage].rstrip("/")

    def serving_version(self, stage: Stage) -> str | None:
        """What the stage's ``/version`` says (None when it does not answer)."""
        return reported_version(self.stage_url(stage), timeout=5.0)

    def commands(self, stage: Stage, params: dict[str, str]) -> list[Command]:
        """``argocd app set -p ...``, ``app sync`` and ``app wait --health`` for one stage."""
        argocd = "argocd" if self.dry_run else require_tool("argocd", ARGOCD_HOW)
        app, limit = self.app_name(stage), str(self.config.timeout_s)
        setter = [argocd, "app", "set", app]
        for key, value in params.items():
            setter += ["-p", f"{key}={value}"]
        return [Command(tuple(setter)),
                Command((argocd, "app", "sync", app, "--timeout", limit)),
                Command((argocd, "app", "wait", app, "--health", "--sync", "--timeout", limit))]

    def operation_wait(self, stage: Stage) -> Command:
        """``argocd app wait --operation``: until the app's running operation has finished."""
        argocd = "argocd" if self.dry_run else require_tool("argocd", ARGOCD_HOW)
        return Command((argocd, "app", "wait", self.app_name(stage), "--operation",
                        "--timeout", str(self.config.timeout_s)))

    def _apply(self, stage: Stage, params: dict[str, str]) -> list[str]:
        setter, sync, wait = self.commands(stage, params)
        run(setter, dry_run=self.dry_run)
        self._sync(sync, self.operation_wait(stage))
        run(wait, dry_run=self.dry_run)
        return [command.render() for command in (setter, sync, wait)]

    def _sync(self, sync: Command, operation_wait: Command) -> None:
        """Run ``sync``; while an automated sync holds the app, wait for it and ask again."""
        if self.dry_run:
            run(sync, dry_run=True)
            print(f"[dry-run]   while {OPERATION_IN_PROGRESS!r}: {operation_wait.render()}, "
                  f"then the sync again (at most {SYNC_ATTEMPTS} tries)", flush=True)
            return
        for attempt in range(1, SYNC_ATTEMPTS + 1):
            try:
                done = run(sync, dry_run=False, capture=True)
            except subprocess.CalledProcessError as exc:
                output = f"{exc.stdout or ''}{exc.stderr or ''}"
                print(output, end="", file=sys.stderr, flush=True)
                if OPERATION_IN_PROGRESS not in output or attempt == SYNC_ATTEMPTS:
                    raise
                run(operation_wait, dry_run=False)
                continue
            if done is not None:
                print(done.stdout, end="", flush=True)
                print(done.stderr, end="", file=sys.stderr, flush=True)
            return

    def deploy(self, stage: Stage, version: str) -> dict[str, Any]:
        """Roll the stage onto ``version`` (its alias already names it) and wait for it.

        Raises:
            ToolMissingError: The argocd CLI is not installed (not raised in a dry run).
            subprocess.CalledProcessError: An argocd command failed.
            TimeoutError: ``/version`` did not name the version within ``timeout_s``.
        """
        started = time.monotonic()
        done = self._apply(stage, deploy_parameters(stage, version, self.config))
        result: dict[str, Any] = {"stage": stage, "version": str(version), "how": "argocd",
                                  "commands": done, "dry_run": self.dry_run}
        if not self.dry_run:
            self.wait_serving(stage, str(version))
        result["seconds"] = round(time.monotonic() - started, 2)
        return result

    def wait_serving(self, stage: Stage, version: str) -> None:
        """Poll ``/version`` until the stage reports ``version``."""
        seen: list[str | None] = [None]

        def serving_it() -> bool:
            seen[0] = self.serving_version(stage)
            return seen[0] == version

        if poll(serving_it, self.config.timeout_s, every=self.config.poll_interval_s):
            return
        raise TimeoutError(f"{stage} at {self.stage_url(stage)} reports version {seen[0]}, not "
                           f"{version}, after {self.config.timeout_s} s: see `argocd app get "
                           f"{self.app_name(stage)}` and the pods' logs")

    def retire(self, stage: Stage) -> None:
        """Take the stage out of service: Ingress off, autoscaling off, zero replicas."""
        self._apply(stage, retire_parameters(stage))
