"""OpenStack credentials and bare-metal GPU nodes on a CHI site (Blazar lease + servers).

Credentials are looked up, never printed: a ``clouds.yaml`` in one of the standard places
(``OS_CLIENT_CONFIG_FILE``, ``./``, ``~/.config/openstack/``, ``/etc/openstack/``) or the
``OS_*`` environment of an openrc/application credential. GPU nodes are leased through the
Blazar reservation API and booted with openstacksdk, as python-chi does; every step has a
dry-run that prints the requests it would send.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from movierec.infra.commands import ToolMissingError, repo_root

CREDENTIALS_HINT = (
    "download clouds.yaml from Chameleon (Identity > Application Credentials) to "
    "~/.config/openstack/clouds.yaml (never into the repository) and set OS_CLOUD to its "
    "entry, or source the site's openrc file")


def clouds_yaml_candidates() -> list[Path]:
    """Where openstacksdk and Terraform look for ``clouds.yaml``, in order."""
    paths = []
    if os.environ.get("OS_CLIENT_CONFIG_FILE"):
        paths.append(Path(os.environ["OS_CLIENT_CONFIG_FILE"]).expanduser())
    paths += [Path.cwd() / "clouds.yaml", repo_root() / "tf" / "kvm" / "clouds.yaml",
              Path.home() / ".config" / "openstack" / "clouds.yaml",
              Path("/etc/openstack/clouds.yaml")]
    return paths


def credential_sources() -> list[str]:
    """Names (never values) of the credential sources present on this machine."""
    found = list(dict.fromkeys(str(p.resolve()) for p in clouds_yaml_candidates()
                               if p.is_file()))
    if os.environ.get("OS_AUTH_URL") and (os.environ.get("OS_APPLICATION_CREDENTIAL_SECRET")
                                          or os.environ.get("OS_PASSWORD")
                                          or os.environ.get("OS_TOKEN")):
        found.append("OS_* environment (OS_AUTH_URL and a secret)")
    return found


def require_credentials(cloud: str | None = None) -> list[str]:
    """The credential sources, or a ToolMissingError saying how to provide them.

    Args:
        cloud: The clouds.yaml entry that must exist (e.g. ``"openstack"`` for Terraform);
            None means ``$OS_CLOUD``, or any source when that is unset too.
    """
    sources = credential_sources()
    if not sources:
        raise ToolMissingError(f"no OpenStack credentials found: {CREDENTIALS_HINT}")
    cloud = cloud or os.environ.get("OS_CLOUD")
    named = cloud is None or any(_has_cloud(Path(s), cloud) for s in sources
                                 if s.endswith("clouds.yaml"))
    if not named and not os.environ.get("OS_AUTH_URL"):
        raise ToolMissingError(f"no cloud named {cloud!r} in {', '.join(sources)}: "
                               f"{CREDENTIALS_HINT}")
    return sources


def _has_cloud(path: Path, cloud: str) -> bool:
    import yaml  # noqa: PLC0415 - only when a clouds.yaml exists

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return cloud in (data.get("clouds") or {})


class GpuLeaseConfig(BaseModel):
    """A bare-metal GPU lease on a CHI site and the servers booted in it.

    Attributes:
        cloud: clouds.yaml entry of the CHI site (e.g. ``chi_tacc``, ``chi_uc``).
        name: Lease and server name prefix (add your project or user id).
        node_type: Chameleon node type, e.g. ``gpu_a100_pcie`` or ``gpu_mi100``.
        node_count: How many nodes (the first becomes the Ray head).
        image: Boot image with the GPU stack.
        lease_hours: Lease length; Chameleon caps leases at 7 days.
        key_name: OpenStack key pair installed on the nodes.
        network: Network the servers attach to.
        floating_ip_pool: Network the public addresses come from.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cloud: str = "chi_tacc"
    name: str = Field(default="movierec-gpu", pattern=r"^[a-z0-9-]{1,40}$")
    node_type: str = "gpu_a100_pcie"
    node_count: int = Field(default=1, ge=1, le=4)
    image: str = "CC-Ubuntu24.04-CUDA"
    lease_hours: int = Field(default=8, ge=1, le=168)
    key_name: str = "id_rsa_chameleon"
    network: str = "sharednet1"
    floating_ip_pool: str = "public"


def lease_request(config: GpuLeaseConfig, now: dt.datetime) -> dict[str, Any]:
    """The Blazar ``POST /leases`` body for ``config``, starting at ``now`` (UTC)."""
    end = now + dt.timedelta(hours=config.lease_hours)
    return {
        "name": f"{config.name}-lease",
        "start_date": "now",
        "end_date": end.strftime("%Y-%m-%d %H:%M"),
        "reservations": [{
            "resource_type": "physical:host",
            "min": config.node_count,
            "max": config.node_count,
            "hypervisor_properties": "",
            "resource_properties": json.dumps(["==", "$node_type", config.node_type]),
        }],
        "events": [],
    }


