"""ArgoCD Applications and the argocd/argo CLI wrappers (dry-run, missing tools)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from movierec.infra import argo, argocd, argocd_model, manifests
from movierec.infra.commands import ToolMissingError


def test_applications_validate(repo_root: Path) -> None:
    failed = [r for r in argocd_model.check_argocd(repo_root) if not r.passed]
    assert not failed, failed


def test_applications_point_at_their_stage(repo_root: Path) -> None:
    for stage in manifests.STAGES:
        doc = yaml.safe_load((repo_root / "k8s" / "argocd" / f"{stage}.yaml").read_text())
        assert doc["spec"]["source"]["helm"]["valueFiles"][-1] == f"values-{stage}.yaml"
        assert doc["spec"]["destination"]["namespace"] == f"movierec-{stage}"
        header = (repo_root / "k8s" / "argocd" / f"{stage}.yaml").read_text().splitlines()[:4]
        assert any("Templated fields" in line for line in header)


def test_every_place_names_one_git_repository(repo_root: Path) -> None:
    # ArgoCD syncs from it, the image build clones it, ansible overrides it: one URL.
    urls = {yaml.safe_load(f.read_text())["spec"]["source"]["repoURL"]
            for f in sorted((repo_root / "k8s" / "argocd").glob("*.yaml"))}
    build = yaml.safe_load((repo_root / "workflows" / "build-image.yaml").read_text())
    urls |= {p["value"] for p in build["spec"]["arguments"]["parameters"]
             if p["name"] == "repo-url"}
    play = yaml.safe_load((repo_root / "ansible" / "argocd" / "register_apps.yml").read_text())
    urls.add(play[0]["vars"]["movierec_repo_url"])
    assert len(urls) == 1, urls


def test_application_model_rejects_unknown_fields(repo_root: Path) -> None:
    doc = yaml.safe_load((repo_root / "k8s" / "argocd" / "canary.yaml").read_text())
    doc["spec"]["source"]["helmm"] = {}
    with pytest.raises(ValidationError, match="helmm"):
        argocd_model.ArgoCDApplication.model_validate(doc)


def test_register_stages_dry_run(capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(argocd.REPO_URL_ENV, raising=False)
    monkeypatch.delenv(argocd.REVISION_ENV, raising=False)
    commands = argocd.register_stages(dry_run=True)
    out = capsys.readouterr().out
    assert out.count("[dry-run] kubectl apply --server-side --field-manager") == 4
    assert "platform.yaml" in commands[0].render()  # the platform first
    assert "argocd app wait movierec-production --health" in out
    # Without a fork given, the same source as ansible's register_apps.yml.
    assert "from https://git.example.org/movierec/movierec.git at main" in out


def test_register_stages_applies_the_fork_not_the_placeholder(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-registration must not point ArgoCD back at the files' placeholder repository."""
    fork, revision = "https://github.test/me/movierec.git", "release-2"
    monkeypatch.setenv(argocd.REPO_URL_ENV, fork)
    monkeypatch.setenv(argocd.REVISION_ENV, revision)
    commands = argocd.register_stages(dry_run=True)
    applies = [c for c in commands if "apply" in c.argv]
    assert len(applies) == 4 and all(c.argv[-2:] == ("-f", "-") for c in applies)
    for command in applies:
        doc = yaml.safe_load(command.stdin or "")
        assert doc["spec"]["source"]["repoURL"] == fork
        assert doc["spec"]["source"]["targetRevision"] == revision
        assert doc["kind"] == "Application" and "parameters" not in doc["spec"]["source"].get(
            "helm", {})
    out = capsys.readouterr().out
    assert f"spec.source.repoURL={fork}, targetRevision={revision}" in out
    given = argocd.register_stages(dry_run=True, repo_url="https://other.test/x.git",
                                   revision="v3")
    assert "https://other.test/x.git" in (given[0].stdin or "")
    from movierec.cli.main import main

    capsys.readouterr()
    assert main(["infra", "stages", "register", "--dry-run", "--repo-url",
                 "https://flag.test/y.git", "--revision", "v4"]) == 0
    assert "from https://flag.test/y.git at v4" in capsys.readouterr().out


def test_missing_tools_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissingError, match="kubectl"):
        argocd.register_stages(dry_run=False)
    with pytest.raises(ToolMissingError, match="argo"):
        argo.submit_workflow("movierec-lifecycle", {}, dry_run=False)


def test_submit_workflow_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    command = argo.submit_workflow("movierec-lifecycle", {"trigger": "drift", "epochs": "5"},
                                   dry_run=True)
    assert command.argv[1:] == ("submit", "-n", "argo", "--from",
                                "workflowtemplate/movierec-lifecycle", "-p", "trigger=drift",
                                "-p", "epochs=5")
    assert "[dry-run] argo submit" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Kubernetes name"):
        argo.submit_workflow("Bad Name", {}, dry_run=True)


def test_reapplying_an_application_keeps_the_deploy_parameters(repo_root: Path) -> None:
    """The files carry no Helm parameters: `argocd app set -p` owns image.tag, model.version
    and ingress.*, so a server-side re-apply of the file leaves them as the deploy set them."""
    for app in argocd.APPS:
        doc = yaml.safe_load((repo_root / "k8s" / "argocd" / f"{app}.yaml").read_text())
        helm = doc["spec"]["source"].get("helm") or {}
        assert "parameters" not in helm, app
        if app != "platform":  # retire must reach replicas 0: nothing ignores them
            assert "ignoreDifferences" not in doc["spec"], app
    header = (repo_root / "k8s" / "argocd" / "canary.yaml").read_text()
    for param in ("image.tag", "model.version", "ingress.enabled"):
        assert param in header
