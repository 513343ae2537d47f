"""Fixtures of the offline infrastructure checks (tools come from `make infra-deps`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
COLLECTIONS = ROOT / ".cache" / "ansible"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    """checkov lives in its own venv (`make infra-deps`); missing it is a failure, not a skip."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} missing: run `make infra-deps`")
    return CHECKOV


@pytest.fixture(scope="session")
def ansible_env() -> dict[str, str]:
    """Environment for ansible-playbook/ansible-lint with the offline collections."""
    if not (COLLECTIONS / "ansible_collections").is_dir():
        pytest.fail(f"{COLLECTIONS} has no collections: run `make infra-deps`")
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
            "ANSIBLE_LOCAL_TEMP": str(ROOT / ".cache" / "ansible-tmp"),
            "ANSIBLE_HOME": str(ROOT / ".cache" / "ansible-home")}
