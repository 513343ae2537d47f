"""Offline validation of ``k8s/`` and ``workflows/``: Helm charts, ArgoCD and Argo objects.

Nothing here needs a cluster: charts are linted and rendered in-process (helm-python-sdk, Helm
v4), the rendered objects are validated against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields fail). Argo objects are checked against hera's models
(``argo_checks``), ArgoCD Applications against a strict pydantic model (``argocd_model``).
``validate_all()`` returns every result.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from movierec.infra.commands import CheckResult, ToolMissingError, repo_root

KUBE_VERSION = "1.33.0"
STAGES = ("staging", "canary", "production")
PLATFORM_RELEASE, PLATFORM_NAMESPACE = "platform", "movierec-platform"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
LONG_RUNNING = {"Deployment", "StatefulSet", "DaemonSet"}
# Metrics the service exports (lib/movierec/serving/metrics.py) and the drift gauges of issue 5.
KNOWN_METRICS = {
    "movierec_request_duration_seconds", "movierec_fallbacks_total",
    "movierec_unknown_items_total", "movierec_sequence_length",
    "movierec_recommended_item_popularity", "movierec_feedback_events_total",
    "movierec_reloads_total", "movierec_model_info", "movierec_batch_size",
    "movierec_queue_wait_seconds", "movierec_inference_seconds",
    "movierec_drift_psi", "movierec_drift_ks", "movierec_drift_unknown_item_rate",
    "movierec_drift_events", "movierec_sequence_length_since_load"}
_HIST_SUFFIX = re.compile(r"_(bucket|count|sum)$")


def _helm() -> Any:
    try:
        import helm_python  # noqa: PLC0415 - native library, loaded only when rendering
    except ImportError as exc:  # pragma: no cover - requirements pin it
        raise ToolMissingError("helm-python-sdk is not installed: run `make setup` "
                               "(requirements.txt pins helm-python-sdk==0.2.2)") from exc
    return helm_python


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty when the file holds something else)."""
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def stage_values(stage: str, root: Path | None = None, deployed: bool = True) -> dict[str, Any]:
    """The values of ``stage`` for the app chart (the chart's defaults apply beneath).

    ``deployed`` adds the ``model.version`` a deploy writes (``argocd app set -p``), so
    the render is what serves traffic; without it, what registration creates: no pods, no
    Ingress, no autoscaler (see the chart's ``movierec.deployed``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: use one of {', '.join(STAGES)}")
    values = load_yaml((root or repo_root()) / "k8s" / "app" / f"values-{stage}.yaml")
    if deployed:
        values["model"] = {**values.get("model", {}), "version": "1"}
    return values


def render_chart(chart: Path, values: dict[str, Any], release: str,
                 namespace: str) -> list[dict[str, Any]]:
    """``helm template``: the chart's objects for ``values``, as dictionaries."""
    helm = _helm()
    with helm.Chart.load(chart) as loaded:
        rendered = loaded.render(values=values, name=release, namespace=namespace,
                                 is_install=True)
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text)
            if isinstance(doc, dict)]


