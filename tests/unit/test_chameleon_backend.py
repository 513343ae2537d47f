"""The chameleon backend: the exact argocd commands, dry runs, polling and the CLI's checks."""

from __future__ import annotations

import argparse
import subprocess
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from movierec.infra.commands import Command, ToolMissingError
from movierec.lifecycle.backends import chameleon
from movierec.lifecycle.backends.chameleon import ChameleonBackend, ChameleonConfig


class FakeRunner:
    """Stands in for movierec.infra.commands.run: records what would have run."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.argvs: list[tuple[str, ...]] = []
        self.dry_runs: list[bool] = []
        self.fail_on = fail_on

    def __call__(self, command: Command, *, dry_run: bool, **_: Any) -> None:
        self.argvs.append(command.argv)
        self.dry_runs.append(dry_run)
        if self.fail_on and self.fail_on in command.argv:
            raise subprocess.CalledProcessError(1, list(command.argv))


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    fake = FakeRunner()
    monkeypatch.setattr(chameleon, "run", fake)
    # argocd "installed": require_tool returns the bare name so the argv is predictable.
    monkeypatch.setattr(chameleon, "require_tool", lambda name, how: name)
    return fake


def test_canary_deploy_sets_parameters_syncs_waits_and_polls(
        runner: FakeRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ChameleonBackend(ChameleonConfig(canary_weight=25, timeout_s=30,
                                               poll_interval_s=0.01))
    answers = iter([None, "6", "7"])  # not up, the old version, then the new one
    monkeypatch.setattr(backend, "serving_version", lambda stage: next(answers))
    result = backend.deploy("canary", "7")
    assert runner.argvs == [
        ("argocd", "app", "set", "movierec-canary", "-p", "model.version=7",
         "-p", "autoscaling.enabled=true", "-p", "ingress.enabled=true",
         "-p", "ingress.canary.enabled=true", "-p", "ingress.canary.weight=25"),
        ("argocd", "app", "sync", "movierec-canary", "--timeout", "30"),
        ("argocd", "app", "wait", "movierec-canary", "--health", "--sync", "--timeout", "30")]
    assert runner.dry_runs == [False] * 3
    assert result["version"] == "7" and result["how"] == "argocd"
    assert next(answers, "drained") == "drained"  # it polled until /version said 7


def test_staging_deploy_has_no_canary_parameters_and_can_set_the_image(
        runner: FakeRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ChameleonBackend(ChameleonConfig(image_tag="v7", poll_interval_s=0.01))
    monkeypatch.setattr(backend, "serving_version", lambda stage: "7")
    backend.deploy("staging", "7")
    setter = runner.argvs[0]
    assert setter[:4] == ("argocd", "app", "set", "movierec-staging")
    assert "image.tag=v7" in setter
    assert not any("canary" in arg for arg in setter)


def test_retire_turns_traffic_off_and_scales_to_zero(runner: FakeRunner) -> None:
    ChameleonBackend().retire("canary")
    assert runner.argvs[0] == ("argocd", "app", "set", "movierec-canary",
                               "-p", "ingress.enabled=false", "-p", "autoscaling.enabled=false",
                               "-p", "replicas=0")
    assert [a[2] for a in runner.argvs] == ["set", "sync", "wait"]


def test_redeploy_after_rollback_turns_the_canary_ingress_back_on(runner: FakeRunner,
                                                                   monkeypatch) -> None:
    backend = ChameleonBackend(ChameleonConfig(poll_interval_s=0.01))
    monkeypatch.setattr(backend, "serving_version", lambda stage: "8")
    backend.retire("canary")
    backend.deploy("canary", "8")
    redeploy = runner.argvs[3]
    assert "ingress.enabled=true" in redeploy and "ingress.canary.enabled=true" in redeploy
    assert "replicas=0" not in redeploy and "autoscaling.enabled=true" in redeploy


def test_dry_run_prints_the_commands_and_calls_nothing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run started a process")

    def no_http(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run made an HTTP request")

    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(httpx, "get", no_http)  # wherever the backend asks from
    monkeypatch.setenv("PATH", "/nonexistent")  # argocd not needed for a dry run
    result = ChameleonBackend(dry_run=True).deploy("production", "3")
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "[dry-run] argocd app set movierec-production -p model.version=3 "
        "-p autoscaling.enabled=true -p ingress.enabled=true",
        "[dry-run] argocd app sync movierec-production --timeout 600",
        "[dry-run]   while 'another operation is already in progress': argocd app wait "
        "movierec-production --operation --timeout 600, then the sync again (at most 5 tries)",
        "[dry-run] argocd app wait movierec-production --health --sync --timeout 600"]
    assert result["dry_run"] is True and len(result["commands"]) == 3


def test_missing_argocd_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissingError, match="ArgoCD CLI"):
        ChameleonBackend().deploy("staging", "1")


def test_a_failed_sync_stops_the_deploy(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRunner(fail_on="sync")
    monkeypatch.setattr(chameleon, "run", fake)
    monkeypatch.setattr(chameleon, "require_tool", lambda name, how: name)
    with pytest.raises(subprocess.CalledProcessError):
        ChameleonBackend().deploy("staging", "2")
    assert [a[2] for a in fake.argvs] == ["set", "sync"]  # never waited or polled


class BusyRunner(FakeRunner):
    """An automated sync holds the app for the first ``busy`` sync requests."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy

    def __call__(self, command: Command, *, dry_run: bool, **kwargs: Any) -> Any:
        super().__call__(command, dry_run=dry_run, **kwargs)
        if command.argv[2] == "sync" and self.busy:
            self.busy -= 1
            raise subprocess.CalledProcessError(
                20, list(command.argv), stderr="FATA[0000] rpc error: code = FailedPrecondition "
                "desc = another operation is already in progress\n")
        return subprocess.CompletedProcess(list(command.argv), 0, stdout="synced\n", stderr="")


