"""Submit the Argo WorkflowTemplates of ``workflows/`` (``argo submit --from``)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from movierec.infra.commands import Command, require_tool, run

ARGO_NAMESPACE = "argo"
ARGO_HOW = ("install the Argo Workflows CLI (ansible post_k8s installs the pinned release on "
            "the cluster node: https://github.com/argoproj/argo-workflows/releases)")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def submit_command(name: str, params: Mapping[str, str], *, dry_run: bool = False,
                   namespace: str = ARGO_NAMESPACE, wait: bool = False) -> Command:
    """``argo submit --from workflowtemplate/NAME -p k=v ...`` for one template."""
    if not _NAME.match(name):
        raise ValueError(f"workflow template {name!r}: use a Kubernetes name such as "
                         "movierec-lifecycle")
    for key in params:
        if not _NAME.match(key):
            raise ValueError(f"parameter {key!r}: use lower-case letters, digits and '-'")
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
