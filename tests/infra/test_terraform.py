"""tf/kvm: formatting, parsing, resource assertions, and the terraform wrapper's dry-run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from movierec.infra import terraform, validate
from movierec.infra.commands import ToolMissingError


@pytest.fixture
def tf_copy(repo_root: Path, tmp_path: Path) -> Path:
    """A scratch copy of tf/kvm that a test may break."""
    return Path(shutil.copytree(repo_root / "tf" / "kvm", tmp_path / "kvm"))


def _by_name(results: list) -> dict:
    return {r.name: r for r in results}


def test_committed_configuration_passes_every_check(repo_root: Path) -> None:
    tf_dir = repo_root / "tf" / "kvm"
    results = [validate.check_terraform_fmt(tf_dir), validate.check_terraform_parse(tf_dir),
               *validate.inspect_terraform(tf_dir)]
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    assert (tf_dir / "terraform.tfvars.example").is_file()
    assert int(validate.check_terraform_parse(tf_dir).detail.split()[0]) >= 15


def test_expected_resources_and_outputs(repo_root: Path) -> None:
    hcl = validate.load_hcl(repo_root / "tf" / "kvm")
    for kind in ("openstack_networking_network_v2", "openstack_networking_subnet_v2",
                 "openstack_networking_port_v2", "openstack_compute_instance_v2",
                 "openstack_networking_floatingip_v2", "openstack_blockstorage_volume_v3",
                 "openstack_compute_volume_attach_v2"):
        assert validate.resources(hcl, kind), kind
    assert len(validate.resources(hcl, "openstack_networking_floatingip_v2")) == 1
    attach = validate.resources(hcl, "openstack_compute_volume_attach_v2")["platform"]
    assert '["node1"]' in attach["instance_id"]
    node = validate.resources(hcl, "openstack_compute_instance_v2")["nodes"]
    assert node["flavor_id"] == "${var.reservation_id}"  # KVM@TACC: reserved flavor
    outputs = {n for block in hcl["output"] for n in block}
    assert {"node_names", "private_ips", "floating_ip"} <= outputs
    variables = {n for block in hcl["variable"] for n in block}
    assert {"suffix", "key", "reservation_id", "image", "node_count", "volume_size"} <= variables


def _append(tf_dir: Path, text: str) -> None:
    path = tf_dir / "main.tf"
    path.write_text(path.read_text() + "\n" + text)


@pytest.mark.parametrize("rule", [
    # SSH open to the world
    'resource "openstack_networking_secgroup_rule_v2" "bad" {\n'
    '  direction         = "ingress"\n  ethertype         = "IPv4"\n'
    '  protocol          = "tcp"\n  port_range_min    = 22\n  port_range_max    = 22\n'
    '  remote_ip_prefix  = "0.0.0.0/0"\n'
    '  security_group_id = openstack_networking_secgroup_v2.ssh.id\n}\n',
    # a port the system does not use
    'resource "openstack_networking_secgroup_rule_v2" "bad" {\n'
    '  direction         = "ingress"\n  ethertype         = "IPv4"\n'
    '  protocol          = "tcp"\n  port_range_min    = 8080\n  port_range_max    = 8080\n'
    '  remote_ip_prefix  = var.private_cidr\n'
    '  security_group_id = openstack_networking_secgroup_v2.ssh.id\n}\n',
    # the API server in public
    'resource "openstack_networking_secgroup_rule_v2" "bad" {\n'
    '  direction         = "ingress"\n  ethertype         = "IPv4"\n'
    '  protocol          = "tcp"\n  port_range_min    = 6443\n  port_range_max    = 6443\n'
    '  remote_ip_prefix  = "0.0.0.0/0"\n'
    '  security_group_id = openstack_networking_secgroup_v2.cluster.id\n}\n',
])
def test_unexpected_ingress_rule_fails(tf_copy: Path, rule: str) -> None:
    _append(tf_copy, rule)
    result = _by_name(validate.inspect_terraform(tf_copy))["terraform security-group rules"]
    assert not result.passed
    assert "bad:" in result.detail


def test_missing_rule_and_changed_defaults_fail(tf_copy: Path) -> None:
    main = tf_copy / "main.tf"
    text = main.read_text()
    start = text.index('resource "openstack_networking_secgroup_rule_v2" "kube_api"')
    end = text.index("}\n", start) + 2
    main.write_text(text[:start] + text[end:])
    variables = tf_copy / "variables.tf"
    variables.write_text(variables.read_text().replace("default     = 3", "default     = 5"))
    results = _by_name(validate.inspect_terraform(tf_copy))
    assert "missing 6443" in results["terraform security-group rules"].detail
    assert not results["terraform node_count default 3"].passed


def test_literal_secret_and_loose_pin_fail(tf_copy: Path) -> None:
    provider = tf_copy / "provider.tf"
    literal = "pass" + 'word = "hunter2hunter2"'  # assembled: the repo scan checks this file
    provider.write_text(f'provider "openstack" {{\n  cloud    = "openstack"\n  {literal}\n}}\n')
    versions = tf_copy / "versions.tf"
    versions.write_text(versions.read_text().replace('"3.3.2"', '"~> 3.0"'))
    _append(tf_copy, 'resource "openstack_compute_instance_v2" "x" {\n'
                     '  name       = "x"\n  admin_pass = "s3cr3tpassw0rd"\n}\n')
    results = _by_name(validate.inspect_terraform(tf_copy))
    assert not results["terraform provider uses clouds.yaml"].passed
    assert not results["terraform provider pinned"].passed
    assert "admin_pass" in results["terraform has no literal secrets"].detail


def test_unformatted_and_unparsable_files_fail(tf_copy: Path) -> None:
    _append(tf_copy, 'locals {\n      badly_indented = 1\n}\n')
    assert not validate.check_terraform_fmt(tf_copy).passed
    (tf_copy / "broken.tf").write_text('resource "a" "b" {\n  x = \n}\n')
    assert not validate.check_terraform_parse(tf_copy).passed


def test_dry_run_prints_init_then_action(tf_copy: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # no terraform needed for a dry-run
    (tf_copy / "terraform.tfvars").write_text('suffix = "t"\n')
    cmds = terraform.run_action("apply", dry_run=True, directory=tf_copy, auto_approve=True)
    out = capsys.readouterr().out.splitlines()
    assert [c.argv[1] for c in cmds] == ["init", "apply"]
    assert "-var-file=terraform.tfvars" in cmds[1].argv and "-auto-approve" in cmds[1].argv
    assert all(line.startswith("[dry-run]") for line in out) and len(out) == 2
    with pytest.raises(ValueError, match="plan, apply or destroy"):
        terraform.commands("import", dry_run=True, directory=tf_copy)
    # After `plan`, `apply` applies that saved plan: what was reviewed, nothing fresh.
    (tf_copy / terraform.PLAN_FILE).write_bytes(b"plan")
    saved = terraform.commands("apply", dry_run=True, directory=tf_copy, auto_approve=True)
    assert saved[1].argv[1:] == ("apply", "-input=false", terraform.PLAN_FILE)


def test_apply_without_credentials_says_how_to_get_them(
        tf_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in ("OS_CLOUD", "OS_AUTH_URL", "OS_PASSWORD", "OS_CLIENT_CONFIG_FILE",
                 "OS_APPLICATION_CREDENTIAL_SECRET", "OS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(terraform, "require_tool", lambda name, hint: f"/usr/bin/{name}")
    with pytest.raises(ToolMissingError, match=r"clouds\.yaml"):
        terraform.run_action("plan", dry_run=False, directory=tf_copy)
