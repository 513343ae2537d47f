"""The movierec images and the registry they live in: one name for pulls, one for pushes.

Pods (workflow steps, the stage services) name ``<pull host>/movierec-*`` and the nodes pull
it: containerd's mirror (Kubespray ``containerd_registries_mirrors``) sends the pull host to
the cluster's registry (``k8s/platform``, ``templates/registry.yaml``) at its fixed ClusterIP.
Builds and retags run in pods, where that name does not resolve: they push to the registry
Service's cluster DNS name. The registry stores by repository path, so both names reach one
image only while every file agrees; ``registry_problems`` checks that they do, offline.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

from movierec.infra.commands import CheckResult, repo_root

IMAGES = ("movierec-train", "movierec-serve", "movierec-serve-candidates")
# host[:port]/movierec-<name>[:tag]: a reference to one of the project's images.
_REFERENCE = re.compile(r"([A-Za-z0-9.-]+(?::\d+)?)/(movierec-(?:train|serve-candidates|serve))"
                        r"(?![\w-])(?::([\w.-]+))?")
KUBESPRAY_VARS = Path("ansible/kubespray/inventory/movierec/group_vars")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _params(template: dict[str, Any]) -> dict[str, str]:
    """``{name: default}`` of a WorkflowTemplate's arguments."""
    return {p["name"]: str(p.get("value", "")) for p in
            ((template.get("spec") or {}).get("arguments") or {}).get("parameters", [])}


def registry_settings(root: Path | None = None) -> dict[str, Any]:
    """The registry's names and addresses as the platform chart declares them."""
    from movierec.infra.manifests import PLATFORM_NAMESPACE, PLATFORM_RELEASE  # noqa: PLC0415

    values = _yaml((root or repo_root()) / "k8s" / "platform" / "values.yaml")["registry"]
    service = f"{PLATFORM_RELEASE}-registry.{PLATFORM_NAMESPACE}.svc.cluster.local"
    return {**values, "push": f"{service}:{values['pushPort']}",
            "mirror": f"http://{values['clusterIP']}:{values['pullPort']}"}


def image_references(root: Path | None = None) -> list[tuple[str, str, str, str]]:
    """``(file, host, image, tag)`` of every project image named in workflows/, k8s/, ansible/."""
    root = root or repo_root()
    files = [*sorted((root / "workflows").rglob("*.yaml")),
             *sorted((root / "k8s").rglob("values*.yaml")),
             *sorted((root / "ansible").rglob("*.yml"))]
    refs = []
    for path in files:
        for host, image, tag in _REFERENCE.findall(path.read_text()):
            refs.append((str(path.relative_to(root)), host, image, tag))
    return refs


