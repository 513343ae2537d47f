"""Helm charts: lint, render and validate offline; the stage differences that matter."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest

from movierec.infra import manifests


@pytest.fixture(scope="module")
def rendered(repo_root: Path) -> dict[str, list[dict]]:
    out = {"platform": manifests.render_chart(repo_root / "k8s" / "platform", {}, "platform",
                                              "movierec-platform")}
    for stage in manifests.STAGES:
        out[stage] = manifests.render_chart(repo_root / "k8s" / "app",
                                            manifests.stage_values(stage, repo_root),
                                            f"movierec-{stage}", f"movierec-{stage}")
    return out


def test_every_chart_check_passes(repo_root: Path) -> None:
    failed = [r for r in manifests.check_charts(repo_root) if not r.passed]
    assert not failed, failed


def test_canary_splits_production_traffic(rendered: dict[str, list[dict]]) -> None:
    assert manifests.canary_weight(rendered["canary"]) == 10
    assert manifests.canary_weight(rendered["production"]) is None
    ingresses = {stage: next(d for d in rendered[stage] if d["kind"] == "Ingress")
                 for stage in ("canary", "production")}
    hosts = {stage: i["spec"]["rules"][0]["host"] for stage, i in ingresses.items()}
    assert hosts["canary"] == hosts["production"]  # same host: ingress-nginx splits it
    for ingress in ingresses.values():  # a browser's requests and feedback reach one stage
        annotations = ingress["metadata"]["annotations"]
        assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
        assert annotations["nginx.ingress.kubernetes.io/affinity-canary-behavior"] == "sticky"


def test_each_stage_serves_its_alias(rendered: dict[str, list[dict]]) -> None:
    for stage in manifests.STAGES:
        deploy = next(d for d in rendered[stage] if d["kind"] == "Deployment")
        container = deploy["spec"]["template"]["spec"]["containers"][0]
        assert f"models:/movierec@{stage}" in container["args"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert deploy["spec"]["template"]["metadata"]["annotations"][
            "prometheus.io/scrape"] == "true"


def test_platform_keeps_secrets_out_of_manifests(rendered: dict[str, list[dict]]) -> None:
    docs = rendered["platform"]
    mlflow = next(d for d in docs if d["kind"] == "Deployment"
                  and d["metadata"]["name"] == "platform-mlflow")
    args = " ".join(mlflow["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "$(POSTGRES_PASSWORD)" in args and "--workers=1" in args
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":v3.17.2")
    for path in (Path(__file__).parents[2] / "k8s").rglob("values*.yaml"):
        assert "password" not in path.read_text().lower(), path
    pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert len(pvcs) == 5  # postgres, minio, prometheus, grafana, registry
    prom = next(d for d in docs if d["kind"] == "ConfigMap"
                and d["metadata"]["name"] == "platform-prometheus")
    assert "MovierecDriftItemPopularity" in prom["data"]["alerts.yaml"]


def test_checks_catch_broken_workloads(rendered: dict[str, list[dict]]) -> None:
    docs = copy.deepcopy(rendered["production"])
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "registry.example.org/movierec-serve:latest"
    del container["resources"]["limits"]
    del container["readinessProbe"]
    del container["securityContext"]["runAsNonRoot"]
    deploy["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
    problems = " ".join(manifests.workload_problems(docs))
    for expected in ("is not an exact version", "requests and limits", "readinessProbe",
                     "runAsNonRoot"):
        assert expected in problems
    deploy["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert not manifests.validate_k8s(docs, "broken").passed


def test_chart_refuses_latest_and_bad_canary_weight(repo_root: Path) -> None:
    import helm_python as helm

    for path, value, match in ((("image", "tag"), "latest", "latest is not allowed"),
                               (("ingress", "canary", "weight"), 0, "use 1-100")):
        values = manifests.stage_values("canary", repo_root)
        node = values
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        with pytest.raises(helm.HelmError, match=match):
            manifests.render_chart(repo_root / "k8s" / "app", values, "x", "x")


def test_monitoring_uses_only_exported_metrics(repo_root: Path) -> None:
    [result] = manifests.check_monitoring(repo_root)
    assert result.passed, result.detail
    assert manifests.metrics_used('rate(movierec_request_duration_seconds_bucket[5m])') == {
        "movierec_request_duration_seconds"}
    assert manifests.metrics_used("movierec_made_up_total") - manifests.KNOWN_METRICS


def test_checkov_passes_on_the_rendered_charts(repo_root: Path, checkov_bin: Path,
                                               tmp_path: Path) -> None:
    written = manifests.write_rendered(tmp_path, repo_root)
    assert len(written) == 4
    done = subprocess.run([str(checkov_bin), "-d", str(tmp_path), "--framework", "kubernetes",
                           "--config-file", str(repo_root / "k8s" / ".checkov.yaml"),
                           "--skip-download", "-o", "json"], capture_output=True, text=True,
                          check=False, cwd=repo_root)
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed, failed
    assert report["summary"]["passed"] > 500  # it really scanned the objects
    skipped = report["results"]["skipped_checks"]
    assert {c["check_id"] for c in skipped} <= {"CKV_K8S_35", "CKV_K8S_38"}
    for check in skipped:  # every per-object skip says why
        assert len(check["check_result"]["suppress_comment"]) > 20, check["resource"]
    config = (repo_root / "k8s" / ".checkov.yaml").read_text()
    for check_id in re.findall(r"^\s*- (CKV\S+)", config, flags=re.M):
        assert re.search(rf"# {check_id} \(", config), f"{check_id} has no reason"


def test_every_object_names_its_namespace(rendered: dict[str, list[dict]]) -> None:
    for release, docs in rendered.items():
        expected = "movierec-platform" if release == "platform" else f"movierec-{release}"
        for doc in docs:
            if not doc["kind"].startswith("Cluster"):
                assert doc["metadata"]["namespace"] == expected, (release, doc["kind"])


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels, In/NotIn expressions) against pod labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        inside = labels.get(expr["key"]) in expr["values"]
        if inside != (expr["operator"] == "In"):
            return False
    return True


def test_network_policies_select_the_pods(rendered: dict[str, list[dict]]) -> None:
    for release, docs in rendered.items():
        policies = [d["spec"]["podSelector"] for d in docs if d["kind"] == "NetworkPolicy"]
        pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs
                if d["kind"] in ("Deployment", "Job")]
        assert pods and policies, release
        # Every pod is selected by exactly one policy (the registry has its own).
        for labels in pods:
            assert sum(_selects(s, labels) for s in policies) == 1, (release, labels)
    # The app's policy admits ingress-nginx, Prometheus and the workflows (staging tests).
    policy = next(d for d in rendered["canary"] if d["kind"] == "NetworkPolicy")
    allowed = policy["spec"]["ingress"][0]["from"][1]["namespaceSelector"][
        "matchExpressions"][0]["values"]
    assert {"ingress-nginx", "movierec-platform", "argo"} <= set(allowed)


def _deploy_values(repo_root: Path, stage: str, params: dict[str, str]) -> dict:
    """The stage's values with ArgoCD's Helm parameters (``-p a.b=c``) applied on top."""
    values = manifests.stage_values(stage, repo_root)
    for key, raw in params.items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {"true": True, "false": False}.get(raw, int(raw) if raw.isdigit() else raw)
    return values


def test_retire_then_redeploy_brings_the_canary_back(repo_root: Path) -> None:
    from movierec.lifecycle.backends.chameleon import (
        ChameleonConfig,
        deploy_parameters,
        retire_parameters,
    )

    app = repo_root / "k8s" / "app"
    retired = manifests.render_chart(app, _deploy_values(repo_root, "canary",
                                                         retire_parameters("canary")),
                                     "movierec-canary", "movierec-canary")
    kinds = {d["kind"] for d in retired}
    assert "Ingress" not in kinds and "HorizontalPodAutoscaler" not in kinds
    assert next(d for d in retired if d["kind"] == "Deployment")["spec"]["replicas"] == 0
    # Parameters are cumulative on the Application: the deploy overrides every retire one.
    params = {**retire_parameters("canary"),
              **deploy_parameters("canary", "7", ChameleonConfig(canary_weight=20))}
    back = manifests.render_chart(app, _deploy_values(repo_root, "canary", params),
                                  "movierec-canary", "movierec-canary")
    assert manifests.canary_weight(back) == 20
    deploy = next(d for d in back if d["kind"] == "Deployment")
    assert "replicas" not in deploy["spec"]  # the HPA owns it again
    assert deploy["spec"]["template"]["metadata"]["annotations"][
        "movierec.io/model-version"] == "7"
    assert manifests.validate_k8s(back, "redeployed canary").passed
    assert manifests.validate_k8s(retired, "retired canary").passed


def test_a_registered_stage_runs_nothing_until_its_first_deploy(repo_root: Path) -> None:
    # Before a deploy the alias may not exist: pods would crash-loop, a canary Ingress would
    # send its share of users to no pod, and `argocd app wait --health` would time out.
    for stage in manifests.STAGES:
        docs = manifests.render_chart(repo_root / "k8s" / "app",
                                      manifests.stage_values(stage, repo_root, deployed=False),
                                      f"movierec-{stage}", f"movierec-{stage}")
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        assert deployment["spec"]["replicas"] == 0
        assert not {"Ingress", "HorizontalPodAutoscaler"} & {d["kind"] for d in docs}
    checks = {r.name: r for r in manifests.check_charts(repo_root)}
    assert checks["undeployed app (canary)"].passed


def test_host_network_ingress_reaches_the_stages(rendered: dict[str, list[dict]],
                                                  repo_root: Path) -> None:
    """ingress-nginx runs on the host network: its traffic matches no namespaceSelector."""
    from movierec.infra import cluster_assumptions

    assert cluster_assumptions.network_problems(repo_root) == []
    for stage in manifests.STAGES:
        policy = next(d for d in rendered[stage] if d["kind"] == "NetworkPolicy")
        blocks = [rule for rule in policy["spec"]["ingress"]
                  if any("ipBlock" in source for source in rule["from"])]
        assert len(blocks) == 1, stage
        assert {s["ipBlock"]["cidr"] for s in blocks[0]["from"]} == {"192.168.1.0/24",
                                                                     "10.233.64.0/18"}
        assert blocks[0]["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_storage_check_catches_overcommit_and_claims_per_run(repo_root: Path,
                                                             tmp_path: Path) -> None:
    import shutil

    import yaml

    from movierec.infra import cluster_assumptions

    problems, summary = cluster_assumptions.storage_problems(repo_root)
    assert problems == [] and summary == "132 GiB of claims on a 150 GiB volume"
    for folder in ("k8s/platform", "workflows", "tf/kvm"):
        shutil.copytree(repo_root / folder, tmp_path / folder)
    variables = tmp_path / "tf" / "kvm" / "variables.tf"
    variables.write_text(variables.read_text().replace("default     = 150", "default     = 50"))
    train = tmp_path / "workflows" / "train.yaml"
    doc = yaml.safe_load(train.read_text())
    doc["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "work"}}]
    train.write_text(yaml.safe_dump(doc))
    problems, _ = cluster_assumptions.storage_problems(tmp_path)
    assert "exceed the platform volume's 50 GiB" in problems[0]
    assert problems[1].startswith("train.yaml: volumeClaimTemplates")
    with pytest.raises(ValueError, match="<n>Gi"):
        cluster_assumptions.gib("20G")
