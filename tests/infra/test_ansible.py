"""ansible/: syntax, ansible-lint (production), pins and no_log, and the generated inventories."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from movierec.infra import ansible as ansible_infra
from movierec.infra import inventory, repo_scan, validate

OUTPUTS = {  # `terraform output -json` as tf/kvm/outputs.tf shapes it (documentation IPs)
    "node_names": {"value": ["node1", "node2", "node3"], "type": ["list", "string"]},
    "private_ips": {"value": {"node1": "192.168.1.11", "node2": "192.168.1.12",
                              "node3": "192.168.1.13"}},
    "floating_ip": {"value": "203.0.113.7"},
    "platform_volume_device": {"value": "/dev/vdb"},
    "ssh_user": {"value": "cc"},
}
EXPECTED_PLAYBOOKS = {"pre_k8s.yml", "post_k8s.yml", "ray_gpu.yml", "argocd/register_apps.yml",
                      "argocd/platform_secrets.yml", "argocd/workflow_templates.yml",
                      "argocd/workflow_secrets.yml", "argocd/build_images.yml"}


def _load(path: Path) -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text())


def _tasks(play: dict[str, Any]) -> list[dict[str, Any]]:
    return [*play.get("pre_tasks", []), *play.get("tasks", []), *play.get("post_tasks", [])]


def test_every_expected_playbook_exists() -> None:
    names = {str(p.relative_to(ansible_infra.ansible_dir())) for p in ansible_infra.playbooks()}
    assert names == EXPECTED_PLAYBOOKS


@pytest.mark.parametrize("name", sorted(EXPECTED_PLAYBOOKS))
def test_syntax_check(name: str, ansible_env: dict[str, str]) -> None:
    result = validate.check_ansible_syntax(ansible_infra.ansible_dir() / name)
    assert result.passed, result.detail


def test_syntax_check_catches_a_broken_playbook(tmp_path: Path,
                                                 ansible_env: dict[str, str]) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("- name: x\n  hosts: all\n  tasks:\n    - ansible.builtin.nonexistent_mod:"
                      "\n        a: 1\n")
    assert not validate.check_ansible_syntax(broken).passed


def test_ansible_lint_production_profile(ansible_env: dict[str, str]) -> None:
    result = validate.check_ansible_lint()
    assert result.passed, result.detail
    assert "production" in result.detail


def test_secret_handling_tasks_are_no_log() -> None:
    """Any task that generates, reads or writes a credential hides its output."""
    for path in ansible_infra.playbooks():
        for play in _load(path):
            for task in _tasks(play):
                text = json.dumps(task)
                # admin.conf embeds the cluster admin's key; only passing its path is fine.
                copies_kubeconfig = "admin.conf" in text and ("fetch" in text or "copy" in text)
                handles_secret = ("openssl rand" in text or '"Secret"' in text
                                  or copies_kubeconfig)
                if handles_secret:
                    assert task.get("no_log") is True, f"{path.name}: {task['name']}"


def test_localhost_plays_use_the_playbook_python() -> None:
    for path in ansible_infra.playbooks():
        for play in _load(path):
            if play["hosts"] == "localhost":
                assert play["vars"]["ansible_python_interpreter"] == \
                    "{{ ansible_playbook_python }}", path.name


def test_versions_are_pinned() -> None:
    post = _load(ansible_infra.ansible_dir() / "post_k8s.yml")[0]["vars"]
    for key in ("argo_workflows_version", "argo_events_version", "argocd_cli_version"):
        assert re.fullmatch(r"v\d+\.\d+\.\d+", post[key]), key
    ray = _load(ansible_infra.ansible_dir() / "ray_gpu.yml")[0]["vars"]
    assert ray["ray_version"] == "2.60.0"
    pin = ansible_infra.kubespray_pin()
    assert re.fullmatch(r"v2\.\d+\.\d+", pin["version"])
    addons = yaml.safe_load((ansible_infra.ansible_dir() / "kubespray" / "inventory" / "movierec"
                             / "group_vars" / "k8s_cluster" / "addons.yml").read_text())
    for flag in ("ingress_nginx_enabled", "helm_enabled", "metrics_server_enabled",
                 "local_path_provisioner_enabled", "argocd_enabled"):
        assert addons[flag] is True, flag
    assert addons["argocd_version"] == post["argocd_cli_version"]  # server and CLI agree
    for path in ansible_infra.ansible_dir().rglob("*.y*ml"):
        assert "latest" not in re.findall(r"/releases/(latest)/", path.read_text()), path


def test_argocd_playbooks_cover_every_stage(repo_root: Path) -> None:
    play = _load(ansible_infra.ansible_dir() / "argocd" / "register_apps.yml")[0]
    assert play["vars"]["argocd_apps"] == ["platform", "staging", "canary", "production"]
    modules = {next(k for k in t if "." in k) for t in _tasks(play)}
    assert "kubernetes.core.k8s" in modules
    for app in play["vars"]["argocd_apps"]:  # the other half writes these manifests
        assert (repo_root / "k8s" / "argocd" / f"{app}.yaml").is_file(), app


def test_inventory_from_terraform_outputs(tmp_path: Path, ansible_env: dict[str, str]) -> None:
    outputs = inventory.parse_terraform_outputs(json.dumps(OUTPUTS))
    paths = inventory.write_inventories(outputs, tmp_path)
    assert paths["ansible"].stat().st_mode & 0o077 == 0  # addresses stay private to the user
    listed = json.loads(subprocess.run(
        [ansible_infra.tool("ansible-inventory"), "-i", str(paths["ansible"]), "--list"],
        env=ansible_env, text=True, capture_output=True, check=True).stdout)
    hostvars = listed["_meta"]["hostvars"]
    assert hostvars["node1"]["ansible_host"] == "203.0.113.7"
    assert hostvars["node3"]["ansible_host"] == "192.168.1.13"
    assert "ProxyJump=cc@203.0.113.7" in hostvars["node3"]["ansible_ssh_common_args"]
    assert listed["kube_control_plane"]["hosts"] == ["node1"]
    assert listed["platform"]["hosts"] == ["node1"]

    hosts = yaml.safe_load(paths["kubespray"].read_text())["all"]
    assert hosts["hosts"]["node2"]["ip"] == "192.168.1.12"
    assert set(hosts["children"]["kube_node"]["hosts"]) == {"node1", "node2", "node3"}
    assert set(hosts["children"]["etcd"]["hosts"]) == {"node1"}
    assert set(hosts["children"]["k8s_cluster"]["children"]) == {"kube_control_plane",
                                                                 "kube_node"}


def test_inventory_rejects_incomplete_or_wrong_outputs() -> None:
    with pytest.raises(ValueError, match="floating_ip"):
        inventory.parse_terraform_outputs({k: v for k, v in OUTPUTS.items()
                                           if k != "floating_ip"})
    public_private = json.loads(json.dumps(OUTPUTS))
    public_private["private_ips"]["value"]["node2"] = ".".join(["129", "114", "0", "5"])
    with pytest.raises(ValueError, match="not a private address"):
        inventory.parse_terraform_outputs(public_private)
    missing_node = json.loads(json.dumps(OUTPUTS))
    del missing_node["private_ips"]["value"]["node3"]
    with pytest.raises(ValueError, match="node3"):
        inventory.parse_terraform_outputs(missing_node)


def test_no_address_is_committed_in_ansible(repo_root: Path) -> None:
    """Only the documented example inventory may hold addresses (documentation ranges)."""
    for path in (repo_root / "ansible").rglob("*"):
        if path.is_file() and path.name != "example.yml":
            assert not repo_scan.scan_text(path.read_text()), path


def test_cluster_up_dry_run_orders_the_steps(capsys: pytest.CaptureFixture[str]) -> None:
    cmds = ansible_infra.cluster_up(dry_run=True)
    assert cmds[0].argv[-1].endswith("pre_k8s.yml")
    assert cmds[-1].argv[-1].endswith("post_k8s.yml")
    clone = next(c for c in cmds if "clone" in c.argv)
    assert ansible_infra.kubespray_pin()["version"] in clone.argv
    kubespray = cmds[-2]
    assert kubespray.argv[-1] == "cluster.yml"
    ours = ansible_infra.ansible_dir() / "kubespray" / "inventory" / "movierec"
    assert str(ours) in kubespray.argv
    assert capsys.readouterr().out.count("[dry-run]") == len(cmds)


def test_cluster_up_needs_the_inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ansible_infra, "default_inventory_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match="movierec infra inventory"):
        ansible_infra.cluster_up(dry_run=False)


def test_gpu_nodes_get_movierec_at_a_pinned_revision(repo_root: Path) -> None:
    """Ray workers import movierec: the venv holds it, with requirements.txt's pins."""
    play = _load(ansible_infra.ansible_dir() / "ray_gpu.yml")[0]
    tasks = _tasks(play)
    pips = [t["ansible.builtin.pip"] for t in tasks if "ansible.builtin.pip" in t]
    assert any(str(p.get("requirements", "")).endswith("/movierec/requirements.txt") for p in pips)
    own = next(p for p in pips if str(p.get("name", "")).endswith("/movierec"))
    assert own["extra_args"] == "--no-deps" and own["virtualenv"] == "{{ ray_venv }}"
    archive = next(t for t in tasks if t["name"].startswith("Package that revision"))
    assert "archive" in archive["ansible.builtin.command"]["argv"]
    assert play["vars"]["movierec_revision"] == "HEAD"
    # The Ray in the venv is the one movierec pins, and the Python the images run.
    pins = (repo_root / "requirements.txt").read_text()
    assert f"ray[default,train,tune]=={play['vars']['ray_version']}" in pins
    base = re.search(r"^FROM python:(\d+\.\d+\.\d+)-slim", (repo_root / "docker" /
                     "Dockerfile.train").read_text(), flags=re.M).group(1)
    assert play["vars"]["python_version"] == base
    assert re.fullmatch(r"\d+\.\d+\.\d+", play["vars"]["uv_version"])
    names = [t["name"] for t in tasks]
    assert names.index("Movierec itself, at that revision (its dependencies are the pins above)") \
        < names.index("Start the Ray head")