def server_requests(config: GpuLeaseConfig, reservation_id: str) -> list[dict[str, Any]]:
    """The servers to boot inside the reservation (bare metal: flavor ``baremetal``)."""
    return [{"name": f"{config.name}-{i + 1}", "image": config.image, "flavor": "baremetal",
             "key_name": config.key_name, "network": config.network,
             "scheduler_hints": {"reservation": reservation_id}}
            for i in range(config.node_count)]


def plan(config: GpuLeaseConfig, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything ``lease_gpu`` would send, for the dry-run."""
    when = now or dt.datetime.now(dt.UTC)
    return {"cloud": config.cloud, "lease": lease_request(config, when),
            "servers": server_requests(config, "<reservation id from the lease>"),
            "floating_ips": config.node_count, "pool": config.floating_ip_pool}


def _connect(cloud: str) -> Any:
    require_credentials(cloud)
    try:
        import openstack  # noqa: PLC0415 - heavy, and only needed to act
    except ImportError as exc:
        raise ToolMissingError("openstacksdk is not installed: pip install "
                               "python-openstackclient==10.5.0 (see requirements.txt)") from exc
    return openstack.connect(cloud=cloud)


def _blazar(conn: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = conn.session.request(path, method, json=body,
                                    endpoint_filter={"service_type": "reservation",
                                                     "interface": "public"})
    return response.json() if response.content else {}


def lease_gpu(config: GpuLeaseConfig, *, dry_run: bool,
              wait_s: int = 1800) -> dict[str, dict[str, str]]:
    """Lease GPU nodes, boot them and give each a floating IP.

    Returns:
        ``{server name: {"public_ip": ..., "private_ip": ...}}`` (empty in a dry-run), the
        input of ``inventory.gpu_inventory``.
    """
    if dry_run:
        print("[dry-run] GPU lease plan:\n" + json.dumps(plan(config), indent=2))
        return {}
    conn = _connect(config.cloud)
    lease = _blazar(conn, "POST", "/leases",
                    lease_request(config, dt.datetime.now(dt.UTC)))["lease"]
    deadline = time.monotonic() + wait_s
    while lease["status"] != "ACTIVE":
        if lease["status"] == "ERROR" or time.monotonic() > deadline:
            raise RuntimeError(f"lease {lease['name']} is {lease['status']}")
        time.sleep(15)
        lease = _blazar(conn, "GET", f"/leases/{lease['id']}")["lease"]
    reservation = lease["reservations"][0]["id"]
    image = conn.image.find_image(config.image, ignore_missing=False)
    flavor = conn.compute.find_flavor("baremetal", ignore_missing=False)
    network = conn.network.find_network(config.network, ignore_missing=False)
    nodes: dict[str, dict[str, str]] = {}
    for request in server_requests(config, reservation):
        server = conn.compute.create_server(
            name=request["name"], image_id=image.id, flavor_id=flavor.id,
            key_name=config.key_name, networks=[{"uuid": network.id}],
            scheduler_hints=request["scheduler_hints"])
        server = conn.compute.wait_for_server(server, wait=wait_s)
        fip = conn.create_floating_ip(network=config.floating_ip_pool, server=server, wait=True)
        private = next(a["addr"] for addrs in server.addresses.values() for a in addrs
                       if a.get("OS-EXT-IPS:type", "fixed") == "fixed")
        nodes[request["name"]] = {"public_ip": fip["floating_ip_address"], "private_ip": private}
        print(f"{request['name']}: up")
    return nodes


def release_gpu(config: GpuLeaseConfig, *, dry_run: bool) -> list[str]:
    """Delete the servers and the lease of ``config``; return what was (or would be) deleted."""
    names = [r["name"] for r in server_requests(config, "-")] + [f"{config.name}-lease"]
    if dry_run:
        print("[dry-run] would delete servers and floating IPs of " + ", ".join(names[:-1])
              + f" and lease {names[-1]} on {config.cloud}")
        return names
    conn = _connect(config.cloud)
    for name in names[:-1]:
        server = conn.compute.find_server(name)
        if server is not None:
            conn.delete_server(server.id, wait=True, delete_ips=True)
    leases = _blazar(conn, "GET", "/leases").get("leases", [])
    for lease in leases:
        if lease["name"] == names[-1]:
            _blazar(conn, "DELETE", f"/leases/{lease['id']}")
    return names
