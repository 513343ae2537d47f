"""What the charts and workflows assume about the cluster that Terraform and Kubespray build.

Two assumptions fail only on a running cluster, so they are checked here, offline:

- **Networks.** ingress-nginx and containerd run on the host network, so their traffic reaches
  pods from the node network (``tf/kvm`` ``private_cidr``) or, across nodes, from Calico's
  VXLAN tunnel address in the pod network (Kubespray ``kube_pods_subnet``). The app chart's
  ``networkPolicy.allowCidrs`` and the registry's ``pullFrom`` must name both.
- **The platform volume.** Every claim of the local-path class that lands on the platform node
  (the platform chart's and ``workflows/`` claims, all pinned there) lives on one block volume
  of ``var.volume_size`` GiB; local-path enforces no size, so their sum must fit it. Workflows
  create no claims per run (``volumeClaimTemplates``): the class keeps released volumes
  (reclaim Retain), so every run would leave its data behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from movierec.infra.argo_checks import load_argo_objects
from movierec.infra.commands import CheckResult, repo_root

_SIZE = re.compile(r"^(\d+)(Mi|Gi|Ti)$")
_GIB = {"Mi": 1 / 1024, "Gi": 1.0, "Ti": 1024.0}


def gib(quantity: str) -> float:
    """A Kubernetes storage quantity (``512Mi``, ``20Gi``, ``1Ti``) in GiB.

    Raises:
        ValueError: Any other form (the checks would otherwise guess).
    """
    match = _SIZE.match(str(quantity).strip())
    if match is None:
        raise ValueError(f"storage size {quantity!r}: write it as <n>Mi, <n>Gi or <n>Ti")
    return int(match.group(1)) * _GIB[match.group(2)]


def _tf_defaults(root: Path) -> dict[str, Any]:
    from movierec.infra.validate import load_hcl  # noqa: PLC0415 - python-hcl2, loaded here

    hcl = load_hcl(root / "tf" / "kvm")
    return {name: body.get("default") for block in hcl.get("variable", [])
            for name, body in block.items()}


def network_problems(root: Path | None = None) -> list[str]:
    """Policies that would drop host-network traffic: both ranges must be admitted."""
    root = root or repo_root()
    cluster = yaml.safe_load((root / "ansible" / "kubespray" / "inventory" / "movierec" /
                              "group_vars" / "k8s_cluster" / "k8s-cluster.yml").read_text())
    wanted = {str(_tf_defaults(root)["private_cidr"]), str(cluster["kube_pods_subnet"])}
    app = yaml.safe_load((root / "k8s" / "app" / "values.yaml").read_text())
    platform = yaml.safe_load((root / "k8s" / "platform" / "values.yaml").read_text())
    problems = []
    for name, given in (("k8s/app networkPolicy.allowCidrs",
                         (app.get("networkPolicy") or {}).get("allowCidrs")),
                        ("k8s/platform registry.pullFrom",
                         (platform.get("registry") or {}).get("pullFrom"))):
        if set(given or []) != wanted:
            problems.append(f"{name} is {given}, the node and pod networks are "
                            f"{sorted(wanted)} (tf/kvm private_cidr, kube_pods_subnet)")
    return problems


def platform_claims(root: Path | None = None,
                    workflows: list[tuple[Path, dict[str, Any]]] | None = None,
                    ) -> dict[str, float]:
    """``{claim: GiB}`` of every local-path claim on the platform node (chart and workflows).

    ``workflows``: the objects of ``workflows/`` when the caller has them already.
    """
    from movierec.infra.manifests import (  # noqa: PLC0415 - Helm is loaded only here
        PLATFORM_NAMESPACE,
        PLATFORM_RELEASE,
        render_chart,
    )

    root = root or repo_root()
    platform = yaml.safe_load((root / "k8s" / "platform" / "values.yaml").read_text())
    docs = render_chart(root / "k8s" / "platform", {}, PLATFORM_RELEASE, PLATFORM_NAMESPACE)
    docs += [doc for _, doc in (workflows or load_argo_objects(root))]
    claims = {}
    for doc in docs:
        if doc.get("kind") != "PersistentVolumeClaim":
            continue
        spec = doc.get("spec") or {}
        if spec.get("storageClassName", platform["storageClassName"]) == \
                platform["storageClassName"]:
            claims[doc["metadata"]["name"]] = gib(spec["resources"]["requests"]["storage"])
    return claims


def storage_problems(root: Path | None = None) -> tuple[list[str], str]:
    """Claims that overcommit the platform volume, and workflows that leave claims behind."""
    root = root or repo_root()
    size = float(_tf_defaults(root)["volume_size"])
    workflows = load_argo_objects(root)
    claims = platform_claims(root, workflows)
    total = sum(claims.values())
    listed = ", ".join(f"{name} {value:g}" for name, value in sorted(claims.items()))
    problems = []
    if total > size:
        problems.append(f"local-path claims of {total:g} GiB ({listed}) exceed the platform "
                        f"volume's {size:g} GiB (tf/kvm volume_size): raise it or shrink them")
    for path, doc in workflows:
        spec = doc.get("spec") or {}
        spec = spec.get("workflowSpec", spec)
        if spec.get("volumeClaimTemplates"):
            problems.append(f"{path.name}: volumeClaimTemplates leave a retained volume per "
                            f"run (local-path reclaims nothing): use an emptyDir")
    return problems, f"{total:g} GiB of claims on a {size:g} GiB volume"


def check_cluster_assumptions(root: Path | None = None) -> list[CheckResult]:
    """Both checks as CheckResults."""
    network = network_problems(root)
    storage, summary = storage_problems(root)
    return [CheckResult("network policies admit the host-network sources", not network,
                        "; ".join(network) or "node and pod networks admitted"),
            CheckResult("storage fits the platform volume", not storage,
                        "; ".join(storage) or summary)]
