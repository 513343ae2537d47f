"""Submit the Argo WorkflowTemplates of ``workflows/`` (``argo submit --from``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from movierec.infra.argo_checks import load_argo_objects
from movierec.infra.commands import Command, require_tool, run

ARGO_NAMESPACE = "argo"
ARGO_HOW = ("install the Argo Workflows CLI (ansible post_k8s installs the pinned release on "
            "the cluster node: https://github.com/argoproj/argo-workflows/releases)")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def workflow_templates(root: Path | None = None) -> dict[str, set[str]]:
    """Each WorkflowTemplate in ``workflows/`` (of ``root``) and its parameter names."""
    templates: dict[str, set[str]] = {}
    for _, doc in load_argo_objects(root):
        if doc.get("kind") == "WorkflowTemplate":
            declared = ((doc.get("spec") or {}).get("arguments") or {}).get("parameters")
            templates[doc["metadata"]["name"]] = {p["name"] for p in declared or []}
    return templates


def submit_command(name: str, params: Mapping[str, str], *, dry_run: bool = False,
                   namespace: str = ARGO_NAMESPACE, wait: bool = False) -> Command:
    """``argo submit --from workflowtemplate/NAME -p k=v ...`` for one template.

    Raises:
        ValueError: A name that no template in ``workflows/`` has (the closest is named),
            or a parameter the template does not declare: a dry run says so too, instead
            of printing a command that would fail on the cluster.
    """
    if not _NAME.match(name):
        raise ValueError(f"workflow template {name!r}: use a Kubernetes name such as "
                         "movierec-lifecycle")
    for key in params:
        if not _NAME.match(key):
            raise ValueError(f"parameter {key!r}: use lower-case letters, digits and '-'")
    templates = workflow_templates()
    if name not in templates:
        hint = f"movierec-{name}" if f"movierec-{name}" in templates else None
        raise ValueError(f"no WorkflowTemplate {name!r} in workflows/"
                         + (f": did you mean {hint!r}?" if hint else "")
                         + f" (there are {', '.join(sorted(templates))})")
    unknown = sorted(set(params) - templates[name])
    if unknown:
        raise ValueError(f"{name} has no parameter {', '.join(unknown)} (it takes "
                         f"{', '.join(sorted(templates[name])) or 'none'})")
    argo = "argo" if dry_run else require_tool("argo", ARGO_HOW)
    argv = [argo, "submit", "-n", namespace, "--from", f"workflowtemplate/{name}"]
    for key, value in params.items():
        argv += ["-p", f"{key}={value}"]
    if wait:
        argv.append("--wait")
    return Command(tuple(argv))


def submit_workflow(name: str, params: Mapping[str, str], dry_run: bool,
                    wait: bool = False) -> Command:
    """Submit WorkflowTemplate ``name`` with ``params`` (or only print it when ``dry_run``).

    Raises:
        ToolMissingError: The argo CLI is not installed (not raised in a dry run).
        ValueError: The name or a parameter key is not valid.
    """
    command = submit_command(name, params, dry_run=dry_run, wait=wait)
    run(command, dry_run=dry_run)
    return command