def test_ray_gets_the_object_store_without_logging_it_and_restarts_on_new_code() -> None:
    """s3:// data: every worker downloads it, so Ray's environment holds the credentials."""
    play = _load(ansible_infra.ansible_dir() / "ray_gpu.yml")[0]
    tasks = {t["name"]: t for t in _tasks(play)}
    starts = [t for name, t in tasks.items() if name.startswith(("Start the Ray head",
                                                                 "Join the workers"))]
    assert len(starts) == 2
    for task in starts:
        assert task["environment"] == "{{ ray_environment }}" and task["no_log"] is True
    assert "s3_secret_access_key" in play["vars"]["ray_environment"]
    assert play["vars"]["s3_secret_access_key"] == ""  # given at run time, never in the file
    # Ray restarts when what it runs with changes: code, pins or environment (a hash, as the
    # environment holds credentials), recorded only once Ray runs.
    names = list(tasks)
    stop = "Stop Ray started from the earlier venv or with other code or settings"
    assert "ray_fingerprint" in tasks[stop]["loop"]
    fingerprint = next(t for name, t in tasks.items() if name.startswith("What this run starts"))
    recipe = fingerprint["ansible.builtin.set_fact"]["ray_fingerprint"]
    assert all(part in recipe for part in ("movierec_commit", "ray_version", "torch_version",
                                           "ray_environment", "sha256"))
    assert fingerprint["no_log"] is True
    record = tasks["Record what Ray runs with"]
    assert record["ansible.builtin.copy"]["mode"] == "0600"
    assert names.index(stop) < names.index("Is Ray already running here?") \
        < names.index("Check that every GPU is visible to Ray") < names.index(record["name"])


