"""Argo WorkflowTemplates, CronWorkflow, EventSource and Sensor: models and references."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

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
    [train] = objs["movierec-train"]["spec"]["templates"]
    assert "--ray-address" in train["container"]["args"][0]
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


def _shell_scripts(repo_root: Path) -> list[tuple[str, str]]:
    """``(workflow/template, script)`` of every ``/bin/sh -ec`` container."""
    return [(f"{d['metadata']['name']}/{t['name']}", t["container"]["args"][0])
            for _, d in argo_checks.load_argo_objects(repo_root)
            for t in (d.get("spec") or {}).get("templates", [])
            if (t.get("container") or {}).get("command") == ["/bin/sh", "-ec"]]


def test_training_runs_on_the_ray_cluster_not_on_a_kubernetes_gpu(repo_root: Path) -> None:
    """The cluster has no GPU device plugin: nothing may request nvidia.com/gpu."""
    assert "nvidia.com/gpu" not in "".join(
        f.read_text() for f in (repo_root / "workflows").rglob("*.yaml"))
    train = _by_name(repo_root)["movierec-train"]
    declared = {p["name"]: p.get("value") for p in train["spec"]["arguments"]["parameters"]}
    assert "ray-address" in declared and declared["ray-address"] is None  # must be given
    [driver] = train["spec"]["templates"]
    assert 0 < driver["activeDeadlineSeconds"] <= 24 * 3600
    assert driver["nodeSelector"] == {"movierec.io/role": "platform"}  # the floating IP
    assert "tolerations" not in driver
    script = driver["container"]["args"][0]
    assert re.search(r"^fwd movierec train .*--gpu", script, flags=re.M | re.S)
    for flag in ('--workers "{{inputs.parameters.workers}}"',
                 '--ray-address "{{inputs.parameters.ray-address}}"'):
        assert flag in script
    outputs = {p["name"]: p["valueFrom"]["path"] for p in driver["outputs"]["parameters"]}
    assert outputs == {"run-id": "/work/run_id", "data-uri": "/work/data_uri"}
    work = next(v for v in train["spec"]["volumes"] if v["name"] == "work")
    assert "emptyDir" in work


def test_movierec_in_a_script_gets_the_signals(repo_root: Path) -> None:
    """Argo signals the shell: movierec must be the shell (exec) or run under fwd."""
    scripts = _shell_scripts(repo_root)
    assert len(scripts) >= 6
    for where, script in scripts:
        for line in script.splitlines():
            words = line.split()
            if "movierec" in words[:3] and words[0] not in ("#",):
                assert words[0] in ("exec", "fwd"), (where, line)
        if "fwd " in script:
            assert 'trap \'kill -TERM "$child"' in script, where


def test_argocd_calls_trust_the_in_cluster_server_and_outlast_the_automated_sync(
        repo_root: Path) -> None:
    """argocd-server's certificate is self-signed; `app sync` races the automated sync."""
    play = yaml.safe_load((repo_root / "ansible" / "argocd" / "workflow_secrets.yml").read_text())
    assert "--insecure" in play[0]["vars"]["argocd_cli_opts"].split()
    for _, doc in argo_checks.load_argo_objects(repo_root):
        for t in (doc.get("spec") or {}).get("templates", []):
            env = {e["name"]: e for e in (t.get("container") or {}).get("env", [])}
            if "ARGOCD_AUTH_TOKEN" in env:
                assert env["ARGOCD_OPTS"]["valueFrom"]["secretKeyRef"] == {
                    "name": "argocd-workflow", "key": "opts"}, t["name"]
    for where, script in _shell_scripts(repo_root):
        syncs = [line.strip() for line in script.splitlines() if "argocd app sync" in line]
        for line in syncs:  # only inside the retrying function
            assert line.startswith('if argocd app sync "$1"'), (where, line)
        if syncs:
            assert "another operation is already in progress" in script, where
            assert 'argocd app wait "$1" --operation' in script, where


def test_the_drift_sensor_may_find_the_workflow_it_submitted(repo_root: Path) -> None:
    """Argo Events lists Workflows after `argo submit`; a failure re-submits (retryStrategy)."""
    role = next(d for _, d in argo_checks.load_argo_objects(repo_root)
                if d["kind"] == "Role" and d["metadata"]["name"] == "movierec-sensor-submit")
    assert role["metadata"]["namespace"] == "argo"
    verbs = {v for r in role["rules"] if r["resources"] == ["workflows"] for v in r["verbs"]}
    assert verbs == {"create", "get", "list", "watch"}


def test_builds_record_the_commit_they_build(repo_root: Path) -> None:
    build = _by_name(repo_root)["movierec-build-image"]["spec"]["templates"][0]
    script = build["container"]["args"][0]
    assert '--opt=build-arg:GIT_COMMIT="$commit"' in script
    last = script.rstrip().splitlines()[-1]
    assert last.endswith("registry.insecure={{inputs.parameters.insecure}}")
    assert "exec buildctl-daemonless.sh build" in script
    docker = (repo_root / "docker" / "Dockerfile.train").read_text()
    assert "ARG GIT_COMMIT" in docker and "MOVIEREC_GIT_COMMIT=$GIT_COMMIT" in docker
    play = yaml.safe_load((repo_root / "ansible" / "argocd" / "build_images.yml").read_text())[0]
    submit = next(t for t in play["tasks"] if t["name"].startswith("Submit the image builds"))
    params = {p["name"]: p["value"] for p in submit["kubernetes.core.k8s"]["definition"]["spec"][
        "arguments"]["parameters"]}
    assert params["git-commit"] == "{{ movierec_commit }}"


def test_no_workflow_leaves_a_volume_per_run(repo_root: Path) -> None:
    for _, doc in argo_checks.load_argo_objects(repo_root):
        assert "volumeClaimTemplates" not in (doc.get("spec") or {}), doc["metadata"]["name"]


def test_scripts_are_valid_shell(repo_root: Path) -> None:
    import subprocess

    for where, script in _shell_scripts(repo_root):
        source = re.sub(r"\{\{[^}]+\}\}", "x", script)
        done = subprocess.run(["sh", "-n"], input=source, text=True, capture_output=True,
                              check=False)
        assert done.returncode == 0, (where, done.stderr)
