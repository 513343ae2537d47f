"""ArgoCD ``Application`` manifests: a strict model of the fields we use, and their check."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from movierec.infra.commands import CheckResult, repo_root
from movierec.infra.manifests import STAGES, load_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _HelmParameter(_Strict):
    name: str
    value: str
    force_string: bool | None = Field(None, alias="forceString")


class _Helm(_Strict):
    release_name: str | None = Field(None, alias="releaseName")
    value_files: list[str] = Field(default_factory=list, alias="valueFiles")
    parameters: list[_HelmParameter] = Field(default_factory=list)


class _Source(_Strict):
    repo_url: str = Field(alias="repoURL", pattern=r"^(https://|git@|ssh://)")
    target_revision: str = Field(alias="targetRevision", min_length=1)
    path: str
    helm: _Helm | None = None


class _Destination(_Strict):
    server: str | None = None
    name: str | None = None
    namespace: str


class _Backoff(_Strict):
    duration: str
    factor: int
    max_duration: str = Field(alias="maxDuration")


class _Retry(_Strict):
    limit: int
    backoff: _Backoff | None = None


class _Automated(_Strict):
    prune: bool = False
    self_heal: bool = Field(False, alias="selfHeal")
    allow_empty: bool = Field(False, alias="allowEmpty")


class _SyncPolicy(_Strict):
    automated: _Automated | None = None
    sync_options: list[str] = Field(default_factory=list, alias="syncOptions")
    retry: _Retry | None = None


class _IgnoreDifference(_Strict):
    group: str
    kind: str
    name: str | None = None
    namespace: str | None = None
    json_pointers: list[str] = Field(default_factory=list, alias="jsonPointers")
    jq_path_expressions: list[str] = Field(default_factory=list, alias="jqPathExpressions")


class _AppSpec(_Strict):
    project: str
    source: _Source
    destination: _Destination
    sync_policy: _SyncPolicy | None = Field(None, alias="syncPolicy")
    ignore_differences: list[_IgnoreDifference] = Field(default_factory=list,
                                                        alias="ignoreDifferences")


class _Metadata(_Strict):
    name: str
    namespace: str
    finalizers: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ArgoCDApplication(_Strict):
    """An ArgoCD ``Application`` (argoproj.io/v1alpha1), restricted to the fields we use."""

    api_version: Literal["argoproj.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["Application"]
    metadata: _Metadata
    spec: _AppSpec


def check_argocd(root: Path | None = None) -> list[CheckResult]:
    """Each ``k8s/argocd/*.yaml`` parses as an Application pointing at a chart that exists."""
    root = root or repo_root()
    results = []
    files = sorted((root / "k8s" / "argocd").glob("*.yaml"))
    expected = {"platform", *STAGES}
    missing = expected - {f.stem for f in files}
    results.append(CheckResult("argocd applications present", not missing,
                               f"missing: {sorted(missing)}" if missing else ""))
    for f in files:
        try:
            app = ArgoCDApplication.model_validate(load_yaml(f))
        except ValidationError as exc:
            results.append(CheckResult(f"argocd {f.name}", False, str(exc).splitlines()[0]
                                       + ": " + "; ".join(e["loc"].__repr__() for e in
                                                          exc.errors()[:3])))
            continue
        problems = []
        chart = root / app.spec.source.path
        if not (chart / "Chart.yaml").exists():
            problems.append(f"path {app.spec.source.path} is not a chart")
        for vf in app.spec.source.helm.value_files if app.spec.source.helm else []:
            if not (chart / vf).exists():
                problems.append(f"value file {vf} missing")
        results.append(CheckResult(f"argocd {f.name}", not problems, "; ".join(problems)))
    return results