def _static_band(network: ipaddress.IPv4Network) -> ipaddress.IPv4Network:
    """The low part of the Service range Kubernetes keeps for fixed ClusterIPs.

    KEP-3070: min(max(16, size/16), 256) addresses (a /18 keeps its first 256).
    """
    size = min(max(16, network.num_addresses // 16), 256)
    return ipaddress.ip_network(f"{network.network_address}/{32 - (size.bit_length() - 1)}")


def _mirror_problems(root: Path, reg: dict[str, Any]) -> list[str]:
    path = root / KUBESPRAY_VARS / "all" / "containerd.yml"
    if not path.is_file():
        return [f"{path.relative_to(root)} is missing: no node maps {reg['pullHost']}"]
    entries = {e.get("prefix"): e for e in (_yaml(path) or {}).get(
        "containerd_registries_mirrors") or []}
    entry = entries.get(reg["pullHost"])
    if entry is None:
        return [f"containerd_registries_mirrors has no prefix {reg['pullHost']}"]
    problems = []
    hosts = [m.get("host") for m in entry.get("mirrors") or []]
    if hosts != [reg["mirror"]]:
        problems.append(f"the containerd mirror of {reg['pullHost']} is {hosts}, the registry's "
                        f"pull address is {reg['mirror']}")
    if entry.get("server") != reg["mirror"]:
        problems.append(f"containerd server of {reg['pullHost']} is {entry.get('server')!r}: "
                        f"a fallback to https://{reg['pullHost']} resolves nowhere")
    for mirror in entry.get("mirrors") or []:
        if not {"pull", "resolve"} <= set(mirror.get("capabilities") or []):
            problems.append(f"mirror {mirror.get('host')} lacks pull/resolve capabilities")
    cluster = _yaml(root / KUBESPRAY_VARS / "k8s_cluster" / "k8s-cluster.yml") or {}
    services = ipaddress.ip_network(cluster.get("kube_service_addresses", "10.233.0.0/18"))
    address = ipaddress.ip_address(reg["clusterIP"])
    if address not in services:
        problems.append(f"registry clusterIP {address} is outside kube_service_addresses "
                        f"{services}")
    elif address not in _static_band(services):
        problems.append(f"registry clusterIP {address} is outside the static band "
                        f"{_static_band(services)} (a dynamic Service could take it first)")
    # Kubespray gives the first addresses to the API server (.1) and CoreDNS (.3, .4).
    taken = {services.network_address + n for n in (0, 1, 2, 3, 4)}
    if address in taken:
        problems.append(f"registry clusterIP {address} clashes with Kubespray's own Services")
    return problems


def _workflow_problems(root: Path, reg: dict[str, Any]) -> list[str]:
    docs = {d["metadata"]["name"]: d for f in sorted((root / "workflows").rglob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if isinstance(d, dict)}
    problems = []
    build = docs.get("movierec-build-image")
    if build is None:
        return ["workflows/: no movierec-build-image"]
    params = _params(build)
    if params.get("registry") != reg["push"]:
        problems.append(f"build-image pushes to {params.get('registry')!r}, the registry's push "
                        f"address is {reg['push']}")
    if params.get("pull-registry") != reg["pullHost"]:
        problems.append(f"build-image reports images on {params.get('pull-registry')!r}, the "
                        f"nodes pull from {reg['pullHost']}")
    template = build["spec"]["templates"][0]
    args = " ".join(template["container"]["args"])
    pushed = "name={{inputs.parameters.registry}}/{{inputs.parameters.image}}:" \
             "{{inputs.parameters.tag}},push=true"
    if pushed not in args:
        problems.append("build-image does not push <registry>/<image>:<tag>")
    outputs = {p["name"]: p.get("value", "") for p in template["outputs"]["parameters"]}
    if outputs.get("image-ref") != ("{{inputs.parameters.pull-registry}}/"
                                    "{{inputs.parameters.image}}:{{inputs.parameters.tag}}"):
        problems.append("build-image's image-ref is not <pull-registry>/<image>:<tag>")
    if "/" in params.get("image", ""):
        problems.append("build-image's image parameter names a host: give the repository path")
    promote = docs.get("movierec-promote")
    if promote is not None and _params(promote).get("registry") != reg["push"]:
        problems.append(f"promote retags on {_params(promote).get('registry')!r}, the "
                        f"registry's push address is {reg['push']}")
    return problems


def _chart_problems(root: Path, reg: dict[str, Any]) -> list[str]:
    from movierec.infra.manifests import (  # noqa: PLC0415 - Helm is loaded only here
        PLATFORM_NAMESPACE,
        PLATFORM_RELEASE,
        render_chart,
    )

    docs = render_chart(root / "k8s" / "platform", {}, PLATFORM_RELEASE, PLATFORM_NAMESPACE)
    name = f"{PLATFORM_RELEASE}-registry"
    found = {d["kind"]: d for d in docs if d["metadata"]["name"] == name}
    if not {"Service", "Deployment", "PersistentVolumeClaim"} <= set(found):
        return [f"the platform chart renders no registry Service, Deployment and claim "
                f"({name})"]
    problems = []
    service = found["Service"]["spec"]
    if service.get("clusterIP") != reg["clusterIP"]:
        problems.append(f"Service {name} has clusterIP {service.get('clusterIP')}")
    ports = {p["name"]: p["port"] for p in service["ports"]}
    if ports != {"pull": reg["pullPort"], "push": reg["pushPort"]}:
        problems.append(f"Service {name} ports {ports}")
    pod = found["Deployment"]["spec"]["template"]["spec"]
    claims = {v["name"] for v in pod["volumes"]
              if (v.get("persistentVolumeClaim") or {}).get("claimName") == name}
    for role in ("pull", "push"):
        box = next((c for c in pod["containers"] if c["name"] == role), None)
        if box is None or not any(m["name"] in claims and m["mountPath"] == "/var/lib/registry"
                                  for m in box.get("volumeMounts", [])):
            problems.append(f"registry container {role} does not serve the shared volume")
    return problems


def registry_problems(root: Path | None = None) -> list[str]:
    """Everything that would make a pushed image differ from the one the nodes pull."""
    root = root or repo_root()
    reg = registry_settings(root)
    problems = []
    refs = image_references(root)
    for file, host, image, _tag in refs:
        if host == reg["push"]:
            continue  # the in-pod push address (build, promote): checked below
        if host != reg["pullHost"]:
            problems.append(f"{file}: {host}/{image} is not on {reg['pullHost']}")
    if not any(host == reg["pullHost"] for _, host, _, _ in refs):
        problems.append(f"no image reference names {reg['pullHost']}")
    values = _yaml(root / "k8s" / "app" / "values.yaml")["image"]
    if values["repository"] != f"{reg['pullHost']}/movierec-serve":
        problems.append(f"k8s/app image.repository is {values['repository']}")
    problems += _mirror_problems(root, reg)
    problems += _workflow_problems(root, reg)
    problems += _chart_problems(root, reg)
    problems += _bootstrap_problems(root, reg, refs, str(values["tag"]))
    return problems


def _bootstrap_problems(root: Path, reg: dict[str, Any], refs: list[tuple[str, str, str, str]],
                        serve_tag: str) -> list[str]:
    """ansible/argocd/build_images.yml builds every image at the tag the manifests name."""
    path = root / "ansible" / "argocd" / "build_images.yml"
    if not path.is_file():
        return ["ansible/argocd/build_images.yml is missing: nothing builds the first images"]
    play = _yaml(path)[0]["vars"]
    problems = []
    if play["registry_pull_url"] != reg["mirror"]:
        problems.append(f"build_images.yml checks {play['registry_pull_url']}, the nodes pull "
                        f"from {reg['mirror']}")
    built = {i["name"] for i in play["images"]}
    tags = {(image, tag) for _, host, image, tag in refs if tag and host == reg["pullHost"]}
    tags.add(("movierec-serve", serve_tag))  # the app chart's default image
    for image, tag in sorted(tags):
        if image not in built or tag != str(play["image_tag"]):
            problems.append(f"{image}:{tag} is named but build_images.yml does not build it")
    return problems


def check_registry(root: Path | None = None) -> CheckResult:
    """One CheckResult for ``registry_problems``."""
    problems = registry_problems(root)
    return CheckResult("images: one registry for pushes and pulls", not problems,
                       "; ".join(problems[:5]) or "builds push where the nodes pull from")
