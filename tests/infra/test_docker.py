"""Dockerfiles: pinned bases, multi-stage, non-root, HEALTHCHECK; serving stays torch-free."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from movierec.infra import manifests

DOCKERFILES = ("Dockerfile.serve", "Dockerfile.train")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_rules(repo_root: Path, name: str) -> None:
    text = (repo_root / "docker" / name).read_text()
    bases = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M)
    assert len(bases) >= 2, "multi-stage"
    for base, stage in bases:
        if base.startswith("${"):
            default = re.search(r"^ARG BASE=(\S+)", text, flags=re.M)
            assert default, "ARG BASE needs a pinned default"
            base = default.group(1)
        assert manifests.image_problem(base) is None, base
        if stage == "argocd-cli":  # only a binary is copied out of it
            assert base.startswith("quay.io/argoproj/argocd:v"), base
            continue
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and not users[-1].startswith(("root", "0")), "runs as non-root"
    assert re.search(r"^HEALTHCHECK ", text, flags=re.M)


def test_serving_image_installs_no_torch(repo_root: Path) -> None:
    text = (repo_root / "docker" / "Dockerfile.serve").read_text()
    assert "torch" not in re.sub(r"#.*|import torch", "", text)
    assert "onnxruntime" in text


def test_serving_code_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; sys.modules['ray'] = None\n"
            "import movierec.cli.serve, movierec.serving.app, movierec.registry.mlflow_registry")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dockerignore_keeps_state_out(repo_root: Path) -> None:
    ignored = (repo_root / ".dockerignore").read_text().splitlines()
    for entry in (".git", ".venv", ".cache", "data", "clouds.yaml"):
        assert entry in ignored


def test_no_latest_anywhere(repo_root: Path, tmp_path: Path) -> None:
    result = manifests.scan_unpinned(repo_root)
    assert result.passed, result.detail
    # Dockerfiles are scanned too: a floating base image is caught.
    for folder in ("k8s", "workflows", "docker"):
        (tmp_path / folder).mkdir()
    (tmp_path / "docker" / "Dockerfile.serve").write_text("FROM python:3-slim\n")
    (tmp_path / "docker" / "Dockerfile.train").write_text("ARG BASE=python:3.11.15\n"
                                                          "FROM ${BASE}\n")
    broken = manifests.scan_unpinned(tmp_path)
    assert not broken.passed and "docker/Dockerfile.serve:1" in broken.detail
    assert "Dockerfile.train" not in broken.detail


def test_argocd_cli_images_match_the_installed_server(repo_root: Path) -> None:
    import yaml

    addons = repo_root / "ansible/kubespray/inventory/movierec/group_vars/k8s_cluster/addons.yml"
    server = yaml.safe_load(addons.read_text())["argocd_version"]
    cli = yaml.safe_load((repo_root / "ansible/post_k8s.yml").read_text())[0]["vars"]
    assert cli["argocd_cli_version"] == server
    for path in [*(repo_root / "workflows").glob("*.yaml"), repo_root / "docker/Dockerfile.train"]:
        for tag in re.findall(r"quay\.io/argoproj/argocd:(v[\d.]+)", path.read_text()):
            assert tag == server, f"{path.name}: argocd {tag}, the cluster runs {server}"


def test_train_image_carries_the_pinned_argocd_cli(repo_root: Path) -> None:
    text = (repo_root / "docker" / "Dockerfile.train").read_text()
    argocd_how = __import__("movierec.infra.argocd", fromlist=["ARGOCD_HOW"]).ARGOCD_HOW
    version = re.search(r"quay.io/argoproj/argocd:(v[\d.]+) AS argocd-cli", text).group(1)
    assert version in argocd_how  # the same version the CLI wrappers ask for
    assert "COPY --from=argocd-cli /usr/local/bin/argocd /usr/local/bin/argocd" in text


def test_checkov_passes_on_docker(repo_root: Path, checkov_bin: Path) -> None:
    done = subprocess.run([str(checkov_bin), "-d", str(repo_root / "docker"),
                           "--skip-download", "-o", "json"], capture_output=True, text=True,
                          check=False, cwd=repo_root)
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    assert not report["results"]["failed_checks"], [
        (c["check_id"], c["file_path"]) for c in report["results"]["failed_checks"]]
    assert report["summary"]["passed"] > 50
    assert not report["results"]["skipped_checks"]  # nothing waived: every base is pinned


def test_gpu_training_image_runs_on_the_build_stages_python(repo_root: Path) -> None:
    """The venv links the build stage's /usr/local/bin/python3.11: the runtime base is the same.

    A GPU image is the same Dockerfile with torch's CUDA index (the wheels carry CUDA's user
    libraries); a CUDA base image, which has no Python 3.11, is no longer an option.
    """
    text = (repo_root / "docker" / "Dockerfile.train").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M)
    build = next(base for base, stage in stages if stage == "build")
    runtime = stages[-1]
    assert runtime == (build, ""), "the runtime stage must start from the build stage's base"
    assert "ARG BASE" not in text and "${BASE}" not in text
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert re.search(r'--index-url "\$TORCH_INDEX" "torch==\$\{TORCH_VERSION\}"', text)
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
    # The GPU build the docs and the cluster bootstrap use is that build argument.
    readme = (repo_root / "docker" / "README.md").read_text()
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cu128" in readme
    assert "nvidia/cuda" not in text + readme