def test_ray_is_reachable_only_from_the_project(tmp_path: Path) -> None:
    """Ray takes no credentials: a host firewall admits the GPU nodes and the cluster only."""
    play = _load(ansible_infra.ansible_dir() / "ray_gpu.yml")[0]
    tasks = {t["name"]: t for t in _tasks(play)}
    names = list(tasks)
    rules = next(t for n, t in tasks.items() if n.startswith("Firewall rules"))
    copy = rules["ansible.builtin.copy"]
    assert copy["validate"] == "nft -c -f %s"
    text = copy["content"]
    assert "ray_node_ip" in text and "ray_client_cidrs" in text
    assert "tcp dport 22 accept" in text and "ip saddr @project accept" in text
    assert text.rstrip().splitlines()[-3].strip() == "counter drop"  # the chain's last rule
    assert play["vars"]["ray_client_cidrs"] == []
    assert names.index("Apply changed rules before Ray starts") < names.index("Start the Ray head")
    assert tasks["Enable and start the firewall"]["ansible.builtin.systemd_service"][
        "enabled"] is True  # loaded at every boot
    # The cluster's floating IP (where the train workflow's Ray client runs) is passed in.
    inventory.write_inventories(inventory.parse_terraform_outputs(OUTPUTS), tmp_path)
    assert ansible_infra.ray_client_cidrs(tmp_path) == ["203.0.113.7/32"]
    assert ansible_infra.ray_client_cidrs(tmp_path / "none") == []


