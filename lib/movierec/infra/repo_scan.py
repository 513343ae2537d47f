"""Scan of the files that would be committed: secrets, public addresses, ``:latest`` tags.

Part of the offline infrastructure checks (``movierec.infra.validate.run_all``); the
reliability suite also runs ``scan_text`` over executed notebooks' outputs.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path

from movierec.infra.commands import CheckResult, repo_root

PATTERNS: dict[str, re.Pattern[str]] = {
    "private key": re.compile("-----BEGIN (?:[A-Z]+ )?" + "PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "password literal": re.compile(
        r"""(?i)(?:password|passwd|secret_?key|api_?key|token)["']?\s*[:=]\s*["']"""
        r"""(?![{$<*])([^"'\s]{8,})["']"""),
    "latest tag": re.compile(r"""(?:image|FROM|:)\s*["']?[\w./-]+:""" + "latest" + r"\b"),
}
IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
# Real credentials are random; a value that names itself (``"test-admin-token-0123"``) is a
# test fixture or a placeholder, not a leak.
PLACEHOLDER_WORDS = ("test", "example", "dummy", "fake", "placeholder", "changeme", "redacted",
                     "secret", "token", "password", "xxxx")


def committed_files(root: Path) -> list[Path]:
    """Files git tracks or would add (tracked + untracked not ignored)."""
    done = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=root, capture_output=True, check=True)
    return [root / p for p in sorted(set(done.stdout.decode().split("\0"))) if p]


def scan_text(text: str) -> list[str]:
    """Problems in one file's text: ``"line N: what"``."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in PATTERNS.items():
            match = pattern.search(line)
            if match and not (what == "password literal"
                              and any(w in match.group(1).lower() for w in PLACEHOLDER_WORDS)):
                problems.append(f"line {number}: {what}")
        for candidate in IPV4.findall(line):
            try:
                address = ipaddress.ip_address(candidate)
            except ValueError:
                continue
            if address.is_global:  # documentation ranges and RFC 1918 are not global
                problems.append(f"line {number}: public IPv4 {candidate}")
    return problems


def scan_repo(root: Path | None = None) -> list[CheckResult]:
    """Secrets, private keys, public IPv4 literals and ``:latest`` tags in committable files."""
    base = root or repo_root()
    found = []
    for path in committed_files(base):
        if path.name == "clouds.yaml":
            found.append(f"{path.relative_to(base)}: clouds.yaml must never be committed")
            continue
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary
        found += [f"{path.relative_to(base)} {p}" for p in scan_text(data.decode(errors="replace"))]
    return [CheckResult("repository scan (secrets, public IPs, :latest)", not found,
                        "; ".join(found[:10]) + (f" (+{len(found) - 10} more)"
                                                if len(found) > 10 else "") or "clean")]
