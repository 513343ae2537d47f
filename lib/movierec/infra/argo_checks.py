"""Argo Workflows and Argo Events objects of ``workflows/``, checked offline.

hera's models parse each object (they ignore unknown fields, so the dropped keys are reported
as unknown); then every template's parameters, references, images, resources and non-root
settings are checked, as a cluster would only find out at submit time.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from movierec.infra.commands import CheckResult, repo_root
from movierec.infra.manifests import image_problem, validate_k8s

# Plain Kubernetes objects that live beside the workflows (the state claim, RBAC).
K8S_KINDS = {"PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding"}

_ARGO_PARAM = re.compile(r"\{\{\s*(inputs|workflow)\.parameters\.([A-Za-z0-9_-]+)\s*\}\}")


def _argo_models() -> dict[str, type[BaseModel]]:
    from hera.events.models import EventSource, Sensor  # noqa: PLC0415 - heavy imports
    from hera.workflows.models import CronWorkflow, WorkflowTemplate  # noqa: PLC0415

    return {"WorkflowTemplate": WorkflowTemplate, "CronWorkflow": CronWorkflow,
            "EventSource": EventSource, "Sensor": Sensor}


def unknown_fields(data: Any, dumped: Any, path: str = "") -> list[str]:
    """Keys of ``data`` that the model dropped (hera's models ignore unknown fields)."""
    if isinstance(data, dict) and isinstance(dumped, dict):
        out = []
        for key, value in data.items():
            if key not in dumped:
                out.append(f"{path}.{key}" if path else str(key))
            else:
                out += unknown_fields(value, dumped[key], f"{path}.{key}" if path else str(key))
        return out
    if isinstance(data, list) and isinstance(dumped, list):
        return [p for i, (a, b) in enumerate(zip(data, dumped, strict=False))
                for p in unknown_fields(a, b, f"{path}[{i}]")]
    return []


def _walk_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "CronWorkflow":
        spec = spec.get("workflowSpec") or {}
    return list(spec.get("templates") or [])


def _template_problems(doc: dict[str, Any], library: dict[tuple[str, str], dict[str, Any]]
                       ) -> list[str]:
    """Parameters, references, images, resources and non-root of every template."""
    problems = []
    spec = doc.get("spec") or {}
    wf_params = {p["name"] for p in (spec.get("arguments") or {}).get("parameters", [])}
    local = {t["name"]: t for t in _walk_templates(doc)}
    pod_nonroot = (spec.get("securityContext") or {}).get("runAsNonRoot") is True
    for t in _walk_templates(doc):
        at = f"{doc['metadata']['name']}/{t['name']}"
        inputs = {p["name"] for p in (t.get("inputs") or {}).get("parameters", [])}
        body = json.dumps({k: v for k, v in t.items() if k != "inputs"})
        for scope, name in _ARGO_PARAM.findall(body):
            if scope == "inputs" and name not in inputs:
                problems.append(f"{at}: uses inputs.parameters.{name}, not declared")
            if scope == "workflow" and name not in wf_params:
                problems.append(f"{at}: uses workflow.parameters.{name}, not declared")
        calls = [s for g in t.get("steps") or [] for s in g] + (t.get("dag") or {}).get(
            "tasks", [])
        for call in calls:
            ref = call.get("templateRef")
            callee = library.get((ref["name"], ref["template"])) if ref else local.get(
                call.get("template", ""))
            if callee is None:
                problems.append(f"{at}: step {call['name']} calls an unknown template")
                continue
            passed = {a["name"] for a in (call.get("arguments") or {}).get("parameters", [])}
            for p in (callee.get("inputs") or {}).get("parameters", []):
                if "value" not in p and p["name"] not in passed:
                    problems.append(f"{at}: step {call['name']} does not pass {p['name']}")
        box = t.get("container") or t.get("script")
        if box is None:
            continue
        image = box.get("image", "")
        match = _ARGO_PARAM.fullmatch(image)
        if match:  # a parameter: its default must be pinned
            image = next((p.get("value", "") for p in (t.get("inputs") or {}).get(
                "parameters", []) if p["name"] == match.group(2)), "")
        if image and (issue := image_problem(image)) is not None:
            problems.append(f"{at}: {issue}")
        res = box.get("resources") or {}
        if not res.get("requests") or not res.get("limits"):
            problems.append(f"{at}: resources need requests and limits")
        if not (pod_nonroot or (box.get("securityContext") or {}).get("runAsNonRoot")):
            problems.append(f"{at}: runAsNonRoot is not set")
    return problems


def _argo_body(doc: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The object as hera's model expects it, and the Workflows a Sensor embeds.

    Argo Events inlines a webhook's context (``webhook.NAME.port``); hera models it as
    ``webhookContext``. A Sensor's ``argoWorkflow.source.resource`` is opaque to the model, so
    it is taken out and validated as a Workflow on its own.
    """
    body = copy.deepcopy({k: v for k, v in doc.items() if k not in ("apiVersion", "kind")})
    spec = body.get("spec") or {}
    if doc.get("kind") == "EventSource":
        spec["webhook"] = {name: {"webhookContext": ctx}
                           for name, ctx in (spec.get("webhook") or {}).items()}
    embedded = []
    if doc.get("kind") == "Sensor":
        for trigger in spec.get("triggers") or []:
            source = ((trigger.get("template") or {}).get("argoWorkflow") or {}).get("source")
            if source and "resource" in source:
                embedded.append(source.pop("resource"))
    return body, embedded


def _embedded_workflow_problems(workflow: dict[str, Any],
                                library: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """A Workflow inside a Sensor: hera's model, no unknown field, a template that exists."""
    from hera.workflows.models import Workflow  # noqa: PLC0415

    if workflow.get("kind") != "Workflow":
        return [f"sensor resource kind {workflow.get('kind')}: expected Workflow"]
    body = {k: v for k, v in workflow.items() if k not in ("apiVersion", "kind")}
    try:
        parsed = Workflow.model_validate(body)
    except ValidationError as exc:
        return [f"sensor workflow: {str(exc)[:300]}"]
    dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    problems = [f"sensor workflow: unknown field {p}" for p in unknown_fields(body, dumped)]
    ref = ((body.get("spec") or {}).get("workflowTemplateRef") or {}).get("name")
    if ref and not any(name == ref for name, _ in library):
        problems.append(f"sensor workflow: WorkflowTemplate {ref} not found in workflows/")
    return problems


def claim_names(doc: dict[str, Any]) -> list[str]:
    """The PersistentVolumeClaims an Argo object mounts by name (not volumeClaimTemplates)."""
    return re.findall(r'"claimName": "([^"]+)"', json.dumps(doc))


def _walk_dicts(doc: Any) -> list[dict[str, Any]]:
    """Every mapping inside ``doc``, itself included."""
    if isinstance(doc, dict):
        return [doc, *(d for v in doc.values() for d in _walk_dicts(v))]
    if isinstance(doc, list):
        return [d for v in doc for d in _walk_dicts(v)]
    return []


def secret_names(doc: dict[str, Any]) -> set[str]:
    """The Secrets an object reads: ``secretKeyRef`` names and ``secret`` volumes."""
    refs = [r for d in _walk_dicts(doc) for r in (d.get("secretKeyRef"), d.get("secret"))]
    return {r.get("name") or r.get("secretName") for r in refs if isinstance(r, dict)} - {None}


def playbook_secrets(root: Path | None = None) -> set[str]:
    """Names of the Secrets the ``ansible/`` playbooks create.

    A name written ``{{ var }}`` is resolved from its play's vars.
    """
    root = root or repo_root()
    names = set()
    for path in sorted((root / "ansible").rglob("*.yml")):
        plays = yaml.safe_load(path.read_text())
        for play in plays if isinstance(plays, list) else []:
            if not isinstance(play, dict):
                continue
            variables = play.get("vars") or {}
            for d in _walk_dicts(play.get("tasks") or []):
                if d.get("kind") == "Secret" and isinstance(d.get("metadata"), dict):
                    name = str(d["metadata"].get("name", ""))
                    var = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", name)
                    names.add(str(variables.get(var.group(1), "")) if var else name)
    return names - {""}


def reference_problems(objects: list[tuple[Path, dict[str, Any]]],
                       root: Path | None = None) -> list[str]:
    """ServiceAccounts and Secrets the Argo objects use that nothing in the repo creates.

    A cluster finds these only when a workflow starts (ServiceAccount not found,
    CreateContainerConfigError): every one must be declared in ``workflows/`` or created
    by an ``ansible/`` playbook.
    """
    accounts = {d["metadata"]["name"] for _, d in objects if d.get("kind") == "ServiceAccount"}
    secrets = playbook_secrets(root) | {d["metadata"]["name"] for _, d in objects
                                        if d.get("kind") == "Secret"}
    problems = []
    for path, doc in objects:
        used = {d["serviceAccountName"] for d in _walk_dicts(doc)
                if isinstance(d.get("serviceAccountName"), str)}
        problems += [f"{path.name}: ServiceAccount {a} is not declared in workflows/"
                     for a in sorted(used - accounts)]
        problems += [f"{path.name}: Secret {s} is created by no ansible/ playbook"
                     for s in sorted(secret_names(doc) - secrets)]
    return problems


def load_argo_objects(root: Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML object under ``workflows/`` (recursively), with its file."""
    root = root or repo_root()
    return [(f, doc) for f in sorted((root / "workflows").rglob("*.yaml"))
            for doc in yaml.safe_load_all(f.read_text()) if isinstance(doc, dict)]


def check_workflows(root: Path | None = None) -> list[CheckResult]:
    """Parse each Argo object with hera's model, then check parameters, images and resources."""
    models = _argo_models()
    objects = load_argo_objects(root)
    library = {(d["metadata"]["name"], t["name"]): t for _, d in objects
               if d.get("kind") == "WorkflowTemplate" for t in _walk_templates(d)}
    results = []
    claims = {d["metadata"]["name"] for _, d in objects
              if d.get("kind") == "PersistentVolumeClaim"}
    for path, doc in objects:
        name = f"argo {path.name} ({doc.get('kind')})"
        if doc.get("kind") in K8S_KINDS:
            checked = validate_k8s([doc], path.name)
            results.append(CheckResult(name, checked.passed, checked.detail))
            continue
        model = models.get(doc.get("kind", ""))
        if model is None or doc.get("apiVersion") != "argoproj.io/v1alpha1":
            results.append(CheckResult(name, False, f"unsupported {doc.get('apiVersion')} "
                                       f"{doc.get('kind')}"))
            continue
        body, embedded = _argo_body(doc)
        try:
            parsed = model.model_validate(body)
        except ValidationError as exc:
            results.append(CheckResult(name, False, str(exc)[:400]))
            continue
        dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        problems = [f"unknown field {p}" for p in unknown_fields(body, dumped)]
        problems += _template_problems(doc, library)
        problems += [f"claim {c} is not declared in workflows/" for c in claim_names(doc)
                     if c not in claims]
        for workflow in embedded:
            problems += _embedded_workflow_problems(workflow, library)
        results.append(CheckResult(name, not problems, "; ".join(problems[:5])))
    missing = reference_problems(objects, root)
    results.append(CheckResult("argo references (ServiceAccount, Secret)", not missing,
                               "; ".join(missing[:5])))
    return results


