"""checkov on tf/, k8s/ and docker/: zero failed checks, and every skip says why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from movierec.infra import validate


@pytest.mark.parametrize("folder", validate.CHECKOV_FOLDERS)
def test_folder_passes_checkov(folder: str, repo_root: Path, checkov_bin: Path) -> None:
    path = repo_root / folder
    if not path.is_dir():
        pytest.fail(f"{folder}/ is missing: the infrastructure issue requires it "
                    "(checkov must scan it)")
    result = validate.check_checkov(path, checkov_bin)
    assert result.passed, result.detail


def test_checkov_fails_world_open_ssh(repo_root: Path, tmp_path: Path,
                                      checkov_bin: Path) -> None:
    tf = Path(shutil.copytree(repo_root / "tf", tmp_path / "tf"))
    main = tf / "kvm" / "main.tf"
    main.write_text(main.read_text().replace("remote_ip_prefix  = var.ssh_cidr",
                                             'remote_ip_prefix  = "0.0.0.0/0"'))
    result = validate.check_checkov(tf, checkov_bin)
    assert not result.passed
    assert "CKV_OPENSTACK_2" in result.detail


def test_skip_needs_a_reason(repo_root: Path, tmp_path: Path, checkov_bin: Path) -> None:
    tf = Path(shutil.copytree(repo_root / "tf", tmp_path / "tf"))
    main = tf / "kvm" / "main.tf"
    open_ssh = main.read_text().replace("remote_ip_prefix  = var.ssh_cidr",
                                        'remote_ip_prefix  = "0.0.0.0/0"')
    marker = 'resource "openstack_networking_secgroup_rule_v2" "ssh" {\n'
    main.write_text(open_ssh.replace(marker, marker + "  #checkov:skip=CKV_OPENSTACK_2\n"))
    unexplained = validate.check_checkov(tf, checkov_bin)
    assert not unexplained.passed and "skip without a reason" in unexplained.detail
    main.write_text(open_ssh.replace(
        marker, marker + "  #checkov:skip=CKV_OPENSTACK_2:bastion only reachable via VPN\n"))
    assert validate.check_checkov(tf, checkov_bin).passed


def test_config_file_skips_need_comments(tmp_path: Path) -> None:
    config = tmp_path / ".checkov.yaml"
    config.write_text("skip-check:\n  # images are pinned by tag; digests change per rebuild\n"
                      "  - CKV_K8S_43\n  - CKV_K8S_15  # pulls are pinned tags\n"
                      "  - CKV_K8S_21\nframework:\n  - kubernetes\n")
    assert validate.checkov_config_problems(config) == [".checkov.yaml: skip CKV_K8S_21 has "
                                                        "no reason"]


def test_missing_folder_fails(tmp_path: Path, checkov_bin: Path) -> None:
    result = validate.check_checkov(tmp_path / "docker", checkov_bin)
    assert not result.passed and "does not exist" in result.detail


def test_a_folder_with_nothing_checkov_can_scan_fails(tmp_path: Path, checkov_bin: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "README.md").write_text("the Dockerfiles went missing\n")
    result = validate.check_checkov(tmp_path / "docker", checkov_bin)
    assert not result.passed and "found nothing to scan" in result.detail