def lint_chart(chart: Path, values: dict[str, Any], name: str) -> CheckResult:
    """``helm lint --strict`` for one set of values: warnings and errors fail it."""
    report = _helm().lint(chart, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [f"{m['path']}: {m['error']}" for m in report.get("messages", [])
                if m.get("severity", 0) >= 2] + list(report.get("errors") or [])
    return CheckResult(f"helm lint {name}", not problems, "; ".join(problems[:5]))


def validate_k8s(docs: Iterable[dict[str, Any]], name: str) -> CheckResult:
    """Every object against the Kubernetes schema of ``KUBE_VERSION``, unknown fields failing."""
    import kubernetes_validate  # noqa: PLC0415 - loads many schemas

    problems = []
    count = 0
    for doc in docs:
        count += 1
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except (kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError) as exc:
            problems.append(f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {exc}")
    detail = "; ".join(problems[:3]) if problems else f"{count} objects valid for {KUBE_VERSION}"
    return CheckResult(f"kubernetes schemas {name}", not problems, detail)


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec(s) inside a workload object (none for other kinds)."""
    kind, spec = doc.get("kind"), doc.get("spec") or {}
    if kind == "CronJob":
        spec = spec.get("jobTemplate", {}).get("spec", {})
    if kind in WORKLOAD_KINDS:
        yield spec.get("template", {}).get("spec", {})


def image_problem(image: str) -> str | None:
    """Why ``image`` is not pinned to an exact version, or None when it is."""
    if "@sha256:" in image:
        return None
    name = image.rsplit("/", 1)[-1]
    if ":" not in name:
        return f"{image}: no tag (pin an exact version)"
    tag = name.split(":", 1)[1]
    # An exact version has at least major.minor (or a release date): "python:3" floats.
    exact = re.search(r"\d\.\d|\d{4}-\d{2}-\d{2}", tag)
    if tag in {"latest", "stable", "master", "main", "rootless"} or not exact:
        return f"{image}: tag {tag!r} is not an exact version"
    return None


def workload_problems(docs: Iterable[dict[str, Any]]) -> list[str]:
    """Pinned images, resources (requests and limits), probes and non-root for each container."""
    problems = []
    for doc in docs:
        for pod in pod_specs(doc):
            where = f"{doc['kind']}/{doc['metadata']['name']}"
            pod_nonroot = (pod.get("securityContext") or {}).get("runAsNonRoot") is True
            for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                at = f"{where} container {c['name']}"
                if (issue := image_problem(c.get("image", ""))) is not None:
                    problems.append(f"{at}: {issue}")
                res = c.get("resources") or {}
                if not res.get("requests") or not res.get("limits"):
                    problems.append(f"{at}: resources need requests and limits")
                if not (pod_nonroot or (c.get("securityContext") or {}).get("runAsNonRoot")):
                    problems.append(f"{at}: runAsNonRoot is not set")
                if doc["kind"] in LONG_RUNNING and c in pod.get("containers", []):
                    missing = [p for p in ("livenessProbe", "readinessProbe") if p not in c]
                    if missing:
                        problems.append(f"{at}: no {' or '.join(missing)}")
    return problems


def canary_weight(docs: Iterable[dict[str, Any]]) -> int | None:
    """The ingress-nginx canary weight of the rendered objects, or None without a canary."""
    for doc in docs:
        notes = (doc.get("metadata") or {}).get("annotations") or {}
        if doc.get("kind") == "Ingress" and notes.get("nginx.ingress.kubernetes.io/canary") \
                == "true":
            return int(notes["nginx.ingress.kubernetes.io/canary-weight"])
    return None


def write_rendered(out: Path, root: Path | None = None) -> list[Path]:
    """Render the platform chart and the app chart per stage into ``out`` (for checkov)."""
    root = root or repo_root()
    releases = [("platform", root / "k8s" / "platform", {}, PLATFORM_RELEASE,
                 PLATFORM_NAMESPACE)]
    releases += [(f"app-{s}", root / "k8s" / "app", stage_values(s, root), f"movierec-{s}",
                  f"movierec-{s}") for s in STAGES]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, chart, values, release, namespace in releases:
        written.append(out / f"{name}.yaml")
        written[-1].write_text(yaml.safe_dump_all(render_chart(chart, values, release,
                                                               namespace), sort_keys=False))
    return written


def check_charts(root: Path | None = None) -> list[CheckResult]:
    """Lint, render and validate the platform chart and the app chart for every stage."""
    root = root or repo_root()
    results = []
    platform = root / "k8s" / "platform"
    results.append(lint_chart(platform, {}, "platform"))
    docs = render_chart(platform, {}, PLATFORM_RELEASE, PLATFORM_NAMESPACE)
    results.append(validate_k8s(docs, "platform"))
    problems = workload_problems(docs)
    results.append(CheckResult("workloads platform", not problems, "; ".join(problems[:5])))
    app = root / "k8s" / "app"
    for stage in STAGES:
        values = stage_values(stage, root)
        results.append(lint_chart(app, values, f"app ({stage})"))
        docs = render_chart(app, values, f"movierec-{stage}", f"movierec-{stage}")
        results.append(validate_k8s(docs, f"app ({stage})"))
        problems = workload_problems(docs)
        kinds = {d["kind"] for d in docs}
        problems += [f"no {k}" for k in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                          "PodDisruptionBudget") if k not in kinds]
        weight = canary_weight(docs)
        if stage == "canary" and not weight:
            problems.append("the canary has no ingress-nginx canary Ingress with a weight")
        if stage != "canary" and weight is not None:
            problems.append(f"{stage} must not be a canary Ingress")
        results.append(CheckResult(f"workloads app ({stage})", not problems,
                                   "; ".join(problems[:5]) or f"canary weight {weight}"))
        results.append(undeployed_check(app, stage, root))
    return results


def undeployed_check(app: Path, stage: str, root: Path) -> CheckResult:
    """A registered, never deployed stage runs no pods and routes nothing.

    Its alias may not exist yet: pods would crash-loop and ``argocd app wait --health``
    would time out; a canary Ingress would send its share of users to no pod.
    """
    docs = render_chart(app, stage_values(stage, root, deployed=False), f"movierec-{stage}",
                        f"movierec-{stage}")
    deployment = next((d for d in docs if d["kind"] == "Deployment"), {})
    problems = [f"the Deployment has {deployment.get('spec', {}).get('replicas')} replicas"
                ] if deployment.get("spec", {}).get("replicas") != 0 else []
    problems += [f"it renders a {d['kind']}" for d in docs
                 if d["kind"] in ("Ingress", "HorizontalPodAutoscaler")]
    return CheckResult(f"undeployed app ({stage})", not problems,
                       "; ".join(problems) or "no pods, no Ingress, no autoscaler")


# --- Monitoring files and the repository-wide scans -------------------------------------------

def metrics_used(text: str) -> set[str]:
    """Base names of the movierec metrics a PromQL text uses (histogram suffixes removed)."""
    used = set(re.findall(r"\bmovierec_[a-z_]+", text))
    return {m if m in KNOWN_METRICS else _HIST_SUFFIX.sub("", m) for m in used}


def check_monitoring(root: Path | None = None) -> list[CheckResult]:
    """Alert rules and dashboard parse and use only metrics the service exports."""
    files = (root or repo_root()) / "k8s" / "platform" / "files"
    rules = load_yaml(files / "alerts.yaml")
    exprs = [r["expr"] for g in rules.get("groups", []) for r in g["rules"]]
    problems = [f"alert {r.get('alert')}: no expr/for-labels" for g in rules.get("groups", [])
                for r in g["rules"] if not r.get("alert") or not r.get("expr")]
    names = {r.get("alert") for g in rules.get("groups", []) for r in g["rules"]}
    retrain = [r for g in rules.get("groups", []) for r in g["rules"]
               if (r.get("labels") or {}).get("action") == "retrain"]
    if not retrain:
        problems.append("no alert labelled action=retrain (the drift retrain trigger)")
    dashboard = json.loads((files / "dashboard.json").read_text())
    exprs += [t["expr"] for p in dashboard.get("panels", []) for t in p.get("targets", [])]
    unknown = set().union(*(metrics_used(e) for e in exprs)) - KNOWN_METRICS
    problems += [f"unknown metric {m}" for m in sorted(unknown)]
    return [CheckResult("monitoring alerts and dashboard", not problems,
                        "; ".join(problems[:5]) or f"{len(names)} alerts")]


def scan_unpinned(root: Path | None = None) -> CheckResult:
    """No ``:latest`` image reference in k8s/, workflows/ or docker/.

    Dockerfiles too: each ``FROM`` and ``ARG BASE=`` default must name an exact version.
    """
    root = root or repo_root()
    hits = []
    for folder in ("k8s", "workflows", "docker"):
        for f in sorted((root / folder).rglob("*")):
            dockerfile = f.name.startswith("Dockerfile")
            if not f.is_file() or not (dockerfile or f.suffix in {".yaml", ".yml", ".tpl",
                                                                  ".json", ""}):
                continue
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if re.search(r"[\w./-]+:latest\b", line):
                    hits.append(f"{f.relative_to(root)}:{n}")
                base = re.match(r"\s*(?:FROM|ARG BASE=)\s*(\S+)", line) if dockerfile else None
                if base and not base.group(1).startswith("$") and image_problem(base.group(1)):
                    hits.append(f"{f.relative_to(root)}:{n} ({image_problem(base.group(1))})")
    return CheckResult("no :latest image tags", not hits, ", ".join(hits[:5]))


def validate_all(root: Path | None = None) -> list[CheckResult]:
    """Every offline check of the cluster half: charts, ArgoCD, Argo, monitoring, pins, registry.

    Also what they assume of the cluster: its networks and the platform volume's size.
    """
    # Imported here: those modules import this one (shared helpers), not the other way round.
    from movierec.infra.argo_checks import check_workflows  # noqa: PLC0415
    from movierec.infra.argocd_model import check_argocd  # noqa: PLC0415
    from movierec.infra.cluster_assumptions import check_cluster_assumptions  # noqa: PLC0415
    from movierec.infra.images import check_registry  # noqa: PLC0415

    root = root or repo_root()
    return [*check_charts(root), *check_argocd(root), *check_workflows(root),
            *check_monitoring(root), scan_unpinned(root), check_registry(root),
            *check_cluster_assumptions(root)]
