"""One way to run an external tool: with a dry-run, clear errors and no secrets echoed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ToolMissingError(RuntimeError):
    """A command-line tool or credential the step needs is not available."""


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one offline validation (a lint, a schema check, a scan).

    Attributes:
        name: What was checked, e.g. ``"helm template app (canary)"``.
        passed: Whether it passed.
        detail: A short human-readable explanation (the first problems when it failed).
    """

    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class Command:
    """An external command, described before it runs (so a dry-run can print it).

    Attributes:
        argv: Program and arguments.
        cwd: Working directory, if not the current one.
        env: Extra environment variables; values of names listed in ``secret_env`` are never
            printed.
        secret_env: Names in ``env`` whose values are secrets.
        stdin: Text written to the command's standard input (None: inherited).
        stdin_name: What ``stdin`` is, for the printed line (the text itself is not shown).
    """

    argv: tuple[str, ...]
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_env: frozenset[str] = frozenset()
    stdin: str | None = None
    stdin_name: str = "text"

    def render(self) -> str:
        """The command as a shell line, with secret values masked."""
        shown = {k: ("***" if k in self.secret_env else v) for k, v in self.env.items()}
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items())
        line = shlex.join(self.argv)
        if self.stdin is not None:
            line += f" < {self.stdin_name}"
        where = f"(cd {shlex.quote(str(self.cwd))} && " if self.cwd else ""
        body = f"{prefix} {line}".strip()
        return f"{where}{body})" if where else body


def require_tool(name: str, how_to_get: str) -> str:
    """The path of tool ``name`` on PATH, or a ToolMissingError that says how to get it."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(f"{name} is not installed or not on PATH: {how_to_get}")
    return path


def run(command: Command, *, dry_run: bool, capture: bool = False,
        echo: bool = True) -> subprocess.CompletedProcess[str] | None:
    """Run ``command``, or only print it when ``dry_run`` (then return None).

    Raises:
        subprocess.CalledProcessError: When the command exits non-zero.
    """
    if echo or dry_run:
        print(("[dry-run] " if dry_run else "+ ") + command.render(), flush=True)
    if dry_run:
        return None
    return subprocess.run(list(command.argv), cwd=command.cwd, check=True, text=True,
                          env={**os.environ, **command.env}, capture_output=capture,
                          input=command.stdin)


def repo_root() -> Path:
    """The repository root (the folder holding ``tf/``, ``k8s/``, ...), from the package."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "lib").is_dir():
            return parent
    raise FileNotFoundError("movierec repository root not found above " + str(here))