def test_ray_client_cidrs_from_the_environment(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ansible_infra.RAY_CLIENTS_ENV, "198.51.100.4/32, 198.51.100.4/32")
    assert ansible_infra.ray_client_cidrs(tmp_path) == ["198.51.100.4/32"]
    monkeypatch.setenv(ansible_infra.RAY_CLIENTS_ENV, "my-laptop")
    with pytest.raises(ValueError, match=r"MOVIEREC_RAY_CLIENT_CIDRS.*my-laptop"):
        ansible_infra.ray_client_cidrs(tmp_path)


def test_ray_workers_join_only_when_the_head_does_not_list_them() -> None:
    """`ray status` names node ids, so the join compares the node's address with the head's."""
    play = _load(ansible_infra.ansible_dir() / "ray_gpu.yml")[0]
    tasks = {t["name"]: t for t in _tasks(play)}
    text = json.dumps(list(tasks.values()))
    assert "ray_status.stdout" not in text
    alive = tasks["Addresses of the alive Ray nodes, from the head"]
    assert alive["run_once"] is True and alive["delegate_to"] == "{{ ray_head }}"
    assert 'n["Alive"]' in alive["ansible.builtin.command"]["argv"][2]
    join = tasks["Does this worker need to join?"]["ansible.builtin.set_fact"]["ray_join"]
    assert "ray_node_ip not in (ray_alive.stdout_lines | last | from_json)" in join
    start = tasks["Join the workers to the head"]
    assert start["when"] == "ray_join"
    assert "--node-ip-address {{ ray_node_ip }}" in start["ansible.builtin.command"]


def test_nodes_allow_the_user_namespaces_of_rootless_buildkit() -> None:
    play = _load(ansible_infra.ansible_dir() / "pre_k8s.yml")[0]
    task = next(t for t in _tasks(play) if "ansible.posix.sysctl" in t)
    sysctl = task["ansible.posix.sysctl"]
    assert (sysctl["name"], sysctl["value"]) == ("kernel.apparmor_restrict_unprivileged_userns",
                                                 "0")
    assert sysctl["sysctl_file"].startswith("/etc/sysctl.d/99-")  # persistent, read last
    assert sysctl["sysctl_set"] is True


def test_the_workflow_token_secret_carries_the_cli_flags() -> None:
    play = _load(ansible_infra.ansible_dir() / "argocd" / "workflow_secrets.yml")[0]
    tasks = {t["name"]: t for t in _tasks(play)}
    create = tasks["Store the token for the workflows"]["kubernetes.core.k8s"]["definition"]
    assert create["stringData"]["opts"] == "{{ argocd_cli_opts }}"
    patch = tasks["Keep the CLI flags of an existing workflow token up to date"]
    assert patch["kubernetes.core.k8s"]["state"] == "patched" and patch["no_log"] is True
    assert "token" not in patch["kubernetes.core.k8s"]["definition"]["stringData"]
