"""``terraform`` for ``tf/kvm``: init, plan, apply, destroy, output, each with a dry-run.

The Terraform state stays in ``tf/kvm`` (``*.tfstate`` is git-ignored); variables come from
``tf/kvm/terraform.tfvars`` (git-ignored; ``terraform.tfvars.example`` shows the fields) or
``TF_VAR_*`` variables.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from movierec.infra.commands import Command, repo_root, require_tool, run
from movierec.infra.openstack import require_credentials

PLAN_FILE = "movierec.tfplan"  # written by `plan`, applied by `apply`
INSTALL_HINT = ("install Terraform >= 1.5 (https://developer.hashicorp.com/terraform/install; "
                "on Chameleon Jupyter it is in /work/.local/bin)")


def tf_dir() -> Path:
    """The Terraform configuration of the KVM cluster."""
    return repo_root() / "tf" / "kvm"


def _binary(dry_run: bool) -> str:
    """The terraform path; in a dry-run a missing binary is only named, never required."""
    if dry_run:
        return shutil.which("terraform") or "terraform"
    return require_tool("terraform", INSTALL_HINT)


def _var_args(directory: Path) -> list[str]:
    tfvars = directory / "terraform.tfvars"
    return [f"-var-file={tfvars.name}"] if tfvars.exists() else []


def commands(action: str, *, dry_run: bool, directory: Path | None = None,
             auto_approve: bool = False) -> list[Command]:
    """The exact commands ``action`` (plan, apply, destroy) runs, in order.

    Raises:
        ValueError: On an unknown action.
    """
    if action not in ("plan", "apply", "destroy"):
        raise ValueError(f"terraform action {action!r}: use plan, apply or destroy")
    d = directory or tf_dir()
    tf = _binary(dry_run)
    init = Command((tf, "init", "-input=false"), cwd=d)
    variables = _var_args(d)
    if action == "plan":
        return [init, Command((tf, "plan", "-input=false", *variables, f"-out={PLAN_FILE}"),
                              cwd=d)]
    approve = ["-auto-approve"] if auto_approve else []
    if action == "apply" and (d / PLAN_FILE).exists():
        # Apply what `plan` showed, not a fresh plan nobody reviewed (a saved plan takes no
        # variables and needs no approval: terraform refuses it once the state moved on).
        return [init, Command((tf, "apply", "-input=false", PLAN_FILE), cwd=d)]
    return [init, Command((tf, action, "-input=false", *variables, *approve), cwd=d)]


def run_action(action: str, *, dry_run: bool, directory: Path | None = None,
               auto_approve: bool = False) -> list[Command]:
    """Run (or, in a dry-run, print) ``terraform <action>``; return the commands.

    Raises:
        ToolMissingError: terraform or the OpenStack credentials are missing (not in a dry-run).
    """
    cmds = commands(action, dry_run=dry_run, directory=directory, auto_approve=auto_approve)
    if not dry_run:
        require_credentials("openstack")  # provider.tf: cloud = "openstack"
    for command in cmds:
        run(command, dry_run=dry_run)
    if action == "apply" and not dry_run and PLAN_FILE in cmds[-1].argv:
        (cmds[-1].cwd or tf_dir()).joinpath(PLAN_FILE).unlink()  # applied: stale from now on
    return cmds


def output_json(*, directory: Path | None = None) -> dict[str, Any]:
    """``terraform output -json`` of the applied configuration."""
    d = directory or tf_dir()
    command = Command((require_tool("terraform", INSTALL_HINT), "output", "-json"), cwd=d)
    done = run(command, dry_run=False, capture=True, echo=False)
    assert done is not None  # not a dry-run
    return json.loads(done.stdout or "{}")
