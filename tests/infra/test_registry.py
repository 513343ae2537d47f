"""The image registry: one pull name for the nodes, one push address for the builds, one store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from movierec.infra import images, manifests


@pytest.fixture
def tree(repo_root: Path, tmp_path: Path) -> Path:
    """A copy of the files the registry check reads, to break one at a time."""
    for folder in ("workflows", "k8s", "ansible"):
        shutil.copytree(repo_root / folder, tmp_path / folder)
    return tmp_path


def test_pushes_land_where_the_nodes_pull(repo_root: Path) -> None:
    assert images.registry_problems(repo_root) == []
    result = images.check_registry(repo_root)
    assert result.passed and result in manifests.validate_all(repo_root)
    reg = images.registry_settings(repo_root)
    refs = images.image_references(repo_root)
    # Every workflow step and the app chart name the project's images on one host.
    assert {host for _, host, _, _ in refs} == {reg["pullHost"]}
    assert {image for _, _, image, _ in refs} >= {"movierec-train", "movierec-serve"}
    assert reg["push"] == "platform-registry.movierec-platform.svc.cluster.local:5001"


def test_a_stray_registry_host_is_caught(tree: Path) -> None:
    path = tree / "workflows" / "train.yaml"
    path.write_text(path.read_text().replace(
        "registry.movierec.internal/movierec-train:0.1.0",
        "registry.example.org/movierec-train:0.1.0", 1))
    problems = images.registry_problems(tree)
    assert any("registry.example.org/movierec-train is not on registry.movierec.internal" in p
               for p in problems), problems


def test_the_build_must_push_to_the_registry_the_nodes_pull_from(tree: Path) -> None:
    path = tree / "workflows" / "build-image.yaml"
    text = path.read_text()
    path.write_text(text.replace("platform-registry.movierec-platform.svc.cluster.local:5001",
                                 "other-registry.movierec-platform.svc.cluster.local:5001"))
    assert any("build-image pushes to" in p for p in images.registry_problems(tree))
    path.write_text(text.replace(",push=true", ",push=false"))
    assert any("does not push" in p for p in images.registry_problems(tree))


def test_the_containerd_mirror_must_reach_the_registry_service(tree: Path) -> None:
    path = tree / images.KUBESPRAY_VARS / "all" / "containerd.yml"
    original = path.read_text()
    path.write_text(original.replace("http://10.233.0.50:5000", "http://10.233.0.51:5000", 1))
    assert any("containerd mirror of registry.movierec.internal" in p
               for p in images.registry_problems(tree))
    path.write_text(original.replace("    server: http://10.233.0.50:5000\n", ""))
    assert any("resolves nowhere" in p for p in images.registry_problems(tree))
    path.unlink()
    assert any("no node maps" in p for p in images.registry_problems(tree))


def test_the_fixed_cluster_ip_stays_in_the_static_service_band(tree: Path) -> None:
    for address, expected in (("10.233.7.50", "outside the static band"),
                              ("10.234.0.50", "outside kube_service_addresses"),
                              ("10.233.0.3", "clashes with Kubespray")):
        values = tree / "k8s" / "platform" / "values.yaml"
        values.write_text(values.read_text().replace("clusterIP: 10.233.0.50",
                                                     f"clusterIP: {address}"))
        mirror = tree / images.KUBESPRAY_VARS / "all" / "containerd.yml"
        mirror.write_text(mirror.read_text().replace("10.233.0.50", address))
        boot = tree / "ansible" / "argocd" / "build_images.yml"
        boot.write_text(boot.read_text().replace("10.233.0.50", address))
        problems = images.registry_problems(tree)
        assert any(expected in p for p in problems), (address, problems)
        for path in (values, mirror, boot):  # back to the committed address for the next one
            path.write_text(path.read_text().replace(address, "10.233.0.50"))


def test_the_registry_pod_serves_one_store_on_two_ports(repo_root: Path) -> None:
    docs = manifests.render_chart(repo_root / "k8s" / "platform", {}, "platform",
                                  "movierec-platform")
    found = {d["kind"]: d for d in docs if d["metadata"]["name"] == "platform-registry"}
    config = found["ConfigMap"]["data"]
    pull, push = yaml.safe_load(config["pull.yml"]), yaml.safe_load(config["push.yml"])
    assert pull["storage"]["maintenance"]["readonly"]["enabled"] is True
    assert "readonly" not in push["storage"]["maintenance"]
    assert pull["storage"]["filesystem"] == push["storage"]["filesystem"]
    assert (pull["http"]["addr"], push["http"]["addr"]) == (":5000", ":5001")
    pod = found["Deployment"]["spec"]["template"]["spec"]
    mounts = {c["name"]: {m["mountPath"]: m for m in c["volumeMounts"]} for c in pod["containers"]}
    assert mounts["pull"]["/var/lib/registry"]["readOnly"] is True
    assert mounts["push"]["/var/lib/registry"]["readOnly"] is False
    assert {c["image"] for c in pod["containers"]} == {"docker.io/library/registry:2.8.3"}
    # Pushes only from the workflows' namespace; the broad platform policy leaves the pod alone.
    policy = found["NetworkPolicy"]["spec"]["ingress"]
    push_rule = next(r for r in policy if r["ports"] == [{"port": "push"}])
    assert push_rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["argo"]
    broad = next(d for d in docs if d["kind"] == "NetworkPolicy"
                 and d["metadata"]["name"] == "platform-network")
    assert {"key": "app.kubernetes.io/name", "operator": "NotIn", "values": ["registry"]} in (
        broad["spec"]["podSelector"]["matchExpressions"])


def test_a_missing_bootstrap_build_is_caught(tree: Path) -> None:
    path = tree / "ansible" / "argocd" / "build_images.yml"
    plays = yaml.safe_load(path.read_text())
    plays[0]["vars"]["images"] = [i for i in plays[0]["vars"]["images"]
                                  if i["name"] != "movierec-serve"]
    path.write_text(yaml.safe_dump(plays, sort_keys=False))
    problems = images.registry_problems(tree)
    assert "movierec-serve:0.1.0 is named but build_images.yml does not build it" in problems


def test_the_bootstrap_builds_through_the_build_template(repo_root: Path) -> None:
    play = yaml.safe_load((repo_root / "ansible/argocd/build_images.yml").read_text())[0]
    submit = next(t for t in play["tasks"] if t["name"].startswith("Submit the image builds"))
    spec = submit["kubernetes.core.k8s"]["definition"]["spec"]
    assert spec["workflowTemplateRef"]["name"] == "movierec-build-image"
    passed = {p["name"] for p in spec["arguments"]["parameters"]}
    build = next(d for _, d in __import__("movierec.infra.argo_checks", fromlist=["x"])
                 .load_argo_objects(repo_root) if d["metadata"]["name"] == "movierec-build-image")
    declared = {p["name"] for p in build["spec"]["arguments"]["parameters"]}
    assert passed <= declared and "tag" in passed  # tag has no default
    train = next(i for i in play["vars"]["images"] if i["name"] == "movierec-train")
    assert train["torch_index"].endswith("/cu128")  # movierec-train runs on the GPU nodes


def test_pull_secrets_only_for_an_external_registry(repo_root: Path) -> None:
    play = yaml.safe_load((repo_root / "ansible/argocd/workflow_secrets.yml").read_text())[0]
    registry_tasks = [t for t in play["tasks"] if "ansible.builtin.debug" not in t
                      and ("movierec-registry" in str(t) or "imagePullSecrets" in str(t))]
    assert len(registry_tasks) >= 3
    for task in registry_tasks:
        assert task["when"] == "registry_password | length > 0", task["name"]
    # The workflows do not need it for the in-cluster registry.
    for name in ("build-image.yaml", "promote.yaml"):
        doc = yaml.safe_load((repo_root / "workflows" / name).read_text())
        volumes = [*doc["spec"].get("volumes", []),
                   *(v for t in doc["spec"]["templates"] for v in t.get("volumes", []))]
        auth = next(v for v in volumes if v["name"] == "registry-auth")
        assert auth["secret"]["optional"] is True, name
