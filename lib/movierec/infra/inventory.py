"""Terraform outputs -> the Ansible inventory and the Kubespray ``hosts.yaml``.

No address is ever written into the repository: both inventories are generated from
``terraform output -json`` into ``.cache/infra/`` (git-ignored) each time the cluster changes.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from movierec.files import write_text_atomic
from movierec.infra.commands import repo_root

PROXY_ARGS = "-o ProxyJump={user}@{jump} -o StrictHostKeyChecking=accept-new"


def default_inventory_dir() -> Path:
    """Where generated inventories go: ``.cache/infra`` in the repository (git-ignored)."""
    return repo_root() / ".cache" / "infra"


class ClusterOutputs(BaseModel):
    """What ``tf/kvm/outputs.tf`` exports, as the inventory needs it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    node_names: list[str] = Field(min_length=1)
    private_ips: dict[str, str]
    floating_ip: str
    platform_volume_device: str = ""
    ssh_user: str = "cc"

    @field_validator("floating_ip")
    @classmethod
    def _valid_ip(cls, value: str) -> str:
        ipaddress.ip_address(value)  # raises ValueError naming the bad value
        return value

    @field_validator("private_ips")
    @classmethod
    def _valid_private(cls, value: dict[str, str]) -> dict[str, str]:
        for name, ip in value.items():
            if not ipaddress.ip_address(ip).is_private:
                raise ValueError(f"private_ips[{name}] = {ip} is not a private address")
        return value

    @model_validator(mode="after")
    def _every_node_has_an_address(self) -> ClusterOutputs:
        missing = [n for n in self.node_names if n not in self.private_ips]
        if missing:
            raise ValueError(f"terraform outputs: no private IP for {', '.join(missing)}")
        return self


def parse_terraform_outputs(raw: str | dict[str, Any]) -> ClusterOutputs:
    """Parse ``terraform output -json`` (``{name: {"value": ..., ...}}``).

    Raises:
        ValueError: When an output the inventory needs is missing (naming it).
    """
    data = json.loads(raw) if isinstance(raw, str) else raw
    needed = ("node_names", "private_ips", "floating_ip")
    missing = [k for k in needed if k not in data]
    if missing:
        raise ValueError(f"terraform output -json lacks {', '.join(missing)}: run "
                         "`movierec infra apply` first (outputs come from tf/kvm/outputs.tf)")
    values = {k: (v["value"] if isinstance(v, dict) and "value" in v else v)
              for k, v in data.items()}
    return ClusterOutputs.model_validate(values)


def _host_vars(outputs: ClusterOutputs, name: str) -> dict[str, Any]:
    """node1 is reached on the floating IP; the others through it (ProxyJump)."""
    first = outputs.node_names[0]
    private = outputs.private_ips[name]
    if name == first:
        return {"ansible_host": outputs.floating_ip, "private_ip": private}
    return {"ansible_host": private, "private_ip": private,
            "ansible_ssh_common_args": PROXY_ARGS.format(user=outputs.ssh_user,
                                                         jump=outputs.floating_ip)}


def ansible_inventory(outputs: ClusterOutputs) -> dict[str, Any]:
    """The inventory of ``pre_k8s.yml``, ``post_k8s.yml`` and ``argocd/``."""
    first = outputs.node_names[0]
    return {"all": {
        "vars": {"ansible_user": outputs.ssh_user,
                 "platform_volume_device": outputs.platform_volume_device},
        "hosts": {n: _host_vars(outputs, n) for n in outputs.node_names},
        "children": {"kube_control_plane": {"hosts": {first: None}},
                     "platform": {"hosts": {first: None}},
                     "gpu": {"hosts": {}}},
    }}


def kubespray_hosts(outputs: ClusterOutputs) -> dict[str, Any]:
    """Kubespray's ``hosts.yaml``: node1 control plane and etcd, every node a worker."""
    names = outputs.node_names
    hosts = {}
    for n in names:
        h = _host_vars(outputs, n)
        h.pop("private_ip")
        hosts[n] = {**h, "ip": outputs.private_ips[n], "access_ip": outputs.private_ips[n]}
    first = {names[0]: None}
    return {"all": {
        "hosts": hosts,
        "children": {
            "kube_control_plane": {"hosts": dict(first)},
            "etcd": {"hosts": dict(first)},
            "kube_node": {"hosts": {n: None for n in names}},
            "k8s_cluster": {"children": {"kube_control_plane": None, "kube_node": None}},
            "calico_rr": {"hosts": {}},
        },
    }}


def gpu_inventory(nodes: dict[str, dict[str, str]], ssh_user: str = "cc") -> dict[str, Any]:
    """Inventory of leased GPU servers (``ray_gpu.yml``): ``{name: {public_ip, private_ip}}``."""
    hosts = {name: {"ansible_host": v["public_ip"], "private_ip": v["private_ip"]}
             for name, v in nodes.items()}
    return {"all": {"vars": {"ansible_user": ssh_user},
                    "children": {"gpu": {"hosts": hosts}}}}


def write_yaml(data: dict[str, Any], path: Path) -> Path:
    """Write an inventory (created 0600: it names the cluster's addresses)."""
    text = "---\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return write_text_atomic(path, text, mode=0o600)


def write_inventories(outputs: ClusterOutputs, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``inventory.yml`` and ``kubespray-hosts.yaml``; return their paths."""
    out = out_dir or default_inventory_dir()
    return {"ansible": write_yaml(ansible_inventory(outputs), out / "inventory.yml"),
            "kubespray": write_yaml(kubespray_hosts(outputs), out / "kubespray-hosts.yaml")}
