"""``movierec infra ...``: help, dry-runs, one-line errors, the check table and GPU plans."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml

from movierec.cli.main import main
from movierec.infra import openstack, validate
from movierec.infra.commands import CheckResult

SUBCOMMANDS = [["plan"], ["apply"], ["destroy"], ["inventory"], ["check"], ["cluster", "up"],
               ["gpu", "lease"], ["gpu", "release"], ["ray", "up"], ["stages", "register"],
               ["workflow", "submit"]]


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for name in ("OS_CLOUD", "OS_AUTH_URL", "OS_PASSWORD", "OS_CLIENT_CONFIG_FILE",
                 "OS_APPLICATION_CREDENTIAL_SECRET", "OS_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help_and_dry_run(sub: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["infra", *sub, "--help"])
    assert exit_.value.code == 0
    assert "--dry-run" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "expected"), [
    (["plan"], ["terraform init -input=false", "terraform plan -input=false"]),
    (["destroy", "--auto-approve"], ["terraform destroy -input=false", "-auto-approve"]),
    (["cluster", "up"], ["pre_k8s.yml", "git clone --depth 1 --branch v2.", "cluster.yml",
                         "post_k8s.yml"]),
    (["ray", "up"], ["ray_gpu.yml", "gpu-inventory.yml"]),
    (["gpu", "release", "--name", "mr-gpu", "--count", "2"],
     ["mr-gpu-1", "mr-gpu-2", "lease mr-gpu-lease"]),
    (["stages", "register"], ["platform.yaml", "production"]),
    (["workflow", "submit", "movierec-train", "-p", "epochs=3"], ["movierec-train", "epochs=3"]),
])
def test_dry_runs_print_the_commands_and_need_no_cloud(
        argv: list[str], expected: list[str], no_credentials: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infra", *argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[dry-run]" in out
    for text in expected:
        assert text in out, (text, out)


def test_real_apply_without_credentials_is_a_one_line_error(
        no_credentials: None, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("movierec.infra.terraform.require_tool", lambda n, h: n)
    assert main(["infra", "apply"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("movierec: error: no OpenStack credentials") and "\n" not in err
    assert "clouds.yaml" in err


def test_credentials_are_named_never_printed(tmp_path: Path, no_credentials: None,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s" + "3cr3t-value-from-the-cloud"
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"chi_tacc": {"auth": {
        "application_credential_secret": secret}}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    assert openstack.require_credentials("chi_tacc") == [str(clouds)]  # named once
    with pytest.raises(openstack.ToolMissingError) as missing:
        openstack.require_credentials("openstack")
    assert secret not in str(missing.value) and "'openstack'" in str(missing.value)


def test_gpu_lease_plan() -> None:
    config = openstack.GpuLeaseConfig(node_type="gpu_mi100", node_count=2, lease_hours=6,
                                      name="proj-gpu")
    now = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)
    lease = openstack.lease_request(config, now)
    assert lease["end_date"] == "2026-01-02 09:04"
    [reservation] = lease["reservations"]
    assert reservation["min"] == reservation["max"] == 2
    assert json.loads(reservation["resource_properties"]) == ["==", "$node_type", "gpu_mi100"]
    servers = openstack.server_requests(config, "res-1")
    assert [s["name"] for s in servers] == ["proj-gpu-1", "proj-gpu-2"]
    assert all(s["image"] == "CC-Ubuntu24.04-CUDA" and
               s["scheduler_hints"] == {"reservation": "res-1"} for s in servers)
    with pytest.raises(ValueError, match="lease_hours"):
        openstack.GpuLeaseConfig(lease_hours=500)
    with pytest.raises(ValueError, match="extra"):
        openstack.GpuLeaseConfig(gpus=4)  # typo-proof: unknown fields are refused


def test_gpu_lease_dry_run_prints_the_plan(capsys: pytest.CaptureFixture[str],
                                           no_credentials: None) -> None:
    assert main(["infra", "gpu", "lease", "--dry-run", "--node-type", "gpu_a100_pcie",
                 "--hours", "3"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out.split("GPU lease plan:\n", 1)[1])
    assert plan["lease"]["reservations"][0]["resource_type"] == "physical:host"
    assert plan["servers"][0]["flavor"] == "baremetal"


def test_inventory_command_writes_both_files(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tests.infra.test_ansible import OUTPUTS

    saved = tmp_path / "outputs.json"
    saved.write_text(json.dumps(OUTPUTS))
    assert main(["infra", "inventory", "--outputs", str(saved), "--out",
                 str(tmp_path / "inv")]) == 0
    assert (tmp_path / "inv" / "inventory.yml").is_file()
    assert (tmp_path / "inv" / "kubespray-hosts.yaml").is_file()
    assert "3 nodes" in capsys.readouterr().out
    assert main(["infra", "inventory", "--outputs", str(tmp_path / "nope.json")]) == 2


def test_bad_workflow_parameter_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["infra", "workflow", "submit", "train", "-p", "epochs", "--dry-run"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    # A template or parameter the cluster would not know fails here, dry run or not.
    assert main(["infra", "workflow", "submit", "train", "--dry-run"]) == 2
    assert "did you mean 'movierec-train'?" in capsys.readouterr().err
    assert main(["infra", "workflow", "submit", "movierec-train", "-p", "epoch=3",
                 "--dry-run"]) == 2
    assert "has no parameter epoch (it takes data-root, dataset, epochs" in (
        capsys.readouterr().err)


def test_check_prints_a_table_and_fails_on_any_failure(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    results = [CheckResult("terraform fmt kvm", True, "formatted"),
               CheckResult("checkov k8s/", False, "CKV_K8S_1 Deployment.x")]
    monkeypatch.setattr(validate, "run_all", lambda: results)
    assert main(["infra", "check"]) == 3  # a "no": some check failed
    out = capsys.readouterr().out
    assert "PASS  terraform fmt kvm" in out and "FAIL  checkov k8s/" in out
    assert "1 passed, 1 failed" in out
    monkeypatch.setattr(validate, "run_all", lambda: results[:1])
    assert main(["infra", "check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["passed"] is True


def test_run_all_reports_a_crashing_check_and_carries_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_tf_dir: Path) -> list[CheckResult]:
        raise RuntimeError("hcl exploded")

    monkeypatch.setattr(validate, "inspect_terraform", boom)
    monkeypatch.setattr(validate, "check_ansible_lint",
                        lambda folder=None: CheckResult("ansible-lint production", True))
    monkeypatch.setattr(validate, "check_checkov",
                        lambda folder, checkov=None: CheckResult(f"checkov {folder.name}/", True))
    monkeypatch.setattr(validate, "_manifest_checks", lambda root=None: [])
    monkeypatch.setattr(validate, "check_ansible_syntax",
                        lambda playbook: CheckResult(f"ansible syntax {playbook.name}", True))
    results = {r.name: r for r in validate.run_all()}
    assert not results["terraform resources"].passed
    assert "hcl exploded" in results["terraform resources"].detail
    assert results["terraform fmt kvm"].passed  # the others still ran
    assert "repository scan (secrets, public IPs, :latest)" in results
