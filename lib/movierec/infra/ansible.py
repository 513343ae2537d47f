"""``ansible-playbook`` for ``ansible/`` and Kubespray: the cluster bring-up, with a dry-run.

``cluster_up`` runs, in order: ``pre_k8s.yml``, Kubespray's ``cluster.yml`` (the pinned
release, cloned into ``.cache/kubespray`` and run from its own venv with its own pinned
requirements), and ``post_k8s.yml``. Inventories come from ``movierec infra inventory``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from movierec.infra.commands import Command, repo_root, require_tool, run
from movierec.infra.inventory import default_inventory_dir

INSTALL_HINT = "pip install ansible-core==2.19.14 (see requirements.txt), or run `make setup`"


def ansible_dir() -> Path:
    """The playbooks folder."""
    return repo_root() / "ansible"


def playbooks(folder: Path | None = None) -> list[Path]:
    """Every playbook of ``folder`` (default: this repository's ansible/), sorted.

    pre_k8s, post_k8s, ray_gpu and argocd/*.
    """
    d = folder or ansible_dir()
    found = [*d.glob("*.yml"), *(d / "argocd").glob("*.yml")]
    return sorted(p for p in found if p.name != "requirements.yml")


def tool(name: str, *, dry_run: bool = False) -> str:
    """An Ansible executable: the one beside this Python first (the venv), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    if dry_run:
        return shutil.which(name) or name
    return require_tool(name, INSTALL_HINT)


def ansible_env() -> dict[str, str]:
    """Environment for ansible-playbook: our ansible.cfg and, if present, offline collections."""
    env = {"ANSIBLE_CONFIG": str(ansible_dir() / "ansible.cfg")}
    collections = repo_root() / ".cache" / "ansible"
    offline = (collections / "ansible_collections").is_dir()
    if offline and "ANSIBLE_COLLECTIONS_PATH" not in os.environ:
        env["ANSIBLE_COLLECTIONS_PATH"] = str(collections)
    return env


def playbook_command(playbook: str | Path, *, inventory: Path | None = None,
                     dry_run: bool = False, extra: tuple[str, ...] = ()) -> Command:
    """``ansible-playbook -i INVENTORY PLAYBOOK`` for one of ``ansible/``'s playbooks."""
    path = Path(playbook)
    if not path.is_absolute():
        path = ansible_dir() / path
    if not path.is_file():
        raise FileNotFoundError(f"playbook {path} not found (see ansible/)")
    inv = inventory or default_inventory_dir() / "inventory.yml"
    return Command((tool("ansible-playbook", dry_run=dry_run), "-i", str(inv), *extra,
                    str(path)), cwd=ansible_dir(), env=ansible_env())


def kubespray_pin() -> dict[str, str]:
    """The pinned Kubespray repository and release tag (``ansible/kubespray/kubespray.yml``)."""
    data = yaml.safe_load((ansible_dir() / "kubespray" / "kubespray.yml").read_text())
    return {"repo": str(data["kubespray_repo"]), "version": str(data["kubespray_version"])}


def kubespray_commands(*, hosts: Path | None = None, dry_run: bool = False) -> list[Command]:
    """Fetch the pinned Kubespray, install its requirements in its own venv, run cluster.yml."""
    pin = kubespray_pin()
    home = repo_root() / ".cache" / "kubespray"
    src = home / pin["version"]
    venv = home / "venv"
    cmds = []
    if dry_run or not src.is_dir():
        git = ((shutil.which("git") or "git") if dry_run
               else require_tool("git", "install git (apt-get install git)"))
        cmds.append(Command((git, "clone", "--depth", "1", "--branch", pin["version"],
                             pin["repo"], str(src))))
    if dry_run or not (venv / "bin" / "ansible-playbook").exists():
        cmds += [Command((sys.executable, "-m", "venv", str(venv))),
                 Command((str(venv / "bin" / "pip"), "install", "--quiet", "-r",
                          str(src / "requirements.txt")))]
    inventory = ansible_dir() / "kubespray" / "inventory" / "movierec"
    hosts_file = hosts or default_inventory_dir() / "kubespray-hosts.yaml"
    # Two inventory sources: our committed group_vars and the generated hosts.
    cmds.append(Command((str(venv / "bin" / "ansible-playbook"), "-i", str(inventory), "-i",
                         str(hosts_file), "--become", "--become-user=root", "cluster.yml"),
                        cwd=src, env={"ANSIBLE_CONFIG": str(src / "ansible.cfg")}))
    return cmds


def cluster_up_commands(*, dry_run: bool) -> list[Command]:
    """Every command of the bring-up, in order."""
    inventory_dir = default_inventory_dir()
    if not dry_run:
        for name in ("inventory.yml", "kubespray-hosts.yaml"):
            if not (inventory_dir / name).is_file():
                raise FileNotFoundError(f"{inventory_dir / name} missing: run "
                                        "`movierec infra inventory` after `infra apply`")
    return [playbook_command("pre_k8s.yml", dry_run=dry_run),
            *kubespray_commands(dry_run=dry_run),
            playbook_command("post_k8s.yml", dry_run=dry_run)]


def run_commands(cmds: list[Command], *, dry_run: bool) -> list[Command]:
    """Run (or print) ``cmds`` in order, stopping at the first failure."""
    for command in cmds:
        run(command, dry_run=dry_run)
    return cmds


def cluster_up(*, dry_run: bool) -> list[Command]:
    """pre_k8s, Kubespray, post_k8s."""
    return run_commands(cluster_up_commands(dry_run=dry_run), dry_run=dry_run)


# Extra sources the Ray firewall admits (comma-separated CIDRs, e.g. your own address/32).
RAY_CLIENTS_ENV = "MOVIEREC_RAY_CLIENT_CIDRS"


def ray_client_cidrs(inventory_dir: Path | None = None) -> list[str]:
    """Who may reach Ray besides the GPU nodes: the cluster's floating IP and the variable's CIDRs.

    The workflows' Ray client runs on the platform node, whose floating IP (``ansible_host``
    in the cluster inventory, ``movierec infra inventory``) is its source address on the
    internet. Without a cluster inventory only the variable's CIDRs are returned.

    Raises:
        ValueError: A CIDR of the variable, or the inventory's address, is not an IP network.
    """
    cidrs = []
    path = (inventory_dir or default_inventory_dir()) / "inventory.yml"
    if path.is_file():
        root = (yaml.safe_load(path.read_text()) or {}).get("all") or {}
        hosts = root.get("hosts") or {}
        platform = ((root.get("children") or {}).get("platform") or {}).get("hosts") or {}
        for name in platform:
            address = (hosts.get(name) or {}).get("ansible_host", "")
            cidrs.append(str(ipaddress.ip_network(f"{address}/32")))
    for item in os.environ.get(RAY_CLIENTS_ENV, "").split(","):
        if item.strip():
            try:
                cidrs.append(str(ipaddress.ip_network(item.strip())))
            except ValueError as exc:
                raise ValueError(f"{RAY_CLIENTS_ENV}: {item.strip()!r} is not a CIDR "
                                 "(write e.g. 203.0.113.10/32)") from exc
    return list(dict.fromkeys(cidrs))


def ray_up(*, inventory: Path | None = None, dry_run: bool) -> list[Command]:
    """Start Ray on the leased GPU nodes (``ray_gpu.yml``), firewalled to the project."""
    inv = inventory or default_inventory_dir() / "gpu-inventory.yml"
    if not dry_run and not inv.is_file():
        raise FileNotFoundError(f"{inv} missing: run `movierec infra gpu lease` first")
    extra = ("-e", json.dumps({"ray_client_cidrs": ray_client_cidrs()}))
    return run_commands([playbook_command("ray_gpu.yml", inventory=inv, dry_run=dry_run,
                                          extra=extra)], dry_run=dry_run)
