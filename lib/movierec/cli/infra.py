"""``movierec infra ...``: Terraform, inventories, the cluster, GPU nodes and offline checks.

Every subcommand has ``--dry-run``, which prints the exact commands (or requests) it would
run and touches nothing; ``check`` runs every offline validation and exits 3 on a failure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from movierec.cli.lifecycle import VERDICT_NO

if TYPE_CHECKING:
    from movierec.infra.openstack import GpuLeaseConfig


def _dry(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands or requests, run nothing")
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``infra`` group."""
    infra = sub.add_parser("infra", help="provision and check the Chameleon infrastructure",
                           description="Terraform (tf/kvm), Ansible and Kubespray (ansible/), "
                           "GPU leases on CHI sites, ArgoCD stages and Argo workflows; "
                           "`check` validates all of it offline.")
    cmds = infra.add_subparsers(dest="infra_command", metavar="SUBCOMMAND", required=True)
    for action, text in (("plan", "terraform init + plan of tf/kvm"),
                         ("apply", "terraform apply of tf/kvm"),
                         ("destroy", "terraform destroy of tf/kvm")):
        p = _dry(cmds.add_parser(action, help=text, description=text + "; variables from "
                                 "tf/kvm/terraform.tfvars or TF_VAR_*."))
        if action != "plan":
            p.add_argument("--auto-approve", action="store_true", help="do not ask")
        p.set_defaults(run=run_terraform, action=action)
    inv = _dry(cmds.add_parser("inventory", help="terraform outputs -> Ansible inventories",
                               description="Write .cache/infra/inventory.yml and "
                               "kubespray-hosts.yaml from `terraform output -json`."))
    inv.add_argument("--outputs", type=Path, help="a saved `terraform output -json` file")
    inv.add_argument("--out", type=Path, help="folder (default .cache/infra)")
    inv.set_defaults(run=run_inventory)
    check = _dry(cmds.add_parser("check", help="every offline validation, as a table",
                                 description="Terraform, Ansible, checkov, the repository "
                                 "scan and the k8s/workflows checks; exit 3 on any failure."))
    check.add_argument("--json", action="store_true", help="print JSON instead of a table")
    check.set_defaults(run=run_check)

    cluster = cmds.add_parser("cluster", help="Kubernetes cluster bring-up",
                              description="pre_k8s.yml, Kubespray (pinned), post_k8s.yml.")
    cluster_cmds = cluster.add_subparsers(dest="cluster_command", metavar="SUBCOMMAND",
                                          required=True)
    _dry(cluster_cmds.add_parser("up", help="run pre_k8s, Kubespray and post_k8s")
         ).set_defaults(run=run_cluster_up)

    gpu = cmds.add_parser("gpu", help="bare-metal GPU nodes on a CHI site",
                          description="Lease GPU nodes (Blazar), boot them, or release them.")
    gpu_cmds = gpu.add_subparsers(dest="gpu_command", metavar="SUBCOMMAND", required=True)
    for action, text in (("lease", "lease and boot GPU nodes, write gpu-inventory.yml"),
                         ("release", "delete the GPU servers and their lease")):
        p = _dry(gpu_cmds.add_parser(action, help=text, description=text + "."))
        p.add_argument("--cloud", default="chi_tacc", help="clouds.yaml entry of the CHI site")
        p.add_argument("--name", default="movierec-gpu", help="lease/server name prefix")
        p.add_argument("--node-type", default="gpu_a100_pcie")
        p.add_argument("--count", type=int, default=1, help="number of nodes")
        p.add_argument("--image", default="CC-Ubuntu24.04-CUDA")
        p.add_argument("--hours", type=int, default=8, help="lease length")
        p.add_argument("--key", default="id_rsa_chameleon", help="OpenStack key pair")
        p.set_defaults(run=run_gpu, action=action)

    ray = cmds.add_parser("ray", help="Ray on the GPU nodes",
                          description="Start a Ray cluster (pinned ray==2.60.0) on the nodes "
                          "of `infra gpu lease` (ansible/ray_gpu.yml).")
    ray_cmds = ray.add_subparsers(dest="ray_command", metavar="SUBCOMMAND", required=True)
    ray_up = _dry(ray_cmds.add_parser("up", help="start the Ray head and workers"))
    ray_up.add_argument("--inventory", type=Path, help="default .cache/infra/gpu-inventory.yml")
    ray_up.set_defaults(run=run_ray_up)

    stages = cmds.add_parser("stages", help="ArgoCD applications of the stages",
                             description="Register platform, staging, canary and production "
                             "with ArgoCD (create or update).")
    stage_cmds = stages.add_subparsers(dest="stages_command", metavar="SUBCOMMAND",
                                       required=True)
    register = _dry(stage_cmds.add_parser("register",
                                          help="create or update the four Applications"))
    register.add_argument("--repo-url", help="Git repository ArgoCD syncs from (your fork; "
                          "default: $MOVIEREC_REPO_URL, else ansible/argocd/register_apps.yml's)")
    register.add_argument("--revision", help="branch, tag or commit to deploy (default: "
                          "$MOVIEREC_REVISION, else register_apps.yml's)")
    register.set_defaults(run=run_stages_register)

    workflow = cmds.add_parser("workflow", help="Argo workflows",
                               description="Submit one of the WorkflowTemplates in workflows/.")
    wf_cmds = workflow.add_subparsers(dest="workflow_command", metavar="SUBCOMMAND",
                                      required=True)
    submit = _dry(wf_cmds.add_parser("submit", help="submit a WorkflowTemplate"))
    submit.add_argument("name", help="WorkflowTemplate name, e.g. movierec-train")
    submit.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="workflow parameter (repeatable)")
    submit.set_defaults(run=run_workflow_submit)