def test_a_sync_held_by_the_automated_sync_waits_for_it_and_retries(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    fake = BusyRunner(busy=2)
    monkeypatch.setattr(chameleon, "run", fake)
    monkeypatch.setattr(chameleon, "require_tool", lambda name, how: name)
    ChameleonBackend(ChameleonConfig(timeout_s=30)).retire("staging")
    assert fake.argvs[1:] == [
        ("argocd", "app", "sync", "movierec-staging", "--timeout", "30"),
        ("argocd", "app", "wait", "movierec-staging", "--operation", "--timeout", "30"),
        ("argocd", "app", "sync", "movierec-staging", "--timeout", "30"),
        ("argocd", "app", "wait", "movierec-staging", "--operation", "--timeout", "30"),
        ("argocd", "app", "sync", "movierec-staging", "--timeout", "30"),
        ("argocd", "app", "wait", "movierec-staging", "--health", "--sync", "--timeout", "30")]
    assert "another operation is already in progress" in capsys.readouterr().err


def test_a_sync_held_too_long_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = BusyRunner(busy=chameleon.SYNC_ATTEMPTS)
    monkeypatch.setattr(chameleon, "run", fake)
    monkeypatch.setattr(chameleon, "require_tool", lambda name, how: name)
    with pytest.raises(subprocess.CalledProcessError):
        ChameleonBackend().retire("canary")
    assert [a[2] for a in fake.argvs].count("sync") == chameleon.SYNC_ATTEMPTS
    assert "--health" not in [arg for argv in fake.argvs for arg in argv]  # never waited


def test_deploy_times_out_when_the_version_never_shows(runner: FakeRunner,
                                                       monkeypatch) -> None:
    backend = ChameleonBackend(ChameleonConfig(timeout_s=1, poll_interval_s=0.05))
    monkeypatch.setattr(backend, "serving_version", lambda stage: "4")
    with pytest.raises(TimeoutError, match="reports version 4, not 5"):
        backend.deploy("staging", "5")


def test_urls_tracking_uri_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = ChameleonBackend(ChameleonConfig(stage_urls={
        "staging": "https://staging.movierec.example.org/", "canary": "http://c",
        "production": "https://movierec.example.org"}))
    assert backend.stage_url("staging") == "https://staging.movierec.example.org"
    assert ChameleonBackend().stage_url("canary") == (
        "http://movierec-canary.movierec-canary.svc.cluster.local")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ChameleonBackend().tracking_uri() == chameleon.PLATFORM_MLFLOW
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.test:5000")
    assert ChameleonBackend().tracking_uri() == "http://mlflow.test:5000"
    assert ChameleonBackend(ChameleonConfig(tracking_uri="http://x:1")).tracking_uri() == (
        "http://x:1")
    assert backend.serving_version("canary") is None  # http://c does not resolve
    with pytest.raises(ValidationError):
        ChameleonConfig(canary_weight=0)
    with pytest.raises(ValidationError):
        ChameleonConfig(canary_wieght=5)  # typos fail
    with pytest.raises(ValueError, match="registry version"):
        chameleon.deploy_parameters("staging", "latest", ChameleonConfig())


def _pipeline_args(**overrides: object) -> argparse.Namespace:
    from movierec.cli.main import build_parser

    args = build_parser().parse_args(["pipeline", "--backend", "chameleon"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_cli_chameleon_requires_tracking_uri_and_argocd(monkeypatch: pytest.MonkeyPatch) -> None:
    from movierec.cli.lifecycle import run_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ToolMissingError, match="MLFLOW_TRACKING_URI"):
        run_pipeline(_pipeline_args())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.test:5000")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ToolMissingError, match="argocd"):
        run_pipeline(_pipeline_args())


def test_cli_chameleon_runs_the_pipeline_on_the_backend(monkeypatch: pytest.MonkeyPatch,
                                                        capsys) -> None:
    from movierec.cli import lifecycle as cli
    from movierec.lifecycle import pipeline

    seen: dict[str, Any] = {}

    class FakePipeline:
        def __init__(self, config: Any, train: Any, backend: Any) -> None:
            seen.update(config=config, train=train, backend=backend)

        def run(self, trigger: str, candidate: str, workers: int) -> dict[str, Any]:
            seen.update(trigger=trigger, candidate=candidate, workers=workers)
            return {"started_at": "20260101T000000000000Z", "decision": "promoted",
                    "backend": "chameleon", "candidate_version": "2",
                    "production_version": "1", "reason": "test", "steps": {}}

    monkeypatch.setattr(pipeline, "Pipeline", FakePipeline)
    monkeypatch.setattr(chameleon, "require_tool", lambda name, how: name)
    monkeypatch.setattr("movierec.infra.commands.require_tool", lambda name, how: name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.test:5000")
    args = _pipeline_args(trigger="drift", epochs=3, canary_share=0.2)
    assert cli.run_pipeline(args) == 0
    assert seen["backend"].name == "chameleon"
    assert seen["backend"].tracking_uri() == "http://mlflow.test:5000"
    assert (seen["trigger"], seen["train"].epochs, seen["config"].canary.share) == (
        "drift", 3, 0.2)
    assert "decision" in capsys.readouterr().out.lower()
