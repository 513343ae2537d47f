"""Argo WorkflowTemplates, CronWorkflow, EventSource and Sensor: models and references."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from movierec.infra import argo_checks


def _by_name(repo_root: Path) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in argo_checks.load_argo_objects(repo_root)}


def test_every_argo_object_validates(repo_root: Path) -> None:
    results = argo_checks.check_workflows(repo_root)
    kinds = {r.name.rsplit("(", 1)[1].rstrip(")") for r in results}
    assert {"WorkflowTemplate", "CronWorkflow", "EventSource", "Sensor"} <= kinds
    failed = [r for r in results if not r.passed]
    assert not failed, failed


def test_required_steps_exist(repo_root: Path) -> None:
    objs = _by_name(repo_root)
    for name in ("movierec-train", "movierec-evaluate-register", "movierec-build-image",
                 "movierec-deploy-stage", "movierec-test-staging", "movierec-promote",
                 "movierec-canary-analysis", "movierec-rollback", "movierec-lifecycle"):
        assert objs[name]["kind"] == "WorkflowTemplate", name
    train = objs["movierec-train"]["spec"]["templates"][0]
    assert train["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in train["tolerations"])
    build = objs["movierec-build-image"]["spec"]["templates"][0]["container"]
    assert build["image"].endswith("-rootless") and "v0." in build["image"]
    assert {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"} in build["env"]
    assert objs["movierec-retrain"]["spec"]["workflowSpec"]["workflowTemplateRef"][
        "name"] == "movierec-lifecycle"


def test_canary_analysis_calls_the_shared_statistics(repo_root: Path) -> None:
    text = (repo_root / "workflows" / "canary-analysis.yaml").read_text()
    for flag in ("--canary-hits", "--canary-requests", "--production-hits",
                 "--production-requests", "--alpha"):
        assert flag in text
    assert '"canary", "analyze"' in text


def test_scripts_compile_after_parameter_substitution(repo_root: Path) -> None:
    for _, doc in argo_checks.load_argo_objects(repo_root):
        for t in (doc.get("spec") or {}).get("templates", []):
            script = t.get("script")
            if script and script.get("command") == ["python"]:
                source = re.sub(r"\{\{[^}]+\}\}", "0", script["source"])
                compile(source, t["name"], "exec")


def test_checks_catch_broken_templates(repo_root: Path) -> None:
    objs = _by_name(repo_root)
    library = {(d["metadata"]["name"], t["name"]): t for d in objs.values()
               if d["kind"] == "WorkflowTemplate" for t in d["spec"]["templates"]}
    promote = copy.deepcopy(objs["movierec-promote"])
    retag = next(t for t in promote["spec"]["templates"] if t["name"] == "retag")
    retag["container"]["image"] = "quay.io/skopeo/stable:latest"
    retag["container"]["args"].append("{{inputs.parameters.undeclared}}")
    del retag["container"]["resources"]
    problems = " ".join(argo_checks._template_problems(promote, library))
    assert "is not an exact version" in problems
    assert "undeclared" in problems
    assert "requests and limits" in problems
    deploy = copy.deepcopy(objs["movierec-deploy-stage"])
    deploy["spec"]["templates"][0]["inputs"]["parameters"] = [
        p for p in deploy["spec"]["templates"][0]["inputs"]["parameters"]
        if p["name"] != "version"]
    assert "inputs.parameters.version, not declared" in " ".join(
        argo_checks._template_problems(deploy, library))


def test_lifecycle_is_one_pipeline_step_with_persistent_state(repo_root: Path) -> None:
    life = _by_name(repo_root)["movierec-lifecycle"]
    [template] = life["spec"]["templates"]
    box = template["container"]
    assert box["command"] == ["movierec"]
    assert box["args"][:3] == ["pipeline", "--backend", "chameleon"]
    for flag in ("--trigger", "--epochs", "--dataset", "--candidate", "--canary-share"):
        assert flag in box["args"]
    env = {e["name"]: e for e in box["env"]}
    assert env["MOVIEREC_HOME"]["value"] == "/var/lib/movierec"
    assert env["ARGOCD_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "argocd-workflow"
    assert life["spec"]["synchronization"]["mutexes"][0]["name"] == "movierec-lifecycle"
    # The sensor's and the cron's parameters exist on the template they submit.
    declared = {p["name"] for p in life["spec"]["arguments"]["parameters"]}
    assert {"trigger"} <= declared


def test_alias_moving_steps_share_the_state_claim(repo_root: Path) -> None:
    objs = _by_name(repo_root)
    claim = objs["movierec-state"]
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "ReadWriteOnce" in (repo_root / "workflows" / "state-pvc.yaml").read_text().split(
        "apiVersion")[0]  # the choice is explained
    steps = {("movierec-lifecycle", "lifecycle"), ("movierec-promote", "move-alias"),
             ("movierec-rollback", "registry"),
             ("movierec-evaluate-register", "evaluate-register")}
    for wf, name in steps:
        doc = objs[wf]
        t = next(t for t in doc["spec"]["templates"] if t["name"] == name)
        home = next(e["value"] for e in t["container"]["env"] if e["name"] == "MOVIEREC_HOME")
        mounts = {m["mountPath"]: m["name"] for m in t["container"]["volumeMounts"]}
        assert home == "/var/lib/movierec" and mounts[home] == "state", (wf, name)
        volume = next(v for v in doc["spec"]["volumes"] if v["name"] == "state")
        assert volume["persistentVolumeClaim"]["claimName"] == "movierec-state"
        assert t["nodeSelector"] == {"movierec.io/role": "platform"}, (wf, name)  # RWO
    broken = copy.deepcopy(objs["movierec-promote"])
    next(v for v in broken["spec"]["volumes"] if v["name"] == "state")[
        "persistentVolumeClaim"]["claimName"] = "typo"
    assert argo_checks.claim_names(broken) == ["typo"]


def test_canary_deploy_and_rollback_parameters_match_the_backend(repo_root: Path) -> None:
    from movierec.lifecycle.backends.chameleon import retire_parameters

    deploy = (repo_root / "workflows" / "deploy-stage.yaml").read_text()
    for param in ("ingress.enabled=true", "ingress.canary.enabled=true",
                  "model.version=", "autoscaling.enabled=true"):
        assert param in deploy
    rollback = (repo_root / "workflows" / "rollback.yaml").read_text()
    for key, value in retire_parameters("canary").items():
        assert f"-p {key}={value}" in rollback


def test_unknown_fields_are_reported() -> None:
    assert argo_checks.unknown_fields({"a": {"b": 1, "typo": 2}}, {"a": {"b": 1}}) == ["a.typo"]
    assert argo_checks.unknown_fields([{"x": 1}], [{}], "l") == ["l[0].x"]


def test_every_service_account_and_secret_the_workflows_use_is_created(
        repo_root: Path) -> None:
    objects = argo_checks.load_argo_objects(repo_root)
    assert argo_checks.reference_problems(objects, repo_root) == []
    # Without workflows/rbac.yaml, or reading a Secret nothing creates, a workflow would
    # only fail on the cluster, when it starts.
    no_rbac = [(p, d) for p, d in objects if p.name != "rbac.yaml"]
    problems = argo_checks.reference_problems(no_rbac, repo_root)
    assert any("ServiceAccount movierec-workflows is not declared" in p for p in problems)
    assert any("ServiceAccount movierec-sensor is not declared" in p for p in problems)
    path, train = next((p, d) for p, d in objects if d["metadata"]["name"] == "movierec-train")
    broken = copy.deepcopy(train)
    broken["spec"]["templates"][0].setdefault("container", {}).setdefault("env", []).append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "nowhere", "key": "x"}}})
    problems = argo_checks.reference_problems([(path, broken)], repo_root)
    assert "train.yaml: Secret nowhere is created by no ansible/ playbook" in problems
    assert {"argocd-workflow", "movierec-registry", "platform-credentials"} <= (
        argo_checks.playbook_secrets(repo_root))