def run_terraform(args: argparse.Namespace) -> int:
    """plan, apply or destroy."""
    from movierec.infra import terraform  # noqa: PLC0415

    terraform.run_action(args.action, dry_run=args.dry_run,
                         auto_approve=getattr(args, "auto_approve", False))
    return 0


def run_inventory(args: argparse.Namespace) -> int:
    """Write the inventories from the Terraform outputs."""
    from movierec.files import read_json_object  # noqa: PLC0415
    from movierec.infra import inventory, terraform  # noqa: PLC0415

    if args.outputs:
        raw = read_json_object(args.outputs, "--outputs")
    elif args.dry_run:
        print("[dry-run] terraform output -json (in tf/kvm), then write "
              f"{args.out or inventory.default_inventory_dir()}/inventory.yml and "
              "kubespray-hosts.yaml")
        return 0
    else:
        raw = terraform.output_json()
    outputs = inventory.parse_terraform_outputs(raw)
    if args.dry_run:
        print("[dry-run] inventory.yml:\n" + json.dumps(inventory.ansible_inventory(outputs),
                                                         indent=2))
        return 0
    for kind, path in inventory.write_inventories(outputs, args.out).items():
        print(f"{kind} inventory: {path} ({len(outputs.node_names)} nodes)")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Every offline check; exit 1 when one fails."""
    from movierec.infra import validate  # noqa: PLC0415

    if args.dry_run:
        print("[dry-run] would run: terraform fmt/parse/resources (tf/kvm), ansible "
              "--syntax-check + ansible-lint (ansible/), checkov (tf/, k8s/, docker/), "
              "repository scan, movierec.infra.manifests.validate_all()")
        return 0
    results = validate.run_all()
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    else:
        print(validate.format_table(results))
    return 0 if all(r.passed for r in results) else VERDICT_NO


def run_cluster_up(args: argparse.Namespace) -> int:
    """pre_k8s, Kubespray, post_k8s."""
    from movierec.infra import ansible  # noqa: PLC0415

    ansible.cluster_up(dry_run=args.dry_run)
    return 0


def _gpu_config(args: argparse.Namespace) -> GpuLeaseConfig:
    from movierec.infra.openstack import GpuLeaseConfig  # noqa: PLC0415

    return GpuLeaseConfig(cloud=args.cloud, name=args.name, node_type=args.node_type,
                          node_count=args.count, image=args.image, lease_hours=args.hours,
                          key_name=args.key)


def run_gpu(args: argparse.Namespace) -> int:
    """Lease or release GPU nodes."""
    from movierec.infra import inventory, openstack  # noqa: PLC0415

    config = _gpu_config(args)
    if args.action == "release":
        openstack.release_gpu(config, dry_run=args.dry_run)
        return 0
    nodes = openstack.lease_gpu(config, dry_run=args.dry_run)
    if nodes:
        path = inventory.write_yaml(inventory.gpu_inventory(nodes),
                                    inventory.default_inventory_dir() / "gpu-inventory.yml")
        print(f"GPU inventory: {path} ({len(nodes)} nodes); next: movierec infra ray up")
    return 0


def run_ray_up(args: argparse.Namespace) -> int:
    """Start Ray on the GPU nodes."""
    from movierec.infra import ansible  # noqa: PLC0415

    ansible.ray_up(inventory=args.inventory, dry_run=args.dry_run)
    return 0


def run_stages_register(args: argparse.Namespace) -> int:
    """Register the ArgoCD applications (the other half's movierec.infra.argocd)."""
    from movierec.infra import argocd  # noqa: PLC0415

    argocd.register_stages(args.dry_run, repo_url=args.repo_url, revision=args.revision)
    return 0


def run_workflow_submit(args: argparse.Namespace) -> int:
    """Submit an Argo WorkflowTemplate (movierec.infra.argo)."""
    from movierec.infra import argo  # noqa: PLC0415

    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {item!r}: use KEY=VALUE")
        params[key] = value
    argo.submit_workflow(args.name, params, args.dry_run)
    return 0
