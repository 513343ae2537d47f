"""Security: constant-time token check, the token never logged, input limits, notebook
outputs free of secrets, and the dependency audit (reported, never failing offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from movierec.reliability import security
from tests.unit.test_serving_bundle import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("sec") / "bundle")


def test_admin_token_is_compared_in_constant_time(tmp_path: Path) -> None:
    report = security.token_compare_is_constant_time()
    assert report["ok"] and report["compare_digest_lines"]
    leaky = tmp_path / "admin.py"
    leaky.write_text("def check(given, token):\n    return given == token.get_secret_value()\n")
    bad = security.token_compare_is_constant_time(leaky)
    assert not bad["ok"] and bad["plain_comparisons"]


def test_admin_token_never_appears_in_logs_or_responses(bundle: Path, tmp_path: Path) -> None:
    report = security.token_never_logged(bundle, tmp_path / "home")
    assert report["token_seen_in"] == []
    assert report["log_lines"] > 0
    assert [e["status"] for e in report["exchanges"]] == [e["expected"]
                                                          for e in report["exchanges"]]
    assert report["ok"]


def test_oversized_inputs_get_4xx_with_a_message(bundle: Path, tmp_path: Path) -> None:
    report = security.input_limits(bundle, tmp_path / "home")
    cases = report["cases"]
    assert cases["body_over_64KiB"]["status"] == 413
    assert cases["feedback_body_over_256KiB"]["status"] == 413
    assert cases["body_over_64KiB_chunked"]["status"] == 413
    assert cases["sequence_too_long"]["status"] == 422
    assert "at most 1000" in cases["sequence_too_long"]["message"]
    assert {cases[k]["status"] for k in ("top_k_zero", "top_k_over_100")} == {422}
    assert report["alive_after"] and report["ok"], cases


def test_notebook_outputs_are_scanned(tmp_path: Path) -> None:
    committed = security.scan_committed_notebooks()
    assert committed["notebooks"] and committed["ok"], committed["problems"]
    key = "AKIA" + "ABCDEFGHIJKLMNOP"
    known = "tk-" + "Zq8vR2mK9pLxQ7"
    notebook = {"cells": [
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "stream", "name": "stdout", "text": ["ok\n", f"key {key}\n"]}]},
        {"cell_type": "code", "source": "", "outputs": [
            {"output_type": "execute_result", "data": {"text/plain": [f"'{known}'"]}}]}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "leaky.ipynb"
    path.write_text(json.dumps(notebook))
    problems = security.scan_notebook_outputs(path, [known])
    assert any("AWS access key" in p for p in problems), problems
    assert any("known secret" in p for p in problems), problems


def test_dependency_audit_fails_on_a_finding_and_says_why_when_offline() -> None:
    report = security.audit_dependencies(timeout=120)
    assert report["status"] in {"clean", "vulnerable", "unavailable", "error"}
    # A vulnerable pin or a failed audit turns this red; offline (no advisory database)
    # there is nothing to judge, and the report says why.
    assert report["ok"] is not False, report
    if report["status"] == "unavailable":
        assert report["ok"] is None and report["reason"]
    else:
        assert report["audited"] > 0


@pytest.mark.parametrize(("stdout", "status", "ok"), [
    ({"dependencies": [{"name": "a", "version": "1", "vulns": []}]}, "clean", True),
    ({"dependencies": [{"name": "a", "version": "1", "vulns": [
        {"id": "PYSEC-1", "fix_versions": ["2"], "aliases": ["CVE-1"]}]}]}, "vulnerable", False),
    ({"dependencies": [{"name": "a", "skip_reason": "no network"}]}, "unavailable", None),
    ("Traceback (most recent call last): bad requirement", "error", False),
])
def test_dependency_audit_reads_each_pip_audit_outcome(
        monkeypatch: pytest.MonkeyPatch, stdout: object, status: str, ok: bool | None) -> None:
    # pip-audit is pinned in requirements.txt, so the venv has it; its answer is canned here.
    import subprocess

    text = stdout if isinstance(stdout, str) else json.dumps(stdout)
    monkeypatch.setattr(security.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 1 if status != "clean" else 0, stdout=text, stderr=""))
    report = security.audit_dependencies(timeout=5)
    assert (report["status"], report["ok"]) == (status, ok)
    if status == "vulnerable":
        assert report["findings"][0]["vulnerabilities"][0]["id"] == "PYSEC-1"
