"""The scan for secrets, private keys, public IPv4 literals and `:latest` tags."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from movierec.infra import repo_scan

# Assembled at run time so this file itself never matches the patterns it tests.
KEY_HEADER = "-----BEGIN " + "OPENSSH PRIVATE KEY-----"
LATEST = "lat" + "est"
PUBLIC = ".".join(["129", "114", "26", "10"])  # a Chameleon-style floating IP


@pytest.mark.parametrize(("line", "what"), [
    (KEY_HEADER, "private key"),
    ("aws_key = AKIA" + "ABCDEFGHIJKLMNOP", "AWS access key"),
    ("token: gh" + "p_" + "a" * 36, "GitHub token"),
    ("pass" + 'word: "Zq8vR2mK9pLx"', "password literal"),
    ("MINIO_SECRET" + "_KEY='9fK2mQ7xLp4R'", "password literal"),
    (f"image: python:{LATEST}", "latest tag"),
    (f"FROM ubuntu:{LATEST}", "latest tag"),
    (f"floating_ip = {PUBLIC}", "public IPv4"),
])
def test_finds(line: str, what: str) -> None:
    problems = repo_scan.scan_text(f"first line\n{line}\n")
    assert any(what in p and p.startswith("line 2") for p in problems), problems


@pytest.mark.parametrize("line", [
    "ip: 192.168.1.11",  # RFC 1918
    "example: 203.0.113.10",  # documentation range (TEST-NET-3)
    'remote_ip_prefix = "0.0.0.0/0"',
    "version 3.3.2 and python 3.11.7",
    "password: {{ lookup('password', '/dev/null') }}",
    'password = "${var.db_password}"',
    'TOKEN = "test-admin-token-0123456789"',  # a fixture that names itself
    "image: python:3.11.7-slim",
    "max_tokens: 'abcdefghij'",
])
def test_ignores(line: str) -> None:
    assert repo_scan.scan_text(line) == []


def test_repository_is_clean(repo_root: Path) -> None:
    [result] = repo_scan.scan_repo(repo_root)
    assert result.passed, result.detail


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo,
                   check=True, capture_output=True)


def test_scan_sees_committed_and_new_files_but_not_ignored(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / ".gitignore").write_text("ignored/\n")
    (tmp_path / "ignored").mkdir()
    (tmp_path / "ignored" / "key").write_text(KEY_HEADER + "\n")  # ignored: never committed
    (tmp_path / "clean.txt").write_text("nothing to see\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    [clean] = repo_scan.scan_repo(tmp_path)
    assert clean.passed, clean.detail

    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")  # untracked but would be added
    (tmp_path / "deploy.yaml").write_text(f"image: nginx:{LATEST}\nserver: {PUBLIC}\n")
    [dirty] = repo_scan.scan_repo(tmp_path)
    assert not dirty.passed
    assert "clouds.yaml must never be committed" in dirty.detail
    assert "deploy.yaml line 1: latest tag" in dirty.detail
    assert f"deploy.yaml line 2: public IPv4 {PUBLIC}" in dirty.detail
